"""Cheap SAM in `mup2 train` configs and sweeps: late-phase SAM, SAM every k steps, LookSAM."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

import mup2
from mup2.batched import BatchError, check_batchable
from mup2.checkpoint import load_checkpoint, save_checkpoint
from mup2.config import ConfigError, TrainConfig, parse_config
from mup2.optim import LatePhase
from mup2.sweep import expand, parse_sweep_config, run_sweep
from mup2.train import CHECKPOINT, EpochMetrics, ResumeError, RunResult, train

SYNTH = {"name": "synthetic", "train_size": 256, "test_size": 128}


def _cfg(sam: dict[str, Any], **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "model": {"name": "mlp", "width": 32, "base_width": 16},
        "data": SYNTH,
        "optimizer": {"name": "sgd", "lr": 0.1},
        "sam": {"rho": 0.1, **sam},
        "epochs": 2,
        "batch_size": 32,
        "progress": False,
    }
    return parse_config(base | kw)


def _strip(result: RunResult) -> list[dict[str, Any]]:
    return [{k: v for k, v in vars(m).items() if k != "seconds"} for m in result.metrics]


@pytest.mark.parametrize("rule", ["sam", "asam", "msam", "rwp"])
def test_late_phase_runs_the_base_optimizer_first(rule: str) -> None:
    """late:0.5 over two epochs: the first epoch is exactly the rho = 0 run's, the second not
    (for SAM rules and the one-pass ones alike)."""
    late = _strip(train(_cfg({"schedule": "late:0.5", "rule": rule, "rho": 0.1})))
    plain = _strip(train(_cfg({"rho": 0.0})))
    assert late[0] == plain[0] and late[1] != plain[1]


def test_every_k_and_looksam_optimizers_from_a_config() -> None:
    cfg = _cfg({"every": 3, "between": "looksam", "alpha": 0.5, "layerwise": True})
    opt = mup2.train.make_optimizer(cfg, *mup2.train.make_model(cfg, (1, 8, 8), 10))
    assert (opt.every, opt.between, opt.alpha, opt.layerwise) == (3, "looksam", 0.5, True)
    result = train(cfg)
    first, last = result.metrics
    assert result.status == "ok" and last.train_loss < first.train_loss


def test_lightsam_adamw_every_k_and_late_from_a_config() -> None:
    cfg = _cfg(
        {"rule": "lightsam", "rho": 1e-3, "every": 2, "schedule": "late:0.5"},
        optimizer={"name": "adamw", "lr": 3e-3},
        scheme="mup-adam",
    )
    opt = mup2.train.make_optimizer(cfg, *mup2.train.make_model(cfg, (1, 8, 8), 10))
    assert isinstance(opt, mup2.LightSAM) and opt.every == 2
    assert train(cfg).status == "ok"


@pytest.mark.parametrize(
    "sam",
    [
        {"schedule": "late:0.5", "every": 3, "between": "looksam"},
        {"schedule": "late:0.75", "every": 2},
    ],
)
def test_resume_mid_cycle_is_bitwise_identical(sam: dict[str, Any], tmp_path: Path) -> None:
    """8 steps per epoch, cycles of 3: the checkpoint after epoch 1 is mid-cycle (and, for
    late:0.75, inside the SAM phase); the resumed run equals the uninterrupted one."""
    cfg = _cfg(sam)
    full = train(cfg, tmp_path / "full")

    class Interrupt(Exception):
        pass

    def stop(m: EpochMetrics) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", on_epoch=stop)
    state = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert state["rho_scheduler"]["last_step"] == 8
    resumed = train(cfg, tmp_path / "cut")
    assert _strip(resumed) == _strip(full)
    a = torch.load(tmp_path / "full" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert a["optimizer"]["sam_step"] == b["optimizer"]["sam_step"] > 0
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_resume_refuses_other_epochs_under_a_late_schedule(tmp_path: Path) -> None:
    train(_cfg({"schedule": "late:0.5"}, epochs=1), tmp_path / "run")
    with pytest.raises(ResumeError, match=r"the ρ schedule .late:0\.5. of the checkpoint"):
        train(_cfg({"schedule": "late:0.5"}, epochs=2), tmp_path / "run")


def test_checkpoints_from_before_the_cheap_keys_resume(tmp_path: Path) -> None:
    cfg = _cfg({}, epochs=2)

    def stop(m: EpochMetrics) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", on_epoch=stop)
    path = tmp_path / "run" / CHECKPOINT
    state = load_checkpoint(path, ())
    for key in ("schedule", "every", "between", "alpha", "layerwise"):
        del state["config"]["sam"][key]
    del state["rho_scheduler"], state["optimizer"]["sam_step"]
    save_checkpoint(state, path)
    assert train(cfg, tmp_path / "run").status == "ok"


def test_late_phase_total_steps_come_from_the_run() -> None:
    cfg = _cfg({"schedule": "late:0.25"}, epochs=3)
    run = mup2.train._Run(cfg, mup2.train.prepare_data(cfg), torch.device("cpu"), None, None)
    sched = run.rho_sched
    assert isinstance(sched, LatePhase)
    assert (sched.total_steps, sched.start) == (24, 18)  # 3 epochs of 8 batches
    assert all(g["rho"] == 0.0 for g in run.opt.param_groups)


@pytest.mark.parametrize(
    ("sam", "message"),
    [
        ({"schedule": "late"}, "sam.schedule: 'late' is not a ρ schedule"),
        ({"schedule": "late:0"}, "sam.schedule: 'late:0' is not a ρ schedule"),
        ({"schedule": "cosine"}, "sam.schedule: 'cosine' is not a ρ schedule"),
        ({"every": 0}, "sam.every: Input should be greater than 0"),
        ({"between": "lookahead"}, "sam.between: Input should be 'sgd' or 'looksam'"),
        ({"between": "looksam"}, "sam.between: 'looksam' reuses a SAM step's gradient"),
        ({"alpha": 0.5}, "sam.alpha: LookSAM's, set only with sam.between = 'looksam'"),
        ({"layerwise": True, "every": 2}, "sam.layerwise: LookSAM's, set only with"),
        ({"alpha": -1.0, "every": 2, "between": "looksam"}, "sam.alpha: Input should be greater"),
    ],
)
def test_config_errors(sam: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _cfg(sam)


def test_looksam_refuses_fp16() -> None:
    with pytest.raises(ConfigError, match=r"sam\.between: LookSAM keeps a gradient across steps"):
        _cfg({"every": 2, "between": "looksam"}, precision="fp16")


def test_config_round_trip() -> None:
    cfg = _cfg({"schedule": "late:0.2", "every": 4, "between": "looksam", "alpha": 1.0})
    assert parse_config(cfg.to_dict()) == cfg
    assert cfg.sam.late_fraction == 0.2


@pytest.mark.parametrize(
    "sam", [{"schedule": "late:0.5"}, {"every": 2}, {"every": 2, "between": "looksam"}]
)
def test_batched_training_refuses_cheap_sam(sam: dict[str, Any]) -> None:
    with pytest.raises(BatchError, match="batched training runs SAM on every step"):
        check_batchable([_cfg(sam, epochs=1)])


@pytest.mark.slow
def test_a_sweep_with_cheap_sam_keys_runs(tmp_path: Path) -> None:
    train_cfg = {
        "epochs": 2,
        "batch_size": 64,
        "progress": False,
        "model": {"name": "mlp", "width": 16, "base_width": 16},
        "data": {"name": "synthetic", "train_size": 128, "test_size": 64},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "sam": {"schedule": "late:0.5", "every": 2, "between": "looksam"},
    }
    grid = {"widths": [16], "lr": [0.1], "rho": [0.0, 0.05], "parametrizations": ["mup2"]}
    cfg = parse_sweep_config({"name": "cheap", "train": train_cfg, "grid": grid})
    _, state = run_sweep(cfg, tmp_path, progress=False)
    assert state.done and state.complete == len(expand(cfg)) == 2
