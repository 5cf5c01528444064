"""Make the Figure 1 stores committable: fold SQLite's write-ahead log into each ``.db`` file
(safe while workers run) and export every trial as CSV beside it.

    .venv/bin/python experiments/figure1/snapshot.py [CONFIG ...]   # default: every *.toml here

Then ``git add experiments/figure1/*.db experiments/figure1/*.csv`` and commit.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from mup2.report import load_sweep, write_trials_csv
from mup2.sweep import load_sweep_config

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", type=Path, default=sorted(HERE.glob("*.toml")))
    args = ap.parse_args()
    for path in args.configs:
        cfg = load_sweep_config(path)
        if not cfg.storage or not cfg.storage.startswith("sqlite:///"):
            sys.exit(f"{path}: not an SQLite store ({cfg.storage!r}); nothing to snapshot")
        db = Path(cfg.storage.removeprefix("sqlite:///"))
        if not db.is_file():
            print(f"{path}: no store yet ({db})")
            continue
        with sqlite3.connect(db, timeout=60) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sweep = load_sweep(cfg.storage, cfg.name)
        csv = write_trials_csv(sweep, db.with_suffix(".csv"))
        print(f"{db.name}: {len(sweep.done)} finished trials of {len(sweep.runs)}; {csv.name}")


if __name__ == "__main__":
    main()
