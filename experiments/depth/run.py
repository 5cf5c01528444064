"""Run the depth study's sweeps (one config per variant and depth, one store: ``depth.db``) in
priority order, resumably, with one worker on this machine.

    python experiments/depth/run.py run --blocks 1   # the main grid (seed 0) of every config
    python experiments/depth/run.py run --blocks 2   # then SGD below the grid (η 2^-12, 2^-11)
    python experiments/depth/run.py run --blocks 3   # then seeds 1-2 (aware-d4, -d16: joint seed 0)
    python experiments/depth/run.py run              # then everything (README.md: the blocks)
    python experiments/depth/run.py snapshot         # fold the SQLite WAL into depth.db

``run`` goes through the configs in :data:`ORDER` (or those named); for each it enqueues the whole
grid (as ``mup2 sweep`` does) and then trains the unfinished points of its first ``--blocks``
grid blocks (the main grid, then its ``[[grid.extra]]`` blocks in order): workers claim waiting
points in grid order, so those come first. SIGINT or SIGTERM stops at once and queues the
running point again; rerun the same command to go on. ``--blocks`` only says what this machine
trains now: the store and the configs are the same either way, and ``mup2 sweep CONFIG`` or
``mup2 worker --storage sqlite:///experiments/depth/depth.db --study NAME`` may join any study.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Literal

from mup2.sweep import (
    expand,
    load_sweep_config,
    prepare,
    run_worker,
    stop_on_signals,
    sweep_state,
)
from mup2.sweep.config import parse_batch

HERE = Path(__file__).resolve().parent
#: The widest span of depths first (2, 8, 32), then the depths between; both variants at each.
ORDER = (
    "d2",
    "aware-d8",
    "widthonly-d8",
    "aware-d32",
    "widthonly-d32",
    "aware-d4",
    "widthonly-d4",
    "aware-d16",
    "widthonly-d16",
)


def _run(name: str, blocks: int | None, batch: int | Literal["auto"]) -> None:
    cfg = load_sweep_config(HERE / f"{name}.toml")
    assert cfg.storage is not None
    study, _ = prepare(cfg, cfg.storage, say=print)
    left = None
    if blocks is not None:  # the first points of the grid order: those of the first blocks
        extra = cfg.grid.extra[: blocks - 1]
        head = cfg.model_copy(update={"grid": cfg.grid.model_copy(update={"extra": extra})})
        state = sweep_state(study, expand(head))
        left = state.total - state.complete
        print(f"{cfg.name}: {left} of the first {blocks} blocks' {state.total} runs left")
        if left == 0:
            return
    run_worker(cfg.storage, cfg.name, batch=batch, max_trials=left, say=print)


def snapshot() -> None:
    db = HERE / "depth.db"
    with sqlite3.connect(db, timeout=60) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"{db}: WAL checkpointed; commit it now")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; config names may come before or after the options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phase", choices=("run", "snapshot"))
    ap.add_argument("configs", nargs="*", default=list(ORDER), help="config names, e.g. d2")
    ap.add_argument("--blocks", type=int, help="train the first N grid blocks only (1: main)")
    ap.add_argument(
        "--batch",
        type=parse_batch,
        default=1,
        help="grid points trained at once as one stacked model (mup2.batched; default 1)",
    )
    args = ap.parse_intermixed_args(argv)  # config names after the options: run --batch 16 d2
    if args.blocks is not None and args.blocks < 1:
        ap.error("--blocks must be >= 1")
    unknown = sorted(set(args.configs) - set(ORDER))
    if unknown:
        ap.error(f"unknown config {', '.join(unknown)}; the configs are {', '.join(ORDER)}")
    return args


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a log file
    args = parse_args()
    if args.phase == "snapshot":
        snapshot()
        return
    try:
        with stop_on_signals():
            for name in args.configs:
                _run(name, args.blocks, args.batch)
    except KeyboardInterrupt:
        print("interrupted: the running point is queued again; rerun to go on")
        sys.exit(130)


if __name__ == "__main__":
    main()
