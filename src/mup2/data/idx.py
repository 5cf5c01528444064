"""MNIST-format (IDX) files: Fashion-MNIST, MNIST, KMNIST and the like, gzipped or not."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mup2.data.dataset import DataSplits, ImageData, channel_stats
from mup2.errors import DataError

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "load_fashion_mnist",
    "load_idx_dataset",
    "read_idx",
    "resolve_fashion_mnist_dir",
]

#: Where Debian's ``dataset-fashion-mnist`` package puts the files.
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable naming a Fashion-MNIST directory (overridden by an explicit ``root``).
FASHION_MNIST_ENV = "MUP2_FASHION_MNIST_DIR"

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> Tensor:
    """Read one IDX file (``.gz`` decompressed on the fly) into a tensor of its shape and type.

    Layout: two zero bytes, a type byte, the number of dimensions ``d``, ``d`` big-endian int32
    sizes, then the data in row-major order.
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            msg = f"{path}: damaged or truncated gzip file ({exc}); fetch it again"
            raise DataError(msg) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(
            f"{path} is not an IDX file (bad magic number {raw[:4].hex()}); point the data "
            "root at MNIST-format files"
        )
    ndim = raw[3]
    dims = [int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4)]
    dtype = np.dtype(_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - offset != count * dtype.itemsize:
        raise DataError(
            f"{path}: header says {dims} x {dtype.itemsize} bytes, found {len(raw) - offset} "
            "(a truncated or damaged file); fetch it again"
        )
    arr = np.frombuffer(raw, dtype, count=count, offset=offset).reshape(dims)
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))


def _find(root: Path, split: str, kind: str) -> Path:
    ndim = 3 if kind == "images" else 1
    stems = [f"{_PREFIX[split]}-{kind}-idx{ndim}-ubyte", f"{_PREFIX[split]}-{kind}.idx{ndim}-ubyte"]
    for stem in stems:
        for suffix in ("", ".gz"):
            if (root / (stem + suffix)).is_file():
                return root / (stem + suffix)
    raise FileNotFoundError(f"no {stems[0]}[.gz] in {root}; check the data root")


def load_idx_dataset(root: str | Path, name: str = "idx", num_classes: int = 10) -> DataSplits:
    """The four MNIST-format files in ``root`` (``train``/``t10k`` ``-images-idx3-ubyte`` and
    ``-labels-idx1-ubyte``, optionally ``.gz``) as uint8 images ``(N, 1, H, W)``."""
    root = Path(root)
    splits = []
    for split in ("train", "test"):
        images_path, labels_path = _find(root, split, "images"), _find(root, split, "labels")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.dtype != torch.uint8:
            raise DataError(
                f"{images_path}: holds {images.dtype} {list(images.shape)}, not uint8 images "
                "(N, H, W); check that the files are not swapped or mislabelled"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"{labels_path}: holds shape {list(labels.shape)}, not one label per each of "
                f"the {len(images)} images in {images_path.name}; check the files belong together"
            )
        labels = labels.to(torch.int64)
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise DataError(
                f"{labels_path}: labels span {int(labels.min())}..{int(labels.max())}, outside "
                f"0..{num_classes - 1}; set data.num_classes or check the file"
            )
        splits.append(ImageData(images.unsqueeze(1), labels))
    mean, std = channel_stats(splits[0].images)
    return DataSplits(name, splits[0], splits[1], num_classes, mean, std)


def resolve_fashion_mnist_dir(root: str | Path | None = None) -> Path:
    """``root`` if given, else ``$MUP2_FASHION_MNIST_DIR``, else Debian's location; checked."""
    chosen = root or os.environ.get(FASHION_MNIST_ENV) or DEFAULT_FASHION_MNIST_DIR
    path = Path(chosen)
    try:
        for split in ("train", "test"):
            for kind in ("images", "labels"):
                _find(path, split, kind)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {path} ({err}). Install it with "
            "`apt-get install dataset-fashion-mnist` (files go to "
            f"{DEFAULT_FASHION_MNIST_DIR}), or point the data `root` option or the "
            f"{FASHION_MNIST_ENV} environment variable at a directory holding the four IDX files "
            "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte, each optionally .gz)."
        ) from None
    return path


def load_fashion_mnist(root: str | Path | None = None) -> DataSplits:
    """Fashion-MNIST (60k/10k 28x28 grayscale images, 10 classes) from
    :func:`resolve_fashion_mnist_dir`."""
    return load_idx_dataset(resolve_fashion_mnist_dir(root), name="fashion-mnist")
