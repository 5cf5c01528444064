"""Wall-clock of the cheap SAM variants against SGD and full SAM in regime R1, side by side.

For each width, every method trains the R1 MLP from scratch with ``mup2.train`` (the same code
path as the sweeps), in rounds: each round runs every method once, in a rotated order, so that
machine noise falls on all methods alike. A method's cost is its seconds per epoch (training and
the test evaluation, as :class:`mup2.train.EpochMetrics` measures it); its ratio to SGD is taken
within each round and the median over rounds is reported, with the rounds' range.

The methods are SGD (ρ = 0), full SAM, and the variant of each study config in
``experiments/cheap-sam/*.toml`` (its ``[train.sam]`` keys), each at the hyperparameters given
by ``--lr`` and ``--rho`` unless the study's grid says otherwise (the cost of a step does not
depend on η or on ρ > 0). Late-phase SAM's cost depends on where its SAM phase falls, so every
run trains the whole (shortened, ``--epochs``) schedule.

    .venv/bin/python benchmarks/bench_cheap_sam.py [--widths 64 512] [--rounds 3] [--epochs 5] \
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mup2.config import TrainConfig, parse_config
from mup2.sweep import GridPoint, load_sweep_config, trial_config
from mup2.train import load_data, train

STUDIES = Path(__file__).resolve().parent.parent / "experiments" / "cheap-sam"


def method_configs(width: int, epochs: int, lr: float, rho: float) -> dict[str, TrainConfig]:
    """SGD, full SAM and every study's variant at ``width``, as training configs."""
    out: dict[str, TrainConfig] = {}
    for path in sorted(STUDIES.glob("*.toml")):
        cfg = load_sweep_config(path)
        rhos = cfg.grid.rho
        point_rho = rho if rho in rhos else rhos[len(rhos) // 2]
        variant = trial_config(cfg, GridPoint("mup2", width, lr, point_rho, 0)).to_dict()
        variant["epochs"] = epochs
        if not out:
            sgd = json.loads(json.dumps(variant))
            sgd["sam"] = {"rho": 0.0}
            out["sgd"] = parse_config(sgd)
            sam = json.loads(json.dumps(variant))
            sam["sam"] = {"rho": rho, "scaling": "mup2"}
            out["sam"] = parse_config(sam)
        out[path.stem] = parse_config(variant)
    return out


def bench(width: int, rounds: int, epochs: int, lr: float, rho: float) -> dict[str, Any]:
    configs = method_configs(width, epochs, lr, rho)
    data = load_data(next(iter(configs.values())).data)
    names = list(configs)
    per_epoch: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        got = {}
        for name in order:
            result = train(configs[name], data=data)
            got[name] = result.seconds / len(result.metrics)
            print(f"width {width} round {r} {name:10s} {got[name]:.3f} s/epoch", file=sys.stderr)
        for name in names:
            per_epoch[name].append(got[name])
            ratios[name].append(got[name] / got["sgd"])
    return {
        name: {
            "seconds_per_epoch": statistics.median(per_epoch[name]),
            "ratio_to_sgd": statistics.median(ratios[name]),
            "ratio_min": min(ratios[name]),
            "ratio_max": max(ratios[name]),
        }
        for name in names
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=2**-5)
    ap.add_argument("--rho", type=float, default=2**-4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("MUP2_BENCH_THREADS", "1")))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = {w: bench(w, args.rounds, args.epochs, args.lr, args.rho) for w in args.widths}
    print(
        f"# cheap SAM wall-clock, R1 MLP, {args.epochs} epochs x {args.rounds} rounds, "
        f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {started}\n"
    )
    print("| width | method | s/epoch | × SGD (median) | × SGD (range) |")
    print("|---:|---|---:|---:|---|")
    for w, rows in results.items():
        for name, row in rows.items():
            print(
                f"| {w} | {name} | {row['seconds_per_epoch']:.3f} | {row['ratio_to_sgd']:.3f} | "
                f"{row['ratio_min']:.3f}–{row['ratio_max']:.3f} |"
            )
    if args.json:
        meta = {"epochs": args.epochs, "rounds": args.rounds, "started": started}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
