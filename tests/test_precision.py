"""Mixed precision: autocast contexts, the fp16 scaler path of SAM, and `precision` in runs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import mup2
from mup2.config import ConfigError, parse_config
from mup2.precision import autocast, grad_scaler
from mup2.train import train


def _model_and_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )
    return model, torch.randn(32, 16), torch.randint(0, 4, (32,))


def _sam_step(
    opt: mup2.SAM,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        with autocast(precision, "cpu"):
            loss = nn.functional.cross_entropy(model(x), y)
        (loss if scaler is None else scaler.scale(loss)).backward()
        return loss

    loss = opt.step(closure, scaler=scaler)
    assert loss is not None
    if scaler is not None:
        scaler.update()
    return loss


@pytest.mark.parametrize("rule", ["sam", "asam", "lightsam"])
def test_bf16_sam_step_is_finite_and_keeps_fp32(rule: str) -> None:
    model, x, y = _model_and_batch()
    if rule == "lightsam":
        opt: mup2.SAM = mup2.LightSAM(model.parameters(), "adam", lr=1e-3, rho=0.05)
    else:
        opt = mup2.SAM(model.parameters(), torch.optim.SGD, rho=0.05, rule=rule, lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        loss = _sam_step(opt, model, x, y, "bf16")
        assert loss.dtype == torch.float32 and math.isfinite(float(loss))
    for p, b in zip(model.parameters(), before):
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
        assert torch.isfinite(p).all() and not torch.equal(p, b)
    for st in opt.state.values():
        assert all(
            v.dtype in (torch.float32, torch.int64) for v in st.values() if torch.is_tensor(v)
        )


def test_fp16_scaler_step_equals_unscaled_step() -> None:
    """The scale cancels: an fp16-scaled SAM step equals the same step without a scaler (fp32
    forward so that only the scaling differs), for SAM and for LightSAM's scale-dependent ascent."""
    for make in (
        lambda ps: mup2.SAM(ps, torch.optim.SGD, rho=0.05, lr=0.1),
        lambda ps: mup2.LightSAM(ps, "adagrad-norm", lr=0.1, rho=0.05),
    ):
        model, x, y = _model_and_batch()
        ref, _, _ = _model_and_batch()
        opt, ref_opt = make(model.parameters()), make(ref.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for _ in range(3):
            _sam_step(opt, model, x, y, "fp32", scaler)
            _sam_step(ref_opt, ref, x, y, "fp32")
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_fp16_overflow_skips_the_step_and_restores_weights() -> None:
    model, x, y = _model_and_batch()
    opt = mup2.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = [p.detach().clone() for p in model.parameters()]
    bad = x.clone()
    bad[0, 0] = float("inf")
    _sam_step(opt, model, bad, y, "fp32", scaler)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    assert scaler.get_scale() < 2.0**10  # backed off
    _sam_step(opt, model, x, y, "fp32", scaler)  # and the next step trains
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_bad_precision_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast("fp8", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        grad_scaler("half", "cpu")
    with pytest.raises(ConfigError, match="precision"):
        parse_config(
            {
                "model": {"name": "mlp", "width": 32},
                "data": {"name": "synthetic"},
                "optimizer": {"name": "sgd", "lr": 0.1},
                "epochs": 1,
                "precision": "fp8",
            }
        )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_train_under_mixed_precision_matches_fp32(precision: str, tmp_path: Path) -> None:
    """A short μP² SAM run: mixed precision stays close to fp32 and keeps fp32 weights; fp16's
    scaler state is checkpointed and resumed."""
    cfg = {
        "model": {"name": "mlp", "width": 64, "base_width": 32},
        "data": {"name": "synthetic", "train_size": 512, "test_size": 256, "noise": 1.0},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "sam": {"rho": 0.1},
        "epochs": 2,
        "batch_size": 64,
        "progress": False,
    }
    ref = train(parse_config(cfg))
    mixed = train(parse_config({**cfg, "precision": precision}))
    assert mixed.status == "ok" and ref.test_accuracy is not None
    assert mixed.test_accuracy is not None
    assert abs(mixed.test_accuracy - ref.test_accuracy) < 0.05
    assert mixed.metrics[-1].train_loss == pytest.approx(ref.metrics[-1].train_loss, rel=0.05)
    # stopped after one epoch and resumed: bit for bit the uninterrupted run
    train(parse_config({**cfg, "precision": precision, "epochs": 1}), tmp_path)
    resumed = train(parse_config({**cfg, "precision": precision}), tmp_path)
    assert resumed.metrics == [
        dataclasses.replace(m, seconds=r.seconds) for m, r in zip(mixed.metrics, resumed.metrics)
    ]
