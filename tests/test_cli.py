"""The ``mup2`` command (``mup2.cli.app``) through typer's ``CliRunner``: help, ``roles``,
``coordcheck`` and how bad input ends (exit code 2, one ``error:`` message, no traceback)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from mup2.cli import app
from mup2.errors import UserError

COMMANDS = ["roles", "coordcheck", "train", "report", "sweep", "worker", "demo"]


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _table(text: str, header_start: str) -> list[dict[str, str]]:
    """Rows of a left-aligned text table, cut at the header's column starts."""
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(header_start))
    header = lines[i]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[i + 1 :]:
        if not line.strip():
            break
        if set(line.replace(" ", "")) == {"-"}:
            continue
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
        rows.append(dict(zip(names, cells)))
    return rows


def test_help_lists_the_commands() -> None:
    registered = [
        c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
    ]
    assert registered == COMMANDS
    res = _invoke("--help")
    assert res.exit_code == 0, res.output
    for name in COMMANDS:
        assert re.search(rf"^\W*{name}\s", res.output, re.MULTILINE), name
    assert "--debug" in res.output
    # no arguments: the help too
    bare = _invoke()
    assert all(name in bare.output for name in COMMANDS)


# the built-in MLP at depth 3: Linear(784, w), Linear(w, w), Linear(w, 10); base width 64
BASE_FAN_IN = {
    "features.0.weight": 784,
    "features.0.bias": 784,
    "features.2.weight": 64,
    "features.2.bias": 64,
    "head.weight": 64,
    "head.bias": 64,
}
ROLES = {
    "features.0.weight": ("input", 1, 2),
    "features.0.bias": ("input", 1, 2),
    "features.2.weight": ("hidden", 2, 2),
    "features.2.bias": ("input", 1, 2),
    "head.weight": ("output", 2, 1),
    "head.bias": ("scalar", 1, 1),
}
# μP init multiplier per role (docs/parametrization.md)
INIT = {"input": 1.0, "hidden": 2**-0.5, "output": 0.5, "scalar": 1.0}


def _x(cell: str) -> float:
    assert cell.startswith("x"), cell
    return float(cell[1:])


@pytest.mark.parametrize("scheme", ["mup-sgd", "mup-adam"])
def test_roles_reports_each_tensor(scheme: str) -> None:
    res = _invoke("roles", "--width", "128", "--base-width", "64", "--scheme", scheme)
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert first == f"scheme {scheme}, width multiplier 2, perturbation sam/mup2"
    rows = _table(res.output, "name ")
    assert [r["name"] for r in rows] == list(ROLES)
    for r in rows:
        role, m_in, m_out = ROLES[r["name"]]
        assert (r["role"], float(r["m_in"]), float(r["m_out"])) == (role, m_in, m_out)
        lr = m_out / m_in if scheme == "mup-sgd" else 1 / m_in
        assert _x(r["lr"]) == pytest.approx(lr, rel=1e-3), r
        assert _x(r["init"]) == pytest.approx(INIT[role], rel=1e-3), r
        # PyTorch's default std at the base shape, times the init multiplier
        std = INIT[role] / math.sqrt(3 * BASE_FAN_IN[r["name"]])
        m = re.fullmatch(r"U\(std ([0-9.e-]+)\)", r["init_rule"])
        assert m is not None, r
        assert float(m[1]) == pytest.approx(std, rel=5e-3), r
    weight = next(r for r in rows if r["name"] == "features.2.weight")
    assert (weight["shape"], weight["base"]) == ("128x128", "64x64")


def test_roles_with_a_rule_and_scaling_that_do_not_go_together() -> None:
    res = _invoke("roles", "--rule", "asam", "--scaling", "mup2-coupled")
    assert res.exit_code == 2
    assert isinstance(res.exception, SystemExit)
    assert res.stdout == ""
    assert res.stderr == (
        "error: --rule asam --scaling mup2-coupled: scaling 'mup2-coupled' is defined only for "
        "rules 'sam' and 'sam-on', not 'asam'\n"
    )
    assert "Traceback" not in res.output
    # --debug shows the error itself
    debug = _invoke("--debug", "roles", "--rule", "asam", "--scaling", "mup2-coupled")
    assert isinstance(debug.exception, UserError)
    assert str(debug.exception).startswith("--rule asam --scaling mup2-coupled: ")


def test_unknown_option_and_bad_value_exit_with_2() -> None:
    res = _invoke("roles", "--bogus")
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    assert res.stderr == "error: No such option: --bogus\n(see `mup2 roles --help`)\n"
    bad = _invoke("roles", "--rule", "lamb")
    assert bad.exit_code == 2
    assert "'lamb' is not one of sam, asam, asam-layerwise, sam-on" in bad.stderr
    assert "Traceback" not in bad.output


def _slope(widths: list[int], values: list[float]) -> float:
    """Least-squares slope of log2(value) on log2(width), by hand."""
    x = [math.log2(w) for w in widths]
    y = [math.log2(v) for v in values]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return sxy / sum((a - mx) ** 2 for a in x)


def test_coordcheck_depths(tmp_path: Path) -> None:
    """``--depths``: the ResMLP at a fixed width, width-only against depth-aware μP², one row per
    setting and folded block layer; JSON records per setting."""
    out = tmp_path / "depth.json"
    res = _invoke(
        "coordcheck",
        *("--model", "resmlp", "--depths", "2,4,8", "--width", "8", "--seeds", "1"),
        *("--steps", "1", "--in-features", "8", "--batch-size", "8", "--json", str(out)),
        *("--plot", str(tmp_path / "depth.png")),
    )
    assert res.exit_code == 0, res.output
    assert res.output.startswith("resmlp at width 8, depths [2, 4, 8] (base 2), rule sam")
    assert (tmp_path / "depth.png").stat().st_size > 10_000  # both settings, the blocks' means
    rows = _table(res.output.split("\n\n", 1)[1].split("\nwrote", 1)[0], "setting ")
    settings = {r["setting"] for r in rows}
    assert settings == {"width-only μP²", "depth-aware μP² (α=1)"}
    layers = [r["layer"] for r in rows if r["setting"] == "width-only μP²"]
    assert layers[:2] == ["embed", "blocks.#.ln"] and "blocks.last.fc2" in layers
    records = json.loads(out.read_text())
    assert {r["setting"] for r in records} == settings
    assert {r["widths"][-1] for r in records} == {8}  # the depths
    bad = _invoke("coordcheck", "--depths", "2,4,8")
    assert bad.exit_code == 2
    assert "--depths sweeps --model resmlp, vit, vit-mean; the width check runs mlp" in bad.output
    two = _invoke("coordcheck", "--model", "vit-mean", "--depths", "2,4")
    assert two.exit_code == 2
    assert "--depths needs at least 3 depths to fit a slope, got [2, 4]" in two.output
    vit = _invoke(
        "coordcheck", "--model", "vit-mean", "--depths", "2,4,8", "--width", "16", "--seeds", "1"
    )
    assert vit.exit_code == 0, vit.output
    assert vit.output.startswith("vit-mean at width 16, depths [2, 4, 8] (base 2), rule sam")
    assert "blocks.first.attn.q" in vit.output and "patch_embed" in vit.output


@pytest.mark.parametrize(
    ("rule", "options", "base"),
    [("msam", (), "SGD lr=0.1 (scheme mup-sgd)"),
     ("asam", ("--optimizer", "adamw"), "AdamW lr=0.001 (scheme mup-adam)")],
)  # fmt: skip
def test_coordcheck_depths_any_rule_and_base(
    rule: str, options: tuple[str, ...], base: str
) -> None:
    """``--depths`` takes the width check's ``--rule``, ``--optimizer`` and MSAM's default
    momentum; under depth-aware μP² the blocks' effective perturbation stays flat (relative
    slope within ±0.25)."""
    res = _invoke(
        "coordcheck",
        *("--model", "resmlp", "--depths", "2,4,8", "--width", "32", "--seeds", "2"),
        *("--steps", "2", "--in-features", "16", "--batch-size", "16", "--rule", rule, *options),
    )
    assert res.exit_code == 0, res.output
    assert f"rule {rule}, rho=0.1, {base}, seeds 0..1" in res.output.splitlines()[0]
    aware = {  # layer -> the last column, the effective perturbation's relative slope
        line.split()[-6]: float(line.split()[-1])
        for line in res.output.splitlines()
        if line.startswith("depth-aware μP² (α=1)")
    }
    for layer in ("blocks.#.ln", "blocks.#.fc1", "blocks.#.fc2", "head"):  # the blocks' means
        assert abs(aware[layer]) < 0.2, (layer, aware[layer])


def test_coordcheck_prints_slopes_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "cc.json"
    res = _invoke(
        "coordcheck",
        *("--widths", "8,16,32", "--seeds", "1", "--steps", "1", "--scaling", "mup2"),
        *("--in-features", "8", "--batch-size", "8", "--json", str(out)),
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == (
        "scheme mup-sgd, widths [8, 16, 32], seeds [0], step 1 of 1; "
        "slope of log2 RMS vs log2 width"
    )
    assert lines[-1] == f"wrote {out}"
    rows = _table("\n".join(lines[:-1]), "rule ")  # the table, without "wrote ..."
    records = json.loads(out.read_text())
    assert len(records) == len(rows) == 3 * 4  # 3 layers x 4 quantities
    layers = {r["layer"]: r["role"] for r in records}
    assert layers == {"features.0": "input", "features.2": "hidden", "head": "output"}
    for rec, row in zip(records, rows):
        assert (rec["rule"], rec["scaling"], rec["scheme"], rec["step"]) == (
            "sam",
            "mup2",
            "mup-sgd",
            0,
        )
        assert rec["widths"] == [8, 16, 32] and len(rec["values"]) == 3
        assert all(v > 0 for v in rec["values"])
        slope = _slope(rec["widths"], rec["values"])
        assert rec["slope"] == pytest.approx(slope, rel=1e-9, abs=1e-12)
        assert rec["effective"] is (slope > -0.25)
        assert (row["layer"], row["quantity"]) == (rec["layer"], rec["quantity"])
        assert row["slope"] == f"{slope:+.2f}"
        assert row["first"] == f"{rec['values'][0]:.3g}"
        assert row["last"] == f"{rec['values'][-1]:.3g}"
