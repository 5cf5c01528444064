import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mup2.data import (
    CIFAR_ENV,
    FASHION_MNIST_ENV,
    Augment,
    ImageData,
    Loader,
    channel_stats,
    load_cifar,
    load_fashion_mnist,
    load_idx_dataset,
    normalize,
    random_crop,
    random_hflip,
    read_idx,
    synthetic_classification,
)


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype("uint8"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}[arr.dtype]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return header + arr.tobytes()


def _write_mnist(root: Path, n_train: int = 6, n_test: int = 4, gz: bool = True) -> dict:
    """Tiny MNIST-format files with pixel value = (index * 7 + row + col) % 256."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        idx = np.arange(n)[:, None, None]
        images = ((idx * 7 + np.arange(5)[None, :, None] + np.arange(3)) % 256).astype(np.uint8)
        labels = (np.arange(n) * 3 % 10).astype(np.uint8)
        for kind, arr, nd in (("images", images, 3), ("labels", labels, 1)):
            data = _idx_bytes(arr)
            name = f"{prefix}-{kind}-idx{nd}-ubyte"
            if gz:
                (root / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_reads_fixture(tmp_path: Path, gz: bool) -> None:
    arrays = _write_mnist(tmp_path, gz=gz)
    d = load_idx_dataset(tmp_path)
    assert d.input_shape == (1, 5, 3) and d.num_classes == 10
    assert d.train.images.dtype == torch.uint8 and d.train.labels.dtype == torch.int64
    assert torch.equal(d.train.images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert d.test.labels.tolist() == [0, 3, 6, 9]
    pixels = arrays["train"][0].astype(np.float64) / 255
    assert d.mean[0] == pytest.approx(pixels.mean()) and d.std[0] == pytest.approx(pixels.std())


def test_read_idx_types_and_errors(tmp_path: Path) -> None:
    ints = np.arange(-3, 3, dtype=">i4").reshape(2, 3)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(ints))
    assert read_idx(tmp_path / "a.idx").tolist() == [[-3, -2, -1], [0, 1, 2]]
    floats = np.array([0.5, -1.25], dtype=">f4")
    (tmp_path / "f.idx.gz").write_bytes(gzip.compress(_idx_bytes(floats)))
    assert read_idx(tmp_path / "f.idx.gz").tolist() == [0.5, -1.25]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros(4, np.uint8))[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_mnist(tmp_path / "env", n_train=6)
    _write_mnist(tmp_path / "opt", n_train=8)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "env"))
    assert len(load_fashion_mnist().train) == 6  # the environment variable
    assert len(load_fashion_mnist(tmp_path / "opt").train) == 8  # the option wins
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as err:
        load_fashion_mnist()
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and FASHION_MNIST_ENV in msg
    assert str(tmp_path / "nowhere") in msg


def _cifar_batch(path: Path, n: int, offset: int, label_key: bytes, classes: int) -> np.ndarray:
    rng = np.random.default_rng(offset)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [(offset + i) % classes for i in range(n)]
    with path.open("wb") as f:
        pickle.dump({b"batch_label": b"x", b"data": data, label_key: labels}, f)
    return data


def test_cifar10_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = [
        _cifar_batch(folder / f"data_batch_{i}", 3, 10 * i, b"labels", 10) for i in range(1, 6)
    ]
    test = _cifar_batch(folder / "test_batch", 2, 99, b"labels", 10)
    d = load_cifar(10, tmp_path)  # the parent of the archive folder works too
    assert (d.name, d.num_classes, d.input_shape) == ("cifar10", 10, (3, 32, 32))
    assert len(d.train) == 15 and len(d.test) == 2
    # channel-major rows: 1024 red, then 1024 green, then 1024 blue values, row by row
    assert torch.equal(d.train.images[4, 1], torch.from_numpy(parts[1][1, 1024:2048]).view(32, 32))
    assert d.train.images[0, 2, 31, 31] == parts[0][0, 3071]
    assert torch.equal(d.test.images.flatten(1), torch.from_numpy(test))
    assert d.train.labels.tolist()[:6] == [0, 1, 2, 0, 1, 2]
    monkeypatch.setenv(CIFAR_ENV, str(folder))
    assert len(load_cifar(10).train) == 15


def test_cifar100_fixture_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cifar_batch(tmp_path / "train", 4, 95, b"fine_labels", 100)
    _cifar_batch(tmp_path / "test", 2, 7, b"fine_labels", 100)
    d = load_cifar(100, tmp_path)
    assert d.num_classes == 100 and d.train.labels.tolist() == [95, 96, 97, 98]
    monkeypatch.delenv(CIFAR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=CIFAR_ENV):
        load_cifar(10)
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 batches"):
        load_cifar(10, tmp_path)
    _cifar_batch(tmp_path / "data_batch_1", 2, 0, b"fine_labels", 100)
    with pytest.raises(ValueError, match="not a CIFAR batch"):
        load_cifar(10, tmp_path)


def test_channel_stats_matches_direct_computation() -> None:
    images = torch.randint(0, 256, (50, 3, 4, 5), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=7)
    x = images.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(
        torch.tensor(std, dtype=torch.float64), x.transpose(0, 1).flatten(1).std(1, False)
    )


def test_random_crop_is_a_shifted_window() -> None:
    x = torch.arange(6 * 2 * 5 * 5, dtype=torch.float32).view(6, 2, 5, 5) + 1
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(6):
        hits = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 5, dx : dx + 5])
        ]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 1  # offsets differ between images
    again = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(random_crop(x, 0, torch.Generator()), x)


def test_random_hflip_and_normalize() -> None:
    x = torch.randn(200, 3, 4, 4)
    out = random_hflip(x, torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 70 < sum(flipped) < 130
    y = normalize(x, (1.0, 2.0, 3.0), (2.0, 4.0, 0.5))
    torch.testing.assert_close(y[:, 2], (x[:, 2] - 3.0) / 0.5)


def _images(n: int) -> ImageData:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return ImageData(images, torch.arange(n) % 3)


def test_loader_batches_are_deterministic_per_epoch() -> None:
    data = _images(10)
    kw = {"mean": (0.0,), "std": (1 / 255,), "shuffle": True, "seed": 5}
    loader = Loader(data, 4, **kw)
    assert len(loader) == 3 and loader.num_examples == 10

    def ids(ld: Loader, epoch: int) -> list[int]:
        return [int(v) for x, _ in ld.epoch(epoch) for v in x[:, 0, 0, 0].round()]

    e0, e1 = ids(loader, 0), ids(loader, 1)
    assert sorted(e0) == list(range(10)) and e0 != e1  # a permutation, new each epoch
    assert ids(Loader(data, 4, **kw), 0) == e0  # same seed and epoch: same batches
    assert ids(Loader(data, 4, **{**kw, "seed": 6}), 0) != e0
    plain = Loader(data, 4, mean=(0.0,), std=(1 / 255,))
    assert ids(plain, 0) == list(range(10))  # no shuffle: data order
    y = torch.cat([y for _, y in plain.epoch()])
    assert torch.equal(y, data.labels)
    dropped = Loader(data, 4, drop_last=True, **kw)
    assert len(dropped) == 2 and dropped.num_examples == 8 and len(ids(dropped, 3)) == 8
    with pytest.raises(ValueError, match="no full batch"):
        Loader(data, 11, drop_last=True, **kw)


def test_loader_scales_augments_and_normalizes() -> None:
    data = _images(8)
    aug = Augment(crop_padding=1, hflip=True)
    a = [x for x, _ in Loader(data, 8, mean=(0.5,), std=(0.25,), augment=aug, seed=1).epoch(2)]
    b = [x for x, _ in Loader(data, 8, mean=(0.5,), std=(0.25,), augment=aug, seed=1).epoch(2)]
    assert torch.equal(a[0], b[0]) and a[0].dtype == torch.float32
    x = next(Loader(data, 8, mean=(0.5,), std=(0.25,)).epoch())[0]
    torch.testing.assert_close(x[:, 0, 0, 0], (torch.arange(8) / 255 - 0.5) / 0.25)
    # crop padding is zero before normalization: some pixels are (0 - 0.5) / 0.25
    assert (a[0][1:] == -2.0).any() and not (x[1:] == -2.0).any()


def test_synthetic_data_is_seeded_and_balanced() -> None:
    a = synthetic_classification(100, 30, (2, 3, 3), num_classes=5, noise=0.5, seed=4)
    b = synthetic_classification(100, 30, (2, 3, 3), num_classes=5, noise=0.5, seed=4)
    c = synthetic_classification(100, 30, (2, 3, 3), num_classes=5, noise=0.5, seed=5)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert a.input_shape == (2, 3, 3) and a.train.images.dtype == torch.float32
    assert torch.bincount(a.train.labels).tolist() == [20] * 5
    # the test split shares the class means: per-class means of the two splits agree roughly
    for k in range(5):
        tr = a.train.images[a.train.labels == k].mean(0)
        te = a.test.images[a.test.labels == k].mean(0)
        assert torch.dist(tr, te) < torch.dist(tr, a.train.images.mean(0))
