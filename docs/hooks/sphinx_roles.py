"""MkDocs hook: the docstrings' Sphinx roles (``:class:`~mup2.SAM```, ``:func:`analyze```) render
as their code alone, as Sphinx shows them (``~a.b.C`` as ``C``), instead of ``:class:SAM``."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const|term|ref):<code>(?P<tilde>~)?"
    r"(?P<name>[^<]*)</code>"
)


def _code(m: re.Match[str]) -> str:
    name = m["name"]
    if m["tilde"]:
        name = name.rsplit(".", 1)[-1]
    return f"<code>{name}</code>"


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return _ROLE.sub(_code, html)
