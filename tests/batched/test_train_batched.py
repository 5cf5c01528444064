"""Batched training equals K separate `train()` runs: weights and losses to float64 rounding for
every scaling, rule and parametrization; divergence isolated; clear errors for what it cannot
batch."""

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from mup2.batched import (
    BatchedRun,
    BatchError,
    auto_bundle_size,
    bundle_key,
    check_batchable,
    schedule_factors,
    train_batched,
)
from mup2.checkpoint import load_checkpoint
from mup2.config import TrainConfig, parse_config
from mup2.train import CHECKPOINT, RunResult, train

BASE: dict[str, Any] = {
    "model": {"name": "mlp", "width": 24, "base_width": 12},
    "data": {"name": "synthetic", "train_size": 128, "test_size": 96, "label_noise": 0.2},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
    "schedule": {"name": "cosine"},
    "epochs": 3,  # 8 steps per epoch: 24 steps
    "batch_size": 16,
    "eval_batch_size": 40,
    "progress": False,
    "device": "cpu",
}

#: (scheme, scaling, rho, lr, seed): the parametrizations of a sweep, with rho = 0 among them.
POINTS = [
    ("sp", "naive", 0.0, 0.1, 0),
    ("sp", "naive", 0.1, 0.05, 1),
    ("mup-sgd", "naive", 0.1, 0.05, 1),
    ("mup-sgd", "global", 0.2, 0.1, 2),
    ("mup-sgd", "mup2", 0.1, 0.2, 3),
    ("sp", "mup2", 0.05, 0.05, 0),
]


def _cfg(scheme: str, scaling: str, rho: float, lr: float, seed: int, **kw: Any) -> TrainConfig:
    d = {**BASE, **kw}
    opt = {**d["optimizer"], "lr": lr}
    sam = {"rho": rho, "scaling": scaling, **d.pop("sam", {})}
    return parse_config({**d, "scheme": scheme, "seed": seed, "optimizer": opt, "sam": sam})


def _separate(cfgs: list[TrainConfig], tmp: Path) -> list[tuple[RunResult, dict[str, Any]]]:
    out = []
    for i, c in enumerate(cfgs):
        result = train(c, tmp / str(i))
        out.append((result, load_checkpoint(tmp / str(i) / CHECKPOINT)["model"]))
    return out


def _assert_same(cfgs: list[TrainConfig], tmp: Path, tol: float = 1e-10) -> None:
    separate = _separate(cfgs, tmp)
    run = BatchedRun(cfgs)
    batched = run.run(None)
    for (a, weights), b, mine in zip(separate, batched, run.state_dicts(), strict=True):
        assert a.status == b.status and a.diverged_at == b.diverged_at
        assert len(a.metrics) == len(b.metrics)
        assert len(a.metrics) == cfgs[0].epochs or a.status == "unstable"
        for x, y in zip(a.metrics, b.metrics, strict=True):
            assert x.epoch == y.epoch
            for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
                assert abs(getattr(x, key) - getattr(y, key)) <= tol, key
        if a.status == "unstable":  # frozen at zero; train() kept its last finite epoch
            assert all(not w.any() for w in mine.values())
            continue
        diff = max(float((weights[n] - mine[n]).abs().max()) for n in weights)
        assert diff <= tol


@pytest.mark.parametrize(
    ("rule", "extra"),
    [
        ("sam", {}),
        ("asam", {"eta": 0.05}),
        ("asam-layerwise", {}),
    ],
)
def test_equals_separate_runs_float64(
    float64: None, tmp_path: Path, rule: str, extra: dict[str, Any]
) -> None:
    cfgs = [_cfg(*p, sam={"rule": rule, **extra}) for p in POINTS]
    _assert_same(cfgs, tmp_path)


def test_sam_on_with_layer_norm_and_step_schedule_float64(float64: None, tmp_path: Path) -> None:
    kw = {
        "model": {"name": "mlp", "width": 24, "base_width": 12, "norm": "layer"},
        "schedule": {"name": "step", "milestones": [1, 2], "gamma": 0.5, "warmup_epochs": 0.5},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
        "label_smoothing": 0.1,
    }
    cfgs = [_cfg(*p, sam={"rule": "sam-on"}, **kw) for p in POINTS[2:]]
    _assert_same(cfgs, tmp_path)


def test_divergence_is_isolated_float64(float64: None, tmp_path: Path) -> None:
    """A configuration whose loss turns non-finite is recorded unstable at the step `train`
    records; the others are bit-for-bit unaffected (equal to their separate runs)."""
    cfgs = [_cfg(*p) for p in POINTS[:3]]
    cfgs.insert(1, _cfg("sp", "naive", 0.1, 1e4, 5))  # diverges in the first epoch
    separate = _separate(cfgs, tmp_path)
    assert separate[1][0].status == "unstable"
    _assert_same(cfgs, tmp_path / "again")
    alone = BatchedRun([cfgs[0], cfgs[2], cfgs[3]])
    alone.run(None)
    together = BatchedRun(cfgs)
    together.run(None)
    for a, b in zip(alone.state_dicts(), [together.state_dicts()[i] for i in (0, 2, 3)]):
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_fp32_accuracies_agree(tmp_path: Path) -> None:
    cfgs = [_cfg(*p) for p in POINTS]
    separate = [train(c) for c in cfgs]
    batched = train_batched(cfgs)
    for a, b in zip(separate, batched, strict=True):
        assert a.test_accuracy is not None and b.test_accuracy is not None
        assert abs(a.test_accuracy - b.test_accuracy) <= 0.001


def test_bf16_runs_and_leaves_the_global_rng(tmp_path: Path) -> None:
    cfgs = [_cfg(*p, precision="bf16", epochs=1) for p in POINTS[:2]]
    state = torch.get_rng_state()
    results = train_batched(cfgs)
    assert torch.equal(state, torch.get_rng_state())
    for a, b in zip(results, [train(c) for c in cfgs], strict=True):
        assert a.status == b.status == "ok"
        assert a.test_accuracy is not None and b.test_accuracy is not None
        assert abs(a.test_accuracy - b.test_accuracy) <= 1 / 96  # one test image of 96


def test_schedule_factors_follow_the_torch_schedulers() -> None:
    cfg = _cfg(*POINTS[0], schedule={"name": "cosine", "min_lr_factor": 0.1})
    f = schedule_factors(cfg, 8)
    assert len(f) == 3 * 8 + 1
    assert f[0] == 1.0 and f[-1] == pytest.approx(0.1)
    assert all(b <= a for a, b in itertools.pairwise(f))


def test_bundle_key_ignores_exactly_the_grid_axes() -> None:
    a, b = _cfg(*POINTS[0]), _cfg(*POINTS[4])
    assert bundle_key(a) == bundle_key(b)
    assert bundle_key(a) != bundle_key(_cfg(*POINTS[0], epochs=2))
    assert bundle_key(a) != bundle_key(_cfg(*POINTS[0], sam={"rule": "asam"}))
    assert auto_bundle_size(a) >= 1
    assert auto_bundle_size(a, free_bytes=10**12) == 256
    assert auto_bundle_size(a, free_bytes=1) == 1


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"model": {"name": "mlp", "width": 48, "base_width": 12}}, "differs from config 0 in"),
        ({"model": {"name": "mlp", "width": 24, "norm": "batch"}}, "BatchNorm"),
        ({"optimizer": {"name": "adamw", "lr": 0.01}, "scheme": "mup-adam"}, "'sgd'"),
        ({"precision": "fp16"}, "fp16"),
        ({"data": {**BASE["data"], "hflip": True}}, "augmentation"),
    ],
)
def test_what_it_cannot_batch_is_refused(kw: dict[str, Any], message: str) -> None:
    other = parse_config({**_cfg(*POINTS[1]).to_dict(), **kw})
    cfgs = [other, other] if "differs" not in message else [_cfg(*POINTS[1]), other]
    with pytest.raises(BatchError, match=message):
        check_batchable(cfgs)
    with pytest.raises(BatchError, match="at least one"):
        check_batchable([])


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_vit_equals_separate_runs_float64(float64: None, tmp_path: Path) -> None:
    """Any architecture without BatchNorm or dropout stacks: a small ViT (attention, LayerNorm,
    forward multipliers) under vmap gives the separate runs' weights."""
    kw = {
        "model": {"name": "vit", "width": 16, "base_width": 8, "depth": 2, "d_head": 8},
        "data": {**BASE["data"], "shape": [3, 8, 8]},
        "epochs": 2,
    }
    cfgs = [_cfg(*p, **kw) for p in (POINTS[1], POINTS[2], POINTS[4])]
    _assert_same(cfgs, tmp_path)


@pytest.mark.parametrize("width", [12, 24])  # at the base width, and above it
def test_readout_control_and_mse_float64(float64: None, tmp_path: Path, width: int) -> None:
    """The readout-only rule shares a bundle with all-layer SAM (one factor) and perturbs the
    readout alone in its rows, also at the base width, where its roles come from another width;
    the MSE loss is the one `train` uses."""
    kw = {"model": {"name": "mlp", "width": width, "base_width": 12}, "loss": "mse"}
    cfgs = [
        _cfg("sp", "naive", 0.1, 0.05, 0, sam={"rule": "sam-readout"}, **kw),
        _cfg("sp", "naive", 0.1, 0.05, 0, **kw),
        _cfg("mup-sgd", "mup2", 0.2, 0.1, 1, sam={"rule": "sam-readout"}, **kw),
        _cfg("mup-sgd", "mup2", 0.2, 0.1, 1, **kw),
    ]
    _assert_same(cfgs, tmp_path)
    table = BatchedRun(cfgs).model.perturb
    readout = [i for i, j in enumerate(table.index) if j >= len(table.index) - 2]
    assert bool((table.rho2c[[0, 2]][:, readout] > 0).all())
    others = [i for i in range(len(table.index)) if i not in readout]
    assert not bool(table.rho2c[[0, 2]][:, others].any())
    assert bool((table.rho2c[[1, 3]] > 0).all())
