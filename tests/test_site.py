"""The docs site's hook (docs/hooks/repo_links.py): links from a page to repository files outside
docs/ become repository links (with ``repo_url``) or their text, so that ``mkdocs build --strict``
(``make docs``, run by ``make test``) passes while the Markdown keeps links that work on GitHub."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / f"docs/hooks/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hook() -> Any:
    return _load("repo_links").on_page_markdown


def _page(src_uri: str) -> Any:
    return SimpleNamespace(file=SimpleNamespace(src_uri=src_uri))


def test_links_outside_docs_are_rewritten() -> None:
    hook = _hook()
    md = (
        "See [the study](../experiments/figure1/README.md#run), [sweeps](sweeps.md#workers), "
        "[Figure 1](results/figure1/figure1.png), ![fig](results/demo/figure1.png), "
        "[web](https://example.org/a.md) and [`cli.py`](../../src/mup2/cli.py)."
    )
    docs = {"docs_dir": str(ROOT / "docs")}
    plain = hook(md, _page("results.md"), docs, None)
    assert plain == (
        "See the study, [sweeps](sweeps.md#workers), [Figure 1](results/figure1/figure1.png), "
        "![fig](results/demo/figure1.png), [web](https://example.org/a.md) and `cli.py`."
    )
    assert hook("[cli](../../src/mup2/cli.py)", _page("api/report.md"), docs, None) == "cli"
    assert hook("[api](../report.md)", _page("api/report.md"), docs, None) == "[api](../report.md)"
    # a folder of docs/ (no page on the site) too; a missing file is left for --strict to catch
    assert hook("[the study](results/figure1/)", _page("math.md"), docs, None) == "the study"
    assert hook("[typo](reslts.md)", _page("math.md"), docs, None) == "[typo](reslts.md)"
    repo = "https://git.example/u/mup2"
    linked = hook(md, _page("results.md"), docs | {"repo_url": repo + "/"}, None)
    assert f"[the study]({repo}/blob/main/experiments/figure1/README.md#run)" in linked
    assert "[sweeps](sweeps.md#workers)" in linked


def test_sphinx_roles_render_as_code() -> None:
    hook = _load("sphinx_roles").on_page_content
    html = (
        "<p>See :class:<code>~mup2.report.Metric</code>, :func:<code>analyze</code> and "
        ":py:attr:<code>Run.done</code>; <code>a:b</code> stays.</p>"
    )
    assert hook(html, None, None, None) == (
        "<p>See <code>Metric</code>, <code>analyze</code> and <code>Run.done</code>; "
        "<code>a:b</code> stays.</p>"
    )


def test_every_api_page_names_a_module_of_mup2() -> None:
    pages = sorted((ROOT / "docs/api").glob("*.md"))
    targets = [
        line.removeprefix("::: ").strip()
        for p in pages
        for line in p.read_text().splitlines()
        if line.startswith("::: ")
    ]
    assert len(pages) >= 8 and all(t.startswith("mup2") for t in targets)
    for module in ("mup2", "mup2.optim", "mup2.parametrization", "mup2.sweep", "mup2.report"):
        assert module in targets
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(f"api/{p.name}" in nav for p in pages)
