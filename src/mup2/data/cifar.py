"""CIFAR-10 and CIFAR-100 from a local directory in the python-pickle batch format.

The files are those of ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` after
extraction: pickled dicts with ``b"data"`` (``(N, 3072)`` uint8, channel-major 32x32 RGB) and
``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). Only read files you trust: unpickling
runs code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mup2.data.dataset import DataSplits, ImageData, channel_stats
from mup2.errors import DataError

__all__ = ["CIFAR_ENV", "load_cifar", "resolve_cifar_dir"]

#: Environment variable naming a directory with the extracted batches (or their parent folder).
CIFAR_ENV = "MUP2_CIFAR_DIR"

_LAYOUT: dict[int, tuple[str, list[str], str, str]] = {
    # classes: (folder in the archive, train files, test file, label key)
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels"),
    100: ("cifar-100-python", ["train"], "test", "fine_labels"),
}


def resolve_cifar_dir(num_classes: int, root: str | Path | None = None) -> Path:
    """The directory holding the batches: ``root`` (else ``$MUP2_CIFAR_DIR``) or its archive
    folder (``cifar-10-batches-py`` / ``cifar-100-python``)."""
    if num_classes not in _LAYOUT:
        raise ValueError(f"CIFAR has 10 or 100 classes, not {num_classes}")
    folder, train_files, _, _ = _LAYOUT[num_classes]
    chosen = root or os.environ.get(CIFAR_ENV)
    if not chosen:
        raise FileNotFoundError(
            f"CIFAR-{num_classes} needs a directory: set the data `root` option or the "
            f"{CIFAR_ENV} environment variable to the extracted {folder} folder (or its parent)"
        )
    for path in (Path(chosen), Path(chosen) / folder):
        if (path / train_files[0]).is_file():
            return path
    raise FileNotFoundError(
        f"no CIFAR-{num_classes} batches ({train_files[0]}, ...) in {chosen} or {chosen}/{folder}"
    )


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    with path.open("rb") as f:
        try:
            d = pickle.load(f, encoding="bytes")
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            msg = f"{path}: not a readable CIFAR batch ({exc or 'empty'}); extract it again"
            raise DataError(msg) from None
    key = label_key.encode()
    if not isinstance(d, dict) or b"data" not in d or key not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{path}: not a CIFAR batch (keys {keys}; need data and {key!r})")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DataError(f"{path}: data {data.shape} and labels {labels.shape} are not CIFAR's")
    return data, labels


def load_cifar(num_classes: int = 10, root: str | Path | None = None) -> DataSplits:
    """CIFAR-10 or CIFAR-100 (fine labels) as uint8 images ``(N, 3, 32, 32)``."""
    path = resolve_cifar_dir(num_classes, root)
    _, train_files, test_file, key = _LAYOUT[num_classes]
    splits = []
    for files in (train_files, [test_file]):
        parts = [_read_batch(path / f, key) for f in files]
        data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{path}: labels outside [0, {num_classes}); check the files")
        splits.append(ImageData(torch.from_numpy(data.copy()), torch.from_numpy(labels)))
    mean, std = channel_stats(splits[0].images)
    return DataSplits(f"cifar{num_classes}", splits[0], splits[1], num_classes, mean, std)
