"""Datasets in memory, seeded batches and batched augmentation, in plain torch."""

from mup2.data.augment import Augment, normalize, random_crop, random_hflip
from mup2.data.cifar import CIFAR_ENV, load_cifar, resolve_cifar_dir
from mup2.data.dataset import DataSplits, ImageData, channel_stats
from mup2.data.idx import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    load_fashion_mnist,
    load_idx_dataset,
    read_idx,
    resolve_fashion_mnist_dir,
)
from mup2.data.loader import Loader, derive_seed
from mup2.data.noise import with_label_noise
from mup2.data.synthetic import synthetic_classification

__all__ = [
    "CIFAR_ENV",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "Augment",
    "DataSplits",
    "ImageData",
    "Loader",
    "channel_stats",
    "derive_seed",
    "load_cifar",
    "load_fashion_mnist",
    "load_idx_dataset",
    "normalize",
    "random_crop",
    "random_hflip",
    "read_idx",
    "resolve_cifar_dir",
    "resolve_fashion_mnist_dir",
    "synthetic_classification",
    "with_label_noise",
]
