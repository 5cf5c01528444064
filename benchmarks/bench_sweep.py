"""Sweep throughput: trials per hour with 1 and 2 local workers, and the store's overhead per trial.

Runs the same grid of short, independent trials (an MLP on synthetic data) on a fresh SQLite store
with 1 and then 2 worker processes, and reads from the store when each trial started and ended,
which worker ran it and how long its training took. Per worker, everything between the start of
its first trial and the end of its last that is not training (building the model, the store's
reads and writes, heartbeats, popping the next trial) is the orchestration overhead; process
start-up (importing torch) is reported separately.

    .venv/bin/python benchmarks/bench_sweep.py [--trials 32] [--train-size 4096] [--json out.json]

Targets (issue 5): 2 workers at least 1.8x one worker; overhead under 2% of a 10-second trial.
Throughput is given for the whole run and for the steady state (from a worker's first trial to
its last), which is what a long sweep sees: start-up happens once per worker process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import optuna
import torch

from mup2.sweep import parse_sweep_config, run_sweep


def sweep_config(name: str, trials: int, train_size: int, workers: int) -> dict[str, Any]:
    """``trials`` independent runs: one parametrization and width, ``trials`` seeds."""
    return {
        "name": name,
        "workers": workers,
        "train": {
            "epochs": 2,
            "batch_size": 128,
            "model": {"name": "mlp", "width": 256, "base_width": 64, "depth": 3},
            "data": {"name": "synthetic", "train_size": train_size, "test_size": 512}
            | {"shape": [1, 16, 16]},
            "optimizer": {"name": "sgd", "lr": 0.05},
        },
        "grid": {
            "widths": [256],
            "lr": [0.05],
            "rho": [0.05],
            "seeds": list(range(trials)),
            "parametrizations": ["mup2"],
        },
    }


def measure(workers: int, trials: int, train_size: int, root: Path) -> dict[str, float]:
    cfg = parse_sweep_config(sweep_config(f"bench{workers}", trials, train_size, workers))
    run_dir = root / f"w{workers}"
    t0 = time.perf_counter()
    storage, state = run_sweep(cfg, run_dir, workers=workers, progress=False)
    wall = time.perf_counter() - t0
    assert state.done and state.complete == trials, state
    done = [
        t
        for t in optuna.load_study(study_name=cfg.name, storage=storage).get_trials()
        if t.state == optuna.trial.TrialState.COMPLETE
    ]
    by_worker: dict[str, list[optuna.trial.FrozenTrial]] = defaultdict(list)
    for t in done:
        by_worker[t.user_attrs["worker"]].append(t)
    longest = overhead = 0.0
    for ts in by_worker.values():
        start = min(t.datetime_start for t in ts)  # type: ignore[type-var]
        end = max(t.datetime_complete for t in ts)  # type: ignore[type-var]
        span = (end - start).total_seconds()
        longest = max(longest, span)
        overhead += span - sum(t.user_attrs["seconds"] for t in ts)
    trial_seconds = sum(t.user_attrs["seconds"] for t in done) / len(done)
    return {
        "workers": workers,
        "trials": len(done),
        "wall_s": wall,
        "startup_s": wall - longest,  # spawning workers, importing torch, opening the store
        "trials_per_hour": 3600 * len(done) / wall,
        "steady_trials_per_hour": 3600 * len(done) / longest,
        "train_s_per_trial": trial_seconds,
        "overhead_s_per_trial": overhead / len(done),
        "overhead_pct_of_trial": 100 * overhead / len(done) / trial_seconds,
        "overhead_pct_of_10s_trial": 100 * overhead / len(done) / 10.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--train-size", type=int, default=16384)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"torch {torch.__version__}, optuna {optuna.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; SQLite store; "
        f"{args.trials} trials of an MLP (width 256, 2 epochs of {args.train_size} 16x16 images)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(w, args.trials, args.train_size, Path(tmp)) for w in (1, 2)]
    print(f"{'workers':>8} {'wall s':>8} {'startup s':>9} {'trials/h':>9} {'steady/h':>9} "
          f"{'train s':>8} {'overhead s':>11} {'% of trial':>10} {'% of 10 s':>9}")  # fmt: skip
    for r in rows:
        print(
            f"{r['workers']:>8.0f} {r['wall_s']:>8.1f} {r['startup_s']:>9.1f} "
            f"{r['trials_per_hour']:>9.0f} {r['steady_trials_per_hour']:>9.0f} "
            f"{r['train_s_per_trial']:>8.2f} {r['overhead_s_per_trial']:>11.3f} "
            f"{r['overhead_pct_of_trial']:>10.2f} {r['overhead_pct_of_10s_trial']:>9.2f}"
        )
    speedup = rows[1]["steady_trials_per_hour"] / rows[0]["steady_trials_per_hour"]
    whole = rows[1]["trials_per_hour"] / rows[0]["trials_per_hour"]
    worst = max(r["overhead_pct_of_10s_trial"] for r in rows)
    verdict = "PASS" if speedup >= 1.8 else "FAIL"
    print(f"2 workers / 1 worker, steady state (without the one-time start-up): {speedup:.2f}x "
          f"(target >= 1.8)  {verdict}; whole run: {whole:.2f}x")  # fmt: skip
    print(f"orchestration + store per trial: {worst:.2f}% of a 10-s trial (target < 2%)  "
          f"{'PASS' if worst < 2 else 'FAIL'}")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "speedup": speedup, "whole": whole}))


if __name__ == "__main__":
    main()
