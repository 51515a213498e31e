"""The built site loads nothing from another host: a mkdocs hook that checks it.

After every build (``on_post_build``) it reads each HTML and CSS file under
``site_dir`` and fails the build if any of them loads an asset from a URL with a
host: a ``<script src>``, a stylesheet or icon ``<link href>``, an image, a frame,
a CSS ``@import`` or ``url()`` (web fonts included). Links that a reader follows
(``<a href="https://...">``) are fine. ``tests/test_docs.py`` tests the scanner.

Importing this module needs nothing but the standard library.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

# A URL that names a host: http://, https:// or protocol-relative //.
REMOTE = re.compile(r"^\s*(?:https?:)?//", re.IGNORECASE)
# In CSS: @import "…", @import url(…) and url(…), fonts included.
CSS_URLS = re.compile(
    r"""@import\s+(?:url\(\s*)?["']?([^"')\s;]+)|url\(\s*["']?([^"')\s]+)""", re.IGNORECASE
)
# The attributes through which an element loads something, by tag.
LOADING = {
    "script": ("src",),
    "link": ("href",),
    "img": ("src", "srcset"),
    "iframe": ("src",),
    "frame": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "source": ("src", "srcset"),
    "audio": ("src",),
    "video": ("src", "poster"),
    "track": ("src",),
    "input": ("src",),
}


def remote(url: str) -> bool:
    return bool(REMOTE.match(url))


def css_assets(css: str) -> list[str]:
    """The URLs a stylesheet loads from another host."""
    found = (a or b for a, b in CSS_URLS.findall(css))
    return [url for url in found if remote(url)]


class _Scanner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in LOADING.get(tag, ()):
                urls = [part.split()[0] for part in value.split(",") if part.strip()]
                if name != "srcset":
                    urls = [value]
                self.found += [f"<{tag} {name}={url}>" for url in urls if remote(url)]
            elif name == "style":
                self.found += [f"<{tag} style> {url}" for url in css_assets(value)]
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.found += [f"<style> {url}" for url in css_assets(data)]


def html_assets(html: str) -> list[str]:
    """What a page loads from another host, each as the tag and URL that load it."""
    scanner = _Scanner()
    scanner.feed(html)
    scanner.close()
    return scanner.found


def site_assets(site_dir: Path) -> dict[str, list[str]]:
    """Every HTML and CSS file under ``site_dir`` that loads something from another host."""
    problems: dict[str, list[str]] = {}
    for path in sorted(site_dir.rglob("*")):
        if path.suffix not in (".html", ".css"):
            continue
        content = path.read_text(encoding="utf-8", errors="replace")
        found = html_assets(content) if path.suffix == ".html" else css_assets(content)
        if found:
            problems[str(path.relative_to(site_dir))] = found
    return problems


def on_post_build(config: Any, **_: Any) -> None:
    """mkdocs hook: fail the build when the site would load anything from the network."""
    problems = site_assets(Path(config["site_dir"]))
    if problems:
        from mkdocs.exceptions import PluginError  # noqa: PLC0415  # mkdocs only at build time

        lines = [f"  {page}: {', '.join(urls[:5])}" for page, urls in problems.items()]
        raise PluginError("the site loads assets from other hosts:\n" + "\n".join(lines))
