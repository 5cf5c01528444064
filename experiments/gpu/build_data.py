"""Write the Fashion-MNIST splits a sweep uses, cut to its sizes, into ``<repo>/.gpudata/`` for a
GPU machine that has no network (carried with ``carry = [".whl", ".gpudata"]``).

    python3 experiments/gpu/build_data.py                       # sizes of experiments/gpu/wide.toml
    python3 experiments/gpu/build_data.py --train 8192 --test 10000
    python3 experiments/gpu/build_data.py --config experiments/gpu/smoke.toml

The output is the four gzipped IDX files, cut to the first ``--train`` training and ``--test``
test examples, in ``.gpudata/fashion-mnist/``: mup2 reads them unchanged (a config's
``train.data.root = ".gpudata/fashion-mnist"``, relative to the repository root where
``experiments/gpu/run.py`` runs the sweep). ``manifest.json`` beside them records the sizes,
the source files' SHA-256 and, when numpy is at hand, the normalization statistics: mup2
normalizes with the mean and std of the training images it loads, so the cut files give
statistics of their first N images, not of all 60 000 (see README.md). Standard library only
(numpy optional); the gzip output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = ROOT / ".gpudata" / "fashion-mnist"
DEFAULT_CONFIG = HERE / "wide.toml"
FILES = {  # (split, kind) -> file stem
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def _source_file(source: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (source / name).is_file():
            return source / name
    return None


def wait_for_source(source: Path, seconds: float) -> dict[str, Path]:
    """The four source files, waiting up to ``seconds`` for them to appear (Debian's
    ``dataset-fashion-mnist`` may be being installed right now)."""
    deadline = time.monotonic() + seconds
    while True:
        found = {stem: _source_file(source, stem) for stem in FILES.values()}
        if all(found.values()):
            return {k: v for k, v in found.items() if v is not None}
        if time.monotonic() >= deadline:
            missing = ", ".join(s for s, p in found.items() if p is None)
            sys.exit(
                f"error: {source} lacks {missing}[.gz]; install Fashion-MNIST with `make data` "
                "(Debian's dataset-fashion-mnist) or give --source"
            )
        time.sleep(2.0)


def read_idx(path: Path) -> tuple[bytes, list[int]]:
    """The raw bytes of an IDX file (gunzipped) and its dimensions."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        sys.exit(f"error: {path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = list(struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim]))
    count = 1
    for d in dims:
        count *= d
    if len(raw) != 4 + 4 * ndim + count:
        sys.exit(f"error: {path}: header says {dims}, the data has another size")
    return raw, dims


def cut_idx(raw: bytes, dims: list[int], n: int) -> bytes:
    """The first ``n`` records of an IDX file of unsigned bytes."""
    ndim = len(dims)
    record = 1
    for d in dims[1:]:
        record *= d
    head = raw[:4] + struct.pack(f">{ndim}I", n, *dims[1:])
    start = 4 + 4 * ndim
    return head + raw[start : start + n * record]


def _stats(images_idx: bytes, ndim: int) -> dict[str, float] | None:
    """Mean and std of the images on the [0, 1] scale (mup2's normalization), if numpy is here."""
    try:
        import numpy as np
    except ImportError:
        return None
    x = np.frombuffer(images_idx, np.uint8, offset=4 + 4 * ndim).astype(np.float64) / 255.0
    return {"mean": float(x.mean()), "std": float(x.std())}


def sizes_from_config(path: Path) -> tuple[int | None, int | None]:
    """``train.data.train_size`` and ``test_size`` of a sweep or run config (TOML)."""
    with path.open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    d = data.get("train", data).get("data", {})
    return d.get("train_size"), d.get("test_size")


def build(
    source: Path, out: Path, n_train: int | None, n_test: int | None, wait: float
) -> dict[str, Any]:
    """Write the cut files and ``manifest.json`` into ``out``; returns the manifest."""
    files = wait_for_source(source, wait)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"source": str(source), "splits": {}, "files": {}}
    for split, n in (("train", n_train), ("test", n_test)):
        raws = {kind: read_idx(files[FILES[(split, kind)]]) for kind in ("images", "labels")}
        total = raws["images"][1][0]
        if raws["labels"][1][0] != total:
            sys.exit(f"error: {source}: {split} images and labels differ in count")
        keep = total if n is None else n
        if keep > total:
            sys.exit(f"error: {split} size {keep} is more than the {total} examples in {source}")
        for kind, (raw, dims) in raws.items():
            stem = FILES[(split, kind)]
            src = files[stem]
            data = raw if keep == total else cut_idx(raw, dims, keep)
            target = out / (stem + ".gz")
            for stale in (out / stem, target):
                stale.unlink(missing_ok=True)
            target.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
            manifest["files"][target.name] = {
                "bytes": target.stat().st_size,
                "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
                "source": src.name,
                "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
            }
            if split == "train" and kind == "images":
                manifest["normalization"] = {
                    "these_images": _stats(data, len(dims)),
                    "all_source_images": _stats(raw, len(dims)),
                }
        manifest["splits"][split] = {"size": keep, "source_size": total, "full": keep == total}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def exclude_from_git(out: Path) -> None:
    """Add ``/.gpudata/`` to this checkout's ``.git/info/exclude`` when ``out`` is in it."""
    if not out.resolve().is_relative_to(ROOT / ".gpudata"):
        return
    q = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--git-path", "info/exclude"],
        capture_output=True,
        text=True,
        check=False,
    )
    if q.returncode != 0:
        return
    exclude = Path(q.stdout.strip())
    exclude = exclude if exclude.is_absolute() else ROOT / exclude
    lines = exclude.read_text().splitlines() if exclude.is_file() else []
    if "/.gpudata/" not in lines:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a") as f:
            f.write("/.gpudata/\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--source",
        type=Path,
        default=Path(os.environ.get("MUP2_FASHION_MNIST_DIR") or DEFAULT_SOURCE),
        help="the four Fashion-MNIST IDX files (default: $MUP2_FASHION_MNIST_DIR, else Debian's)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    ap.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"take the sizes from this config's train.data (default: {DEFAULT_CONFIG.name})",
    )
    ap.add_argument("--train", type=int, default=None, help="training examples (the first N)")
    ap.add_argument("--test", type=int, default=None, help="test examples (the first N)")
    ap.add_argument(
        "--wait", type=float, default=600.0, help="seconds to wait for the source files to appear"
    )
    args = ap.parse_args(argv)
    n_train, n_test = args.train, args.test
    if args.config is not None or (n_train is None and n_test is None):
        cfg_train, cfg_test = sizes_from_config(args.config or DEFAULT_CONFIG)
        n_train = n_train if n_train is not None else cfg_train
        n_test = n_test if n_test is not None else cfg_test
    for name, n in (("--train", n_train), ("--test", n_test)):
        if n is not None and n < 1:
            sys.exit(f"error: {name} must be at least 1, got {n}")
    exclude_from_git(args.out)
    manifest = build(args.source, args.out, n_train, n_test, args.wait)
    total = sum(f["bytes"] for f in manifest["files"].values())
    sizes = ", ".join(f"{s} {v['size']}" for s, v in manifest["splits"].items())
    print(f"wrote {args.out} ({sizes}; {total / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
