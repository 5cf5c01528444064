"""Seconds per run of the depth study's points trained one at a time against ``--batch K`` at
once (``mup2.batched``, the same numbers to float64 rounding), for one config: the first K SAM
points of its grid, 1 epoch of 2048 training and 2000 test images, one torch thread, after one
warm-up run::

    python experiments/depth/batch_speed.py aware-d8 16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mup2.batched import train_batched
from mup2.sweep import load_sweep_config
from mup2.sweep.grid import expand, trial_config
from mup2.train import train

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="a config name here, e.g. aware-d8")
    ap.add_argument("k", type=int, help="points in the bundle")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_sweep_config(HERE / f"{args.config}.toml")
    points = [p for p in expand(cfg) if p.rho > 0][: args.k]
    configs = []
    for p in points:
        c = trial_config(cfg, p)
        data = c.data.model_copy(update={"train_size": 2048, "test_size": 2000})
        configs.append(c.model_copy(update={"epochs": 1, "data": data}))
    train(configs[-1])  # warm-up: data loading, allocations
    t = time.perf_counter()
    for c in configs[:2]:
        train(c)
    serial = (time.perf_counter() - t) / 2
    t = time.perf_counter()
    train_batched(configs)
    batched = (time.perf_counter() - t) / len(configs)
    print(
        f"{args.config}, K = {len(configs)}: one at a time {serial:.2f} s/run, batched "
        f"{batched:.2f} s/run, ratio {serial / batched:.2f}"
    )


if __name__ == "__main__":
    main()
