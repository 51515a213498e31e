"""``python -m taskhub`` is ``taskhub``."""

import sys

from taskhub.cli.main import main

sys.exit(main())
