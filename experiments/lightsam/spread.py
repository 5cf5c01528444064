"""LightSAM's claim, measured: how much of a wide (lr, rho) grid trains well, against SAM + SGD.

Runs (or resumes) the three sweeps of this folder (same MLP, data, epochs and seeds; 6 x 6 grids
of 3 decades each), then writes, for each method, the spread of final test accuracy over its grid
(fraction of cells within 1 and 5 points of the best, fraction unstable, median) as a markdown
table and one heatmap per method:

    .venv/bin/python experiments/lightsam/spread.py --out docs/results/lightsam

Stores go to runs/<sweep name>/ (resumable); the report of each sweep to <out>/<sweep name>/.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from mup2.report import analyze, load_sweep, make_report
from mup2.sweep import load_sweep_config, run_sweep

HERE = Path(__file__).resolve().parent
SWEEPS = {
    "SAM + SGD": "sam_sgd.toml",
    "LightSAM AdaGrad-Norm": "lightsam_adagrad_norm.toml",
    "LightSAM Adam": "lightsam_adam.toml",
}


def spread(storage: str, name: str) -> dict[str, float]:
    """Statistics of the cell means (mean over seeds) of a single-width sweep."""
    a = analyze(load_sweep(storage, name), unstable_below=0.30)
    (grid,) = a.grids.values()
    means = [c.mean for c in grid.cells.values() if not c.missing]
    best = max(means)
    return {
        "cells": len(means),
        "best": 100 * best,
        "median": 100 * statistics.median(means),
        "within_1": sum(m >= best - 0.01 for m in means) / len(means),
        "within_5": sum(m >= best - 0.05 for m in means) / len(means),
        "unstable": sum(c.unstable for c in grid.cells.values()) / len(means),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/lightsam"))
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    rows = []
    for label, file in SWEEPS.items():
        cfg = load_sweep_config(HERE / file)
        storage, _ = run_sweep(cfg, args.runs / cfg.name, workers=args.workers)
        files = make_report(storage, cfg.name, args.out / cfg.name, cfg.unstable_below)
        g = cfg.grid
        rows.append((label, cfg, spread(storage, cfg.name), files.figure1))
        print(f"{label}: lr {g.lr[0]:g}..{g.lr[-1]:g}, rho {g.rho[0]:g}..{g.rho[-1]:g}")
    lines = [
        "| method | lr grid | rho grid | best | median | within 1 pt of best | within 5 pts "
        "| unstable (< 30%) | heatmap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, cfg, s, fig in rows:
        g = cfg.grid
        lines.append(
            f"| {label} | {g.lr[0]:g} … {g.lr[-1]:g} | {g.rho[0]:g} … {g.rho[-1]:g} "
            f"| {s['best']:.2f}% | {s['median']:.2f}% | {s['within_1']:.0%} | "
            f"{s['within_5']:.0%} | {s['unstable']:.0%} | [{fig.parent.name}]"
            f"({fig.relative_to(args.out)}) |"
        )
    table = "\n".join(lines)
    (args.out / "spread.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
