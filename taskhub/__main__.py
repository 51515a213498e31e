"""``python -m taskhub`` is ``taskhub``."""

import sys

from taskhub.cli import main

sys.exit(main())
