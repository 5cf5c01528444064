"""The controls of issue 26 in ``mup2 train``: ``loss = "mse"`` for training and evaluation, and
the readout-only rule ``sam-readout`` (at the base width too, where shapes tell no roles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mup2.checkpoint import load_checkpoint, save_checkpoint
from mup2.config import TrainConfig, parse_config
from mup2.data import Loader
from mup2.train import CHECKPOINT, make_model, make_optimizer, prepare_data, train

SYNTH = {"name": "synthetic", "train_size": 512, "test_size": 256}


def _cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "model": {"name": "mlp", "width": 64, "base_width": 32},
        "data": SYNTH,
        "optimizer": {"name": "sgd", "lr": 0.1},
        "sam": {"rho": 0.05},
        "epochs": 2,
        "batch_size": 32,
        "progress": False,
    }
    return parse_config({**base, **kw})


def test_mse_trains_and_its_test_loss_is_the_mse_of_the_final_model(tmp_path: Path) -> None:
    """The metrics' test loss is 1/2 sum_c (f_c - onehot_c)^2, averaged over the test split,
    recomputed here by hand from the checkpointed model."""
    cfg = _cfg(loss="mse", label_smoothing=0.1, sam={"rho": 0.05, "rule": "sam-readout"})
    result = train(cfg, tmp_path / "run")
    assert result.status == "ok" and result.test_accuracy is not None
    assert result.test_accuracy > 0.5  # 10 classes
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT, ("model",))
    splits = prepare_data(cfg)
    model, _ = make_model(cfg, splits.input_shape, splits.num_classes)
    model.load_state_dict(state["model"])
    model.eval()
    total, n = 0.0, 0
    loader = Loader(splits.test, 100, mean=splits.mean, std=splits.std)
    with torch.no_grad():
        for x, y in loader.epoch():
            f = model(x).double()
            onehot = torch.nn.functional.one_hot(y, splits.num_classes).double()
            total += float(0.5 * ((f - onehot) ** 2).sum())
            n += len(y)
    assert result.test_loss == pytest.approx(total / n, rel=1e-5)
    ce = train(_cfg(sam={"rho": 0.05, "rule": "sam-readout"}))
    assert ce.test_loss != pytest.approx(result.test_loss, rel=0.1)  # another loss


@pytest.mark.parametrize("width", [32, 64])
@pytest.mark.parametrize("scheme", ["sp", "mup-sgd"])
def test_the_readout_rule_perturbs_the_readout_alone(width: int, scheme: str) -> None:
    """At the base width (32) and above it, ``sam-readout`` perturbs exactly the readout's
    weight and bias; at the base width the multipliers stay 1 and the groups of other rules
    stay as they were (every tensor scalar-like)."""
    cfg = _cfg(model={"name": "mlp", "width": width, "base_width": 32}, scheme=scheme)
    readout = cfg.model_copy(update={"sam": cfg.sam.model_copy(update={"rule": "sam-readout"})})
    model, p = make_model(readout, (1, 8, 8), 10)
    opt = make_optimizer(readout, model, p)
    names = {id(q): n for n, q in model.named_parameters()}
    last = max(n for n in names.values() if n.endswith(".weight")).rsplit(".", 1)[0]
    assert {names[id(q)] for q in opt.perturbation_plan().params} == {
        f"{last}.weight",
        f"{last}.bias",
    }
    _, plain = make_model(cfg, (1, 8, 8), 10)
    if width == 32:
        assert {t.shape.role.value for t in plain.tensors.values()} == {"scalar"}
        assert all(t.lr_mult == 1.0 for t in p.tensors.values())
    specs = [(t.init, t.init_mult, t.lr_mult) for t in p.tensors.values()]
    assert specs == [(t.init, t.init_mult, t.lr_mult) for t in plain.tensors.values()]


def test_a_checkpoint_from_before_the_loss_key_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    full = train(_cfg(epochs=2))
    train(_cfg(epochs=1), run)
    state = load_checkpoint(run / CHECKPOINT, ("config",))
    del state["config"]["loss"]
    save_checkpoint(state, run / CHECKPOINT)
    resumed = train(_cfg(epochs=2), run)
    assert [m.test_loss for m in resumed.metrics] == [m.test_loss for m in full.metrics]
