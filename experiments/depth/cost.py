"""Seconds per epoch of single runs of the sweep configs (the cost table of README.md here).

    nice -n 10 python experiments/depth/cost.py CONFIG[:WIDTH[:PARAMETRIZATION[:RHO]]] ...

Each argument: a grid point of the config (default width 128, ``mup2``, ρ = 2^-4; η = 2^-4,
seed 0) trained for 2 epochs with one torch thread, as a sweep worker trains it.
"""

from __future__ import annotations

import sys
import time

import torch

from mup2.config import parse_config
from mup2.data import DataSplits
from mup2.sweep import GridPoint, load_sweep_config, trial_config
from mup2.train import load_data, train


def main() -> None:
    torch.set_num_threads(1)
    data: dict[str, DataSplits] = {}
    for arg in sys.argv[1:]:
        path, *rest = arg.split(":")
        width = int(rest[0]) if rest else 128
        par = rest[1] if len(rest) > 1 else "mup2"
        rho = float(rest[2]) if len(rest) > 2 else 0.0625
        cfg = load_sweep_config(path)
        config = trial_config(cfg, GridPoint(par, width, 0.0625, rho, 0)).to_dict()
        config["epochs"] = 2
        c = parse_config(config)
        key = c.data.model_dump_json()
        data.setdefault(key, load_data(c.data))
        t = time.perf_counter()
        train(c, data=data[key])
        dt = (time.perf_counter() - t) / 2
        print(f"{arg}: {dt:.2f} s/epoch, {20 * dt:.0f} s per 20-epoch run", flush=True)


if __name__ == "__main__":
    main()
