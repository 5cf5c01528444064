"""The GPU kit (experiments/gpu/) on the CPU: build_data.py's cut of the IDX files reads back
through mup2's own loader, and run.py (the one command on the GPU machine) runs a toy sweep from
that data format and writes its store and CSV to the output folder; stopped by its budget, the
store it writes resumes to the end with every grid point finished once; window.sh chains the
configs of one store and skips one whose store is missing. Nothing is installed
(``--install never``), no GPU and no network; a fake Fashion-MNIST in ``tmp_path``."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from mup2.data.idx import load_idx_dataset, read_idx
from mup2.sweep import (
    GridPoint,
    SweepState,
    expand,
    load_sweep_config,
    open_sweep,
    sweep_state,
)

KIT = Path(__file__).resolve().parents[2] / "experiments" / "gpu"
CONFIG = KIT / "dryrun.toml"
STEMS = {
    "train-images-idx3-ubyte": ("train", "images"),
    "train-labels-idx1-ubyte": ("train", "labels"),
    "t10k-images-idx3-ubyte": ("test", "images"),
    "t10k-labels-idx1-ubyte": ("test", "labels"),
}


def _fake_fashion_mnist(folder: Path, n_train: int = 300, n_test: int = 200) -> Path:
    """Four gzipped IDX files of random 28x28 images and labels, as Debian ships them."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        head = b"\0\0\x08\x03" + struct.pack(">3I", n, 28, 28)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(head + images.tobytes())
        )
        head = b"\0\0\x08\x01" + struct.pack(">I", n)
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(head + labels.tobytes())
        )
    return folder


def _build_data(source: Path, root: Path) -> Path:
    out = root / ".gpudata" / "fashion-mnist"
    subprocess.run(
        [sys.executable, str(KIT / "build_data.py"), "--source", str(source), "--out", str(out),
         "--config", str(CONFIG), "--wait", "0"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return out


def _run(root: Path, store: Path, out: Path, budget: float, *flags: str) -> tuple[int, str, float]:
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(KIT / "run.py"), str(CONFIG), str(budget), "--root", str(root),
         "--store", str(store), "--out", str(out), "--install", "never",
         "--wheels", str(root / "no-wheels"), *flags],
        capture_output=True, text=True, timeout=budget + 60,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t


def _state(db_gz: Path, tmp: Path) -> tuple[optuna.Study, list[GridPoint], SweepState]:
    db = tmp / "unpacked.db"
    with gzip.open(db_gz, "rb") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    study, _, points = open_sweep(f"sqlite:///{db}", load_sweep_config(CONFIG).name)
    return study, points, sweep_state(study, points)


def test_build_data_cuts_the_idx_files_that_mup2_reads(tmp_path: Path) -> None:
    source = _fake_fashion_mnist(tmp_path / "source")
    out = _build_data(source, tmp_path / "root")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"] == {"size": 256, "source_size": 300, "full": False}
    assert manifest["splits"]["test"] == {"size": 128, "source_size": 200, "full": False}
    for stem, (split, kind) in STEMS.items():
        full, cut = read_idx(source / f"{stem}.gz"), read_idx(out / f"{stem}.gz")
        assert torch.equal(cut, full[: 256 if split == "train" else 128]), (split, kind)
    splits = load_idx_dataset(out, name="fashion-mnist")
    assert (len(splits.train), len(splits.test)) == (256, 128)
    assert splits.mean[0] == pytest.approx(manifest["normalization"]["these_images"]["mean"])
    first = (out / "train-images-idx3-ubyte.gz").read_bytes()
    _build_data(source, tmp_path / "root")  # the same bytes again: reproducible
    assert (out / "train-images-idx3-ubyte.gz").read_bytes() == first


def test_run_dry_run_on_the_cpu_writes_the_finished_store_and_csv(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _build_data(_fake_fashion_mnist(tmp_path / "source"), root)
    out = tmp_path / "out"
    rc, log, _ = _run(root, tmp_path / "dry.db.gz", out, 120)
    assert rc == 0, log
    assert sorted(p.name for p in out.iterdir()) == ["dry.csv", "dry.db.gz", "dry.log"]
    *_, state = _state(out / "dry.db.gz", tmp_path)
    assert state.finished and state.total == len(expand(load_sweep_config(CONFIG))) == 8
    with (out / "dry.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["state"] for r in rows} == {"COMPLETE"}
    assert {int(r["width"]) for r in rows} == {8, 16}
    assert "8/8 complete" in (out / "dry.log").read_text()
    assert "width 16: 4 trials this run" in log


@pytest.mark.slow
def test_run_stopped_by_its_budget_resumes_to_the_end(tmp_path: Path) -> None:
    """The budget's deadline falls while the sweep starts or trains (whichever, on this
    machine): run.py stops it in time and the store it writes has no trial left running; run
    again from that store, the sweep finishes with each grid point completed exactly once."""
    root = tmp_path / "root"
    _build_data(_fake_fashion_mnist(tmp_path / "source"), root)
    budget = 17.0
    rc, log, seconds = _run(root, tmp_path / "dry.db.gz", tmp_path / "first", budget,
                            "--reserve", "8", "--grace", "4")  # fmt: skip
    assert rc == 0, log
    assert seconds < budget + 10, log  # python's start and the last export beyond the budget
    _, _, first = _state(tmp_path / "first" / "dry.db.gz", tmp_path)
    assert first.running == 0 and first.failed == 0, log
    assert first.complete + first.waiting == first.total
    rc, log, _ = _run(root, tmp_path / "first" / "dry.db.gz", tmp_path / "second", 120)
    assert rc == 0, log
    study, points, last = _state(tmp_path / "second" / "dry.db.gz", tmp_path)
    assert last.finished
    done = Counter(
        tuple(t.user_attrs["grid"].values())
        for t in study.get_trials()
        if t.state.name == "COMPLETE"
    )
    assert len(done) == len(points) and set(done.values()) == {1}


def test_window_chains_one_store_and_skips_a_missing_one(tmp_path: Path) -> None:
    """window.sh study: each config resumes the store named in its spec; one naming the store
    the previous config wrote goes on from it; one whose store is missing is skipped (no new
    store written in its place), and $OUT keeps the last store written."""
    root = tmp_path / "root"
    _build_data(_fake_fashion_mnist(tmp_path / "source"), root)
    first = tmp_path / "first"
    rc, log, _ = _run(root, tmp_path / "dry.db.gz", first, 120, "--prepare-only")
    assert rc == 0, log
    work, out = tmp_path / "work", tmp_path / "out"
    out.mkdir()
    specs = [
        f"{CONFIG}:120:{first / 'dry.db.gz'}",  # runs the 8 points
        f"{CONFIG}:120:{work / 'missing' / 'dry.db.gz'}",  # skipped
        f"{CONFIG}:120:{work / 'dryrun' / 'dry.db.gz'}",  # the first one's store: all done
    ]
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "OUT": str(out),
        "MUP2_WINDOW_WORK": str(work),
    }
    proc = subprocess.run(
        ["bash", str(KIT / "window.sh"), "study", *specs, "--", "--root", str(root),
         "--install", "never", "--wheels", str(root / "no-wheels")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert f"error: no store at {work / 'missing' / 'dry.db.gz'}: {specs[1]} skipped" in text
    assert not (work / "missing").exists()
    assert sorted(p.name for p in out.iterdir()) == ["dry.db.gz", "logs.tgz"]
    assert "0/8 complete, 8 waiting" in text and "8/8 complete, 0 waiting" in text
    study, points, state = _state(out / "dry.db.gz", tmp_path)
    assert state.finished and state.total == 8
    assert len(study.get_trials()) == len(points)  # the last config ran nothing again
