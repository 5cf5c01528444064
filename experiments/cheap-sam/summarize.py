"""The cost/benefit table of issue 24 §2 from the committed stores and the wall-clock benchmark.

For each method (SGD, full SAM, every variant study of ``cheap.db``) and each width (64, 512):
the hyperparameters tuned at width 64 (η, ρ: the best mean test accuracy over 3 seeds), the test
accuracy there with its 95% interval, the fraction of full SAM's gain over SGD it keeps, the
wall-clock per epoch relative to SGD (``bench.json``, from ``benchmarks/bench_cheap_sam.py``)
and whether (η*, ρ*) transferred to width 512 (:func:`mup2.report.analyze`'s Figure 1 criterion
on the width-64 grid and the plus-shaped slice at 512). SGD and full SAM come from the Figure 1
store (``experiments/figure1/mlp.db``, μP², the same regime and seeds).

    .venv/bin/python experiments/cheap-sam/summarize.py   # writes docs/results/cheap-sam/
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mup2.report import analyze, load_sweep
from mup2.report.analysis import Analysis, Cell, Grid

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = ROOT / "docs" / "results" / "cheap-sam"
FIGURE1 = f"sqlite:///{ROOT / 'experiments' / 'figure1' / 'mlp.db'}"
STORE = f"sqlite:///{HERE / 'cheap.db'}"
BASE, WIDE = 64, 512


@dataclass(frozen=True)
class Row:
    method: str
    width: int
    lr: float
    rho: float
    cell: Cell
    transfer: str


def _rows(method: str, a: Analysis, parametrization: str, base_only: bool) -> list[Row]:
    """The method's cells at width 64's optimum, at both widths. ``base_only``: the ρ = 0 grid
    (SGD) of the Figure 1 store, else its ρ > 0 optimum."""
    g: Grid = a.grids[parametrization]
    pool = [
        c
        for c in g.cells.values()
        if c.width == BASE and not c.missing and (c.rho == 0) == base_only
    ]
    best = max(sorted(pool, key=lambda c: (c.lr, c.rho)), key=lambda c: c.mean)
    t = a.transfers[parametrization]
    verdict = "" if base_only else f"{t.verdict}: {t.reason}"
    out = [Row(method, BASE, best.lr, best.rho, best, verdict)]
    wide = g.cell(WIDE, best.lr, best.rho)
    if wide is not None and not wide.missing:
        out.append(Row(method, WIDE, best.lr, best.rho, wide, verdict))
    return out


def _log2(x: float) -> str:
    return "0" if x == 0 else f"2^{round(math.log2(x))}"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    figure1 = load_sweep(FIGURE1, "figure1-mlp")  # its widths 64 and 512 only, as the variants'
    fig1 = analyze(replace(figure1, runs=tuple(r for r in figure1.runs if r.width in (BASE, WIDE))))
    rows = _rows("sgd", fig1, "mup2", base_only=True) + _rows("sam", fig1, "mup2", False)
    import optuna

    names = sorted(s.study_name for s in optuna.get_all_study_summaries(STORE))
    for study in names:
        a = analyze(load_sweep(STORE, study))
        rows += _rows(study.removeprefix("cheap-"), a, "mup2", base_only=False)
    bench = (
        json.loads((OUT / "bench.json").read_text())["results"]
        if (OUT / "bench.json").exists()
        else {}
    )
    lines = [
        "| width | method | η | ρ | test accuracy (95% CI, seeds) | gain kept | × SGD wall-clock | "
        "(η*, ρ*) transfer 64 → 512 |",
        "|---:|---|---|---|---|---:|---:|---|",
    ]
    points = []
    for width in (BASE, WIDE):
        at = {r.method: r for r in rows if r.width == width}
        sgd, sam = at["sgd"].cell.mean, at["sam"].cell.mean
        for r in at.values():
            kept = (r.cell.mean - sgd) / (sam - sgd) if sam != sgd else math.nan
            cost = bench.get(str(width), {}).get(r.method, {}).get("ratio_to_sgd", math.nan)
            lines.append(
                f"| {width} | {r.method} | {_log2(r.lr)} | {_log2(r.rho)} | "
                f"{100 * r.cell.mean:.2f} ± {100 * r.cell.spread:.2f} ({r.cell.n}) | "
                f"{'' if r.method == 'sgd' else f'{100 * kept:.0f}%'} | "
                f"{'' if math.isnan(cost) else f'{cost:.2f}'} | {r.transfer} |"
            )
            points.append((r.method, width, cost, r.cell.mean, r.cell.spread))
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(p[0] for p in points))}
    for method, width, cost, mean, spread in points:
        if math.isnan(cost):
            continue
        ax.errorbar(
            cost,
            100 * mean,
            yerr=100 * spread,
            fmt="o" if width == BASE else "s",
            color=colors[method],
            capsize=3,
            label=method if width == BASE else None,
        )
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("wall-clock per epoch / SGD's")
    ax.set_ylabel("test accuracy (%), 95% CI over seeds")
    ax.set_title("Cheap SAM variants under μP², R1 (circles: width 64, squares: 512)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / "cost-benefit.png", dpi=120)


if __name__ == "__main__":
    main()
