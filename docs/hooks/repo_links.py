"""MkDocs hook: links from a page to repository files outside ``docs/`` (``../README.md``,
``../src/mup2/...``) or to a folder (``results/depth/``, which the site has no page for) point
into the repository (``repo_url`` + ``/blob/main/`` + the path) when ``repo_url`` is set, else
become their link text. They stay as they are in the Markdown files, where GitHub and editors
resolve them, and no longer fail ``mkdocs build --strict``; a link to a missing file still does."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    here = posixpath.dirname(page.file.src_uri)
    repo = (config.get("repo_url") or "").rstrip("/")
    docs = Path(config.get("docs_dir") or "docs")

    def rewrite(m: re.Match[str]) -> str:
        target = m["target"]
        if ":" in target:  # a URL (https:, mailto:) or a store (sqlite:)
            return m[0]
        path = posixpath.normpath(posixpath.join("docs", here, target))
        inside = path.startswith("docs/")
        if inside and not (docs / path.removeprefix("docs/")).is_dir():
            return m[0]
        if repo:
            return f"[{m['text']}]({repo}/blob/main/{path}{m['anchor'] or ''})"
        return m["text"]

    return _LINK.sub(rewrite, markdown)
