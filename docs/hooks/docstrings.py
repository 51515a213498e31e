"""Sphinx roles in docstrings, shown as plain code: a mkdocs hook.

taskhub's docstrings name objects as Sphinx does (``:class:`Task```), which Markdown
renders as the role's text followed by code (":class:<code>Task</code>"). This hook
drops the role, leaving the code.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:class|meth|attr|func|mod|exc|data|obj):(?=<code>)")


def strip_roles(html: str) -> str:
    return ROLE.sub("", html)


def on_page_content(html: str, **_: Any) -> str:
    """mkdocs hook: the page's HTML without Sphinx roles before code."""
    return strip_roles(html)
