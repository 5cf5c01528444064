"""Where does SAM beat its base optimizer? Candidate regimes for the Figure 1 study, at base width.

Each regime (label noise, training-set size, epochs, batch size) is one sweep at the base width
(where μP² is plain SAM): SGD (ρ = 0) and SAM over an (η, ρ) grid, several seeds. For each
regime the table gives SGD's and SAM's best cell (mean over seeds ± 95% CI) and SAM − SGD with
its standard error; the study needs a gap > 2 SE and ≥ 2 points.

    .venv/bin/python experiments/figure1/calibrate.py            # all regimes, resumable
    .venv/bin/python experiments/figure1/calibrate.py --only R1  # one of them
    .venv/bin/python experiments/figure1/calibrate.py --only     # only the table, from the stores

Stores: runs/calibration/<regime>/ (resumable); the table and every trial as CSV go to
experiments/figure1/calibration/.
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Any

from mup2.report import Cell, analyze, load_sweep, write_trials_csv
from mup2.sweep import parse_sweep_config, run_sweep

HERE = Path(__file__).resolve().parent

BASE_WIDTH = 64
SEEDS = [0, 1, 2]
_WIDE = ([2.0**-7, 2.0**-5, 2.0**-3, 2.0**-1], [0.0, 2.0**-5, 2.0**-3, 2.0**-1, 2.0**1])
_LOW = ([2.0**-9, 2.0**-7, 2.0**-5, 2.0**-3], [0.0, 2.0**-5, 2.0**-3, 2.0**-1])

#: name -> (label noise, training examples, epochs, batch size, (η grid, ρ grid)); R1 and R3
#: showed that η above 2^-3 and ρ above 2^-1 never win and that SGD's best η is the lowest, so
#: R4 shifts the grid down
REGIMES: dict[str, tuple[float, int, int, int, tuple[list[float], list[float]]]] = {
    "R1": (0.4, 8192, 20, 128, _WIDE),
    "R3": (0.4, 4096, 40, 128, _WIDE),
    "R4": (0.4, 2048, 150, 128, _LOW),
}


TRAIN: dict[str, Any] = {
    "scheme": "mup-sgd",
    "model": {"name": "mlp", "width": BASE_WIDTH, "base_width": BASE_WIDTH, "depth": 3},
    "data": {"name": "fashion-mnist", "test_size": 10000},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "schedule": {"name": "cosine"},
}


def sweep_dict(name: str) -> dict[str, Any]:
    noise, n, epochs, batch, (lr, rho) = REGIMES[name]
    train = copy.deepcopy(TRAIN)
    train["data"].update(train_size=n, label_noise=noise, label_noise_seed=0)
    train.update(epochs=epochs, batch_size=batch)
    return {
        "name": f"calibrate-{name}",
        "workers": 2,
        "train": train,
        "grid": {
            "widths": [BASE_WIDTH],
            "lr": lr,
            "rho": rho,
            "seeds": SEEDS,
            "parametrizations": ["mup2"],
        },
    }


def best(cells: list[Cell]) -> Cell:
    return max((c for c in cells if not c.missing), key=lambda c: c.mean)


def _se(c: Cell) -> float:
    return c.std / math.sqrt(c.n) if c.n > 1 else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=list(REGIMES), choices=list(REGIMES))
    ap.add_argument("--runs", type=Path, default=Path("runs/calibration"))
    ap.add_argument("--out", type=Path, default=HERE / "calibration")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        "| regime | label noise | train size | epochs | batch | SGD best (η) | SAM best (η, ρ) "
        "| SAM − SGD ± SE | > 2 SE and ≥ 2 pts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in REGIMES:
        cfg = parse_sweep_config(sweep_dict(name))
        storage = f"sqlite:///{args.runs / name / 'sweep.db'}"
        if name in args.only:
            (args.runs / name).mkdir(parents=True, exist_ok=True)
            cfg = cfg.model_copy(update={"storage": storage})
            run_sweep(cfg, args.runs / name, workers=args.workers)
        if not (args.runs / name / "sweep.db").exists():
            continue
        sweep = load_sweep(storage, cfg.name)
        write_trials_csv(sweep, args.out / f"{name}-trials.csv")
        (grid,) = analyze(sweep).grids.values()
        cells = list(grid.cells.values())
        sgd = best([c for c in cells if c.rho == 0.0])
        sam = best([c for c in cells if c.rho > 0.0])
        gap, se = sam.mean - sgd.mean, math.hypot(_se(sam), _se(sgd))
        ok = gap > 2 * se and gap >= 0.02
        noise, n, epochs, batch, _ = REGIMES[name]
        lines.append(
            f"| {name} | {noise:g} | {n} | {epochs} | {batch} "
            f"| {100 * sgd.mean:.2f} ± {100 * sgd.spread:.2f} (2^{math.log2(sgd.lr):g}) "
            f"| {100 * sam.mean:.2f} ± {100 * sam.spread:.2f} "
            f"(2^{math.log2(sam.lr):g}, 2^{math.log2(sam.rho):g}) "
            f"| {100 * gap:+.2f} ± {100 * se:.2f} | {'yes' if ok else 'no'} |"
        )
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
