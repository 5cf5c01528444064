"""The one formatter of mup2's tables, as aligned plain text or as markdown.

Used by :meth:`mup2.parametrization.Parametrization.report`, the coordinate check's
:func:`~mup2.coordcheck.format_slopes` and :func:`~mup2.coordcheck.format_table1`, and the
sweep report's ``summary.md`` (:func:`mup2.report.write_summary`).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def format_table(
    rows: Sequence[Sequence[str]],
    header: Sequence[str],
    *,
    markdown: bool = False,
    underline: bool = False,
) -> str:
    """``header`` and ``rows`` as a table, one line each, without a trailing newline.

    Text: every column left-justified to its widest cell, columns joined by two spaces, trailing
    white space stripped from every line; ``underline`` adds a line of dashes (one run per
    column) under the header. Markdown: ``| a | b |`` lines, cells as given, with a ``|---|``
    separator row under the header (``underline`` is ignored).

    Raises :class:`ValueError` for a row whose length is not the header's.
    """
    n = len(header)
    for row in rows:
        if len(row) != n:
            raise ValueError(f"table row {list(row)!r} has {len(row)} cells, the header {n}")
    if markdown:
        lines = [_markdown_row(header), "|" + "---|" * n, *(_markdown_row(r) for r in rows)]
        return "\n".join(lines)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = [_text_row(header, widths)]
    if underline:
        lines.append("  ".join("-" * w for w in widths))
    lines += [_text_row(r, widths) for r in rows]
    return "\n".join(lines)


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _text_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
