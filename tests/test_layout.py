"""The house's rules that no linter checks: layering and private names stay private."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mup2"


def _imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from mup2... import name`` in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mup2"):
            out += [(node.module or "", a.name) for a in node.names]
    return out


def test_no_private_name_is_imported_across_modules() -> None:
    bad = [
        f"{p.relative_to(SRC)}: from {m} import {n}"
        for p in sorted(SRC.rglob("*.py"))
        for m, n in _imports(p)
        if n.startswith("_")
    ]
    assert not bad, "\n".join(bad)


def test_optim_never_imports_the_parametrization() -> None:
    """The optimizers read param groups only (their width metadata), so ``mup2.optim`` sits
    below ``mup2.parametrization``, which imports its rule table for the role report."""
    bad = [
        f"{p.relative_to(SRC)}: from {m} import {n}"
        for p in sorted((SRC / "optim").rglob("*.py"))
        for m, n in _imports(p)
        if m.startswith("mup2.parametrization") or m in ("mup2", "mup2.config", "mup2.train")
    ]
    assert not bad, "\n".join(bad)
