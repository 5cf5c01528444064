"""The docs agree with the code: every repository path that README.md and docs/**/*.md mention
exists, and every ``mup2.*`` name they mention resolves.

What counts as a reference in a doc:

- a link target, ``[text](target)`` or ``![alt](target)``: resolved from the doc's folder, as a
  Markdown viewer does (the link's text only labels it and is not read as a path);
- anywhere else (code spans, code blocks, prose): a relative path with a ``/`` whose first part
  is a top-level folder of the repository (:data:`REPO_FOLDERS`) or whose name ends in a file
  suffix (:data:`FILE_SUFFIXES`), resolved from the repository root, where the documented
  commands run (``./`` and ``../`` paths from the doc's folder); one written with a trailing
  ``/`` must be a folder;
- a dotted name ``mup2.a.b`` anywhere, and each name of ``from mup2.x import a, b`` (``mup2.x.a``):
  the longest importable module prefix is imported and the rest looked up with ``getattr``.

Not checked: URLs (blanked out first, so ``sqlite:///runs/x.db`` is a store, not a path), paths
holding ``<``, ``>``, ``*`` or braces (placeholders and globs, e.g. ``reports/<study>``), and the
path prefixes of :data:`NOT_IN_REPO`, each with its reason.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

#: Top-level folders of the repository: a relative path starting with one of them is a reference.
REPO_FOLDERS = ("src", "tests", "docs", "examples", "experiments", "benchmarks", "scripts", ".ci")
#: A relative path with a ``/`` whose name ends in one of these is a reference to a file.
FILE_SUFFIXES = (
    ".py",
    ".toml",
    ".md",
    ".yaml",
    ".yml",
    ".json",
    ".jsonl",
    ".csv",
    ".db",
    ".png",
    ".txt",
    ".sh",
    ".pt",
    ".gz",
)

#: Path prefixes that are deliberately not in the repository, with the reason for each.
NOT_IN_REPO = {
    "runs/": "output: `mup2 train`, `mup2 sweep` and `make demo` write their run directories "
    "under runs/ (git-ignored), e.g. runs/demo/report/",
    "DIR/": "placeholder: docs/errors.md writes DIR for the temporary directory that "
    "tests/test_errors.py runs each bad input in",
    "../../examples/": "a user sweep's objective as its store records it, relative to the "
    "sweep config's folder: docs/results/hf-gpt/summary.md names "
    "experiments/hf-gpt/study.toml's objective, examples/hf_gpt_sweep.py",
}

_URL = re.compile(r"[A-Za-z][\w+.-]*://\S*")
_SCHEME = re.compile(r"[A-Za-z][\w+.-]*:")  # a link target such as mailto: or https:
_LINK = re.compile(
    r"!?\[(?P<text>(?:[^\[\]]|\[[^\]]*\])*)\]\((?P<target>[^()\s]*)(?:\s+\"[^\"]*\")?\)"
)
_REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(?P<target>\S+)", re.MULTILINE)
_PATH = re.compile(r"(?<![\w/.~$@:-])(?P<path>(?:\.{1,2}/)*[\w.<>*{}-]+(?:/[\w.<>*{}-]+)*/?)")
_PLACEHOLDER = re.compile(r"[<>*{}]")
_NAME = re.compile(r"(?<![\w./-])mup2(?:\.[A-Za-z_]\w*)+")
_FROM_IMPORT = re.compile(
    r"\bfrom\s+(?P<module>mup2(?:\.\w+)*)\s+import\s+(?P<names>\([^)]*\)|[^\n]*)"
)


@dataclass(frozen=True)
class Ref:
    """A path as a doc writes it, and the file or folder it points at."""

    written: str
    target: Path

    @property
    def exists(self) -> bool:
        return self.target.is_dir() if self.written.endswith("/") else self.target.exists()


def _blank(m: re.Match[str]) -> str:
    return " " * len(m.group(0))


def _not_checked(path: str) -> bool:
    return bool(_PLACEHOLDER.search(path)) or path.startswith(tuple(NOT_IN_REPO))


def _is_reference(path: str) -> bool:
    parts = [p for p in path.split("/") if p not in ("", ".", "..")]
    if "/" not in path or not parts:
        return False
    return parts[0] in REPO_FOLDERS or parts[-1].endswith(FILE_SUFFIXES)


def path_refs(doc: Path, text: str) -> list[Ref]:
    """The checked repository paths that ``text``, the contents of ``doc``, mentions."""
    text = _URL.sub(_blank, text)
    refs: list[Ref] = []
    targets = [m.group("target") for m in _LINK.finditer(text)]
    targets += [m.group("target") for m in _REF_LINK.finditer(text)]
    for target in targets:
        target = target.split("#", 1)[0]
        if target and not _SCHEME.match(target) and not _not_checked(target):
            base = ROOT if target.startswith("/") else doc.parent
            refs.append(Ref(target, base / target.lstrip("/")))
    rest = _LINK.sub(_blank, _REF_LINK.sub(_blank, text))
    for m in _PATH.finditer(rest):
        path = m.group("path").rstrip(".,:;")
        if _is_reference(path) and not _not_checked(path):
            base = doc.parent if path.startswith(("./", "../")) else ROOT
            refs.append(Ref(path, base / path))
    return refs


def dotted_names(text: str) -> list[str]:
    """The ``mup2.*`` dotted names that ``text`` mentions, in order of first mention."""
    text = _URL.sub(_blank, text)
    names = [m.group(0) for m in _NAME.finditer(text)]
    for m in _FROM_IMPORT.finditer(text):
        for line in m.group("names").strip("()").splitlines():
            for item in line.split("#", 1)[0].split(","):
                if item.strip() and item.strip() != "*":
                    names.append(f"{m.group('module')}.{item.split()[0]}")
    return list(dict.fromkeys(names))


def _defines(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    return []


def static_lookup(module: str, attrs: list[str]) -> str | None:
    """Look ``attrs`` up in the source of ``module`` without importing it (for a module whose
    optional dependency is not installed): top-level names, then a class's own names.
    ``None`` when found, else why not."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return f"{module} has no source to read"
    body = ast.parse(Path(spec.origin).read_text(encoding="utf-8")).body
    for depth, attr in enumerate(attrs):
        found = next((n for n in body if attr in _defines(n)), None)
        if found is None:
            return f"{module} has no attribute {'.'.join(attrs[: depth + 1])!r}"
        if not isinstance(found, ast.ClassDef):
            return None  # deeper than the source tells without running it
        body = found.body
    return None


def resolve(name: str) -> str | None:
    """``None`` when ``name`` resolves, else why it does not."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if module == missing or module.startswith(missing + "."):
                continue  # no such module: try a shorter prefix
            if not missing.startswith("mup2") and importlib.util.find_spec(module) is not None:
                return static_lookup(module, parts[i:])  # an optional extra is not installed
            return f"importing {module} failed: {exc}"
        except ImportError as exc:
            return f"importing {module} failed: {exc}"
        for depth, attr in enumerate(parts[i:], start=i):
            if not hasattr(obj, attr):
                return f"{'.'.join(parts[:depth])} has no attribute {attr!r}"
            obj = getattr(obj, attr)
        return None
    return "no importable module prefix"


def _id(doc: Path) -> str:
    return doc.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("doc", DOCS, ids=_id)
def test_paths_exist(doc: Path) -> None:
    refs = path_refs(doc, doc.read_text(encoding="utf-8"))
    missing = sorted({r.written for r in refs if not r.exists})
    listed = "\n".join(f"  {_id(doc)}: {p}" for p in missing)
    assert not missing, f"{len(missing)} path(s) in {_id(doc)} do not exist:\n{listed}"


@pytest.mark.parametrize("doc", DOCS, ids=_id)
def test_names_resolve(doc: Path) -> None:
    names = dotted_names(doc.read_text(encoding="utf-8"))
    bad = {n: why for n in names if (why := resolve(n)) is not None}
    listed = "\n".join(f"  {_id(doc)}: {n} ({why})" for n, why in bad.items())
    assert not bad, f"{len(bad)} mup2 name(s) in {_id(doc)} do not resolve:\n{listed}"


def test_every_not_in_repo_entry_is_used() -> None:
    """An entry no doc needs any more is stale: drop it."""
    texts = [_URL.sub(_blank, d.read_text(encoding="utf-8")) for d in DOCS]
    unused = [
        p
        for p in NOT_IN_REPO
        if not any(re.search(rf"(?<![\w/.]){re.escape(p)}", t) for t in texts)
    ]
    assert not unused, f"NOT_IN_REPO entries that no doc uses: {unused}"


def test_the_checks_catch_bad_references() -> None:
    """Paths and names are seen in links, code spans, code blocks and imports; outputs,
    placeholders, URLs and ratios are not taken for paths."""
    doc = ROOT / "docs" / "scratch.md"
    text = (
        "Run `mup2 sweep examples/no_such_sweep.toml` ([guide](no_such_guide.md)), see\n"
        "`benchmarks/` and `docs/math.md/`; `mup2.optim.rules.get_rule`, `mup2.SAM.step`,\n"
        "`mup2.sam.SAM` and `mup2.SAM.no_such`.\n"
        "```python\nfrom mup2.optim.rules import get_rule, no_such_name  # comment\n"
        'cfg = load_config("experiments/figure1/no_such.toml")\n```\n'
        "Not paths: sqlite:///runs/NAME/x.db, `runs/demo/report/`, `reports/<study>`, m_out/m_in.\n"
    )
    assert {r.written for r in path_refs(doc, text) if not r.exists} == {
        "examples/no_such_sweep.toml",
        "no_such_guide.md",
        "docs/math.md/",
        "experiments/figure1/no_such.toml",
    }
    assert {n for n in dotted_names(text) if resolve(n) is not None} == {
        "mup2.sam.SAM",
        "mup2.SAM.no_such",
        "mup2.optim.rules.no_such_name",
    }
    assert static_lookup("mup2.integrations.hf", ["SAMTrainer", "training_step"]) is None
    assert static_lookup("mup2.integrations.hf", ["NoSuchTrainer"]) is not None


def test_the_docs_site_builds_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict`` (``make docs``) passes: no broken link between the pages, no API
    reference (``::: mup2.x``) that does not resolve. Here too so that a docs change is checked
    by this file's tests; docs/hooks/ turns links to files outside docs/ into text."""
    pytest.importorskip("mkdocs")
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    problems = [line for line in res.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert res.returncode == 0, "\n".join(problems) or res.stderr[-2000:]
    assert (tmp_path / "api" / "report" / "index.html").is_file()
