"""Symmetric label noise: exact rate, deterministic, train split only, the same for every run."""

from __future__ import annotations

import pytest
import torch

from mup2.config import parse_config
from mup2.data import synthetic_classification, with_label_noise
from mup2.train import prepare_data


def test_exact_fraction_wrong_and_never_the_true_class() -> None:
    splits = synthetic_classification(1000, 200, (1, 4, 4), 10, 1.0, seed=0)
    noisy = with_label_noise(splits, 0.4, seed=3)
    wrong = noisy.train.labels != splits.train.labels
    assert int(wrong.sum()) == 400
    assert noisy.train.labels.min() >= 0 and noisy.train.labels.max() < 10
    assert torch.equal(noisy.train.images, splits.train.images)
    assert torch.equal(noisy.test.labels, splits.test.labels)  # test split stays clean
    # the wrong labels are spread over the other classes (about 400/9 each), not one offset
    shift = (noisy.train.labels - splits.train.labels).remainder(10)[wrong]
    counts = torch.bincount(shift, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 20


def test_deterministic_in_its_own_seed() -> None:
    splits = synthetic_classification(500, 100, (1, 4, 4), 10, 1.0, seed=0)
    a, b = with_label_noise(splits, 0.3, 1), with_label_noise(splits, 0.3, 1)
    c = with_label_noise(splits, 0.3, 2)
    assert torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.train.labels, c.train.labels)
    assert with_label_noise(splits, 0.0, 1) is splits
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        with_label_noise(splits, 1.0, 0)


def test_same_noisy_labels_for_every_width_parametrization_and_trial_seed() -> None:
    base = {
        "model": {"name": "mlp", "width": 32},
        "data": {"name": "synthetic", "train_size": 256, "test_size": 64, "label_noise": 0.25},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "epochs": 1,
    }
    variants = [
        base,
        {**base, "model": {"name": "mlp", "width": 512}},
        {**base, "scheme": "sp", "sam": {"rho": 0.1, "scaling": "naive"}},
        {**base, "seed": 7},
    ]
    clean = prepare_data(parse_config({**base, "data": {**base["data"], "label_noise": 0.0}}))
    runs = [prepare_data(parse_config(v)) for v in variants]
    for r in runs:
        assert torch.equal(r.train.labels, runs[0].train.labels)
        assert torch.equal(r.test.labels, clean.test.labels)
    assert int((runs[0].train.labels != clean.train.labels).sum()) == 64
