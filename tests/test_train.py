import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import mup2
from mup2.checkpoint import load_checkpoint, save_checkpoint
from mup2.cli import app
from mup2.config import ScheduleConfig, TrainConfig, parse_config
from mup2.data import synthetic_classification
from mup2.models import MLP
from mup2.train import (
    CHECKPOINT,
    METRICS,
    RESULT,
    EpochMetrics,
    ResumeError,
    RunResult,
    build_scheduler,
    train,
)

SYNTH = {"name": "synthetic", "train_size": 1024, "test_size": 512}


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


def _resnet(**kw: Any) -> TrainConfig:
    """BatchNorm, augmentation, Nesterov momentum, weight decay, SAM, warmup and a step."""
    return _cfg(
        model={"name": "resnet18", "width": 4, "base_width": 2},
        data={**SYNTH, "train_size": 96, "test_size": 32, "shape": [3, 8, 8]}
        | {"crop_padding": 1, "hflip": True},
        optimizer={"name": "sgd", "lr": 0.05, "nesterov": True, "weight_decay": 5e-4},
        sam={"rho": 0.1},
        schedule={"name": "step", "milestones": [1], "warmup_epochs": 0.5},
        batch_size=16,
        **kw,
    )


def _vit(**kw: Any) -> TrainConfig:
    """LayerNorm, attention with zero-initialized queries, AdamW, ASAM, label smoothing."""
    return _cfg(
        model={"name": "vit", "width": 16, "base_width": 8, "depth": 1, "d_head": 8}
        | {"patch_size": 4},
        data={**SYNTH, "train_size": 64, "test_size": 32, "shape": [1, 8, 8]},
        optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
        scheme="mup-adam",
        sam={"rho": 0.5, "rule": "asam"},
        label_smoothing=0.1,
        batch_size=16,
        **kw,
    )


def _strip(result: RunResult) -> list[dict[str, Any]]:
    return [{k: v for k, v in vars(m).items() if k != "seconds"} for m in result.metrics]


def _assert_same_state(a: Path, b: Path) -> None:
    sa = torch.load(a / CHECKPOINT, weights_only=True)
    sb = torch.load(b / CHECKPOINT, weights_only=True)
    assert sa["epoch"] == sb["epoch"]
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    base_a, base_b = sa["optimizer"]["base_optimizer"], sb["optimizer"]["base_optimizer"]
    assert base_a["state"].keys() == base_b["state"].keys() and base_a["state"]
    for i, st in base_a["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(base_b["state"][i][k])), k
    assert sa["scheduler"] == sb["scheduler"]


def test_two_epochs_on_synthetic_data_learn(tmp_path: Path) -> None:
    result = train(_cfg(), tmp_path / "run")
    assert result.status == "ok" and [m.epoch for m in result.metrics] == [1, 2]
    first, last = result.metrics
    assert last.train_loss < first.train_loss < math.log(10)  # below chance-level loss
    assert result.test_accuracy is not None and result.test_accuracy > 0.5  # chance: 0.1
    assert result.test_loss == last.test_loss and result.seconds > 0
    lines = [json.loads(x) for x in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert [x["event"] for x in lines] == ["epoch", "epoch"]
    assert lines[1]["test_accuracy"] == last.test_accuracy
    saved = json.loads((tmp_path / "run" / RESULT).read_text())
    assert saved["status"] == "ok" and saved["test_accuracy"] == last.test_accuracy
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == _cfg().to_dict()


def test_resume_after_interrupt_is_bitwise_identical(tmp_path: Path) -> None:
    full = train(_resnet(), tmp_path / "full")

    class Interrupt(Exception):
        pass

    def stop(m: EpochMetrics) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        train(_resnet(), tmp_path / "cut", on_epoch=stop)
    assert torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)["epoch"] == 1
    seen: list[int] = []
    resumed = train(_resnet(), tmp_path / "cut", on_epoch=lambda m: seen.append(m.epoch))
    assert seen == [2]  # only the missing epoch ran
    assert _strip(resumed) == _strip(full) and resumed.status == "ok"
    _assert_same_state(tmp_path / "full", tmp_path / "cut")
    lines = (tmp_path / "cut" / METRICS).read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    again = train(_resnet(), tmp_path / "cut")  # finished: returns without training
    assert _strip(again) == _strip(full)


def test_resume_with_more_epochs_equals_a_longer_run(tmp_path: Path) -> None:
    full = train(_vit(), tmp_path / "full")
    short = train(_vit(epochs=1), tmp_path / "grow")
    assert _strip(short) == _strip(full)[:1]
    grown = train(_vit(), tmp_path / "grow")
    assert _strip(grown) == _strip(full)
    _assert_same_state(tmp_path / "full", tmp_path / "grow")


def test_resume_rejects_another_config(tmp_path: Path) -> None:
    train(_cfg(epochs=1, data={**SYNTH, "train_size": 64}), tmp_path / "run")
    other = _cfg(epochs=1, data={**SYNTH, "train_size": 64}, optimizer={"name": "sgd", "lr": 0.2})
    with pytest.raises(ResumeError, match=r"optimizer\.lr"):
        train(other, tmp_path / "run")
    cosine = {"schedule": {"name": "cosine"}, "data": {**SYNTH, "train_size": 64}}
    train(_cfg(epochs=1, **cosine), tmp_path / "cos")
    with pytest.raises(ResumeError, match="cosine schedule"):
        train(_cfg(epochs=2, **cosine), tmp_path / "cos")


def test_divergence_stops_the_run_and_keeps_finite_metrics(tmp_path: Path) -> None:
    cfg = _cfg(optimizer={"name": "sgd", "lr": 1e6}, sam={"rho": 0.0})
    blown = train(cfg, tmp_path / "blown")
    assert blown.status == "unstable" and blown.metrics == []
    assert blown.test_accuracy is None and blown.diverged_at is not None
    assert blown.diverged_at[0] == 1
    lines = (tmp_path / "blown" / METRICS).read_text().splitlines()
    assert [json.loads(x)["event"] for x in lines] == ["diverged"]
    assert train(cfg, tmp_path / "blown") == blown  # resuming an unstable run trains nothing
    assert (tmp_path / "blown" / METRICS).read_text().splitlines() == lines

    # a run whose weights become non-finite after epoch 1: epoch 2 diverges at its first step
    run = tmp_path / "late"
    train(_cfg(epochs=1), run)
    state = load_checkpoint(run / CHECKPOINT)
    state["model"]["head.weight"][0, 0] = math.inf
    save_checkpoint(state, run / CHECKPOINT)  # a checkpoint that is sound, of a broken model
    late = train(_cfg(epochs=3), run)
    assert late.status == "unstable" and late.diverged_at == (2, 0)
    assert _strip(late) == [
        {k: v for k, v in x.items() if k != "seconds"} for x in state["metrics"]
    ]
    lines = [json.loads(x) for x in (run / METRICS).read_text().splitlines()]
    assert lines[-1] == {"event": "diverged", "epoch": 2, "step": 0} and len(lines) == 2
    assert json.loads((run / RESULT).read_text())["status"] == "unstable"
    assert torch.load(run / CHECKPOINT, weights_only=True)["status"] == "unstable"
    again = train(_cfg(epochs=3), run)  # an unstable run stays unstable: nothing is retrained
    assert again.status == "unstable" and _strip(again) == _strip(late)


def test_no_global_state_and_preloaded_data() -> None:
    cfg = _cfg(epochs=1, data={**SYNTH, "train_size": 128})
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = train(cfg)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    torch.manual_seed(456)  # and the run does not depend on it
    data = synthetic_classification(128, 512, seed=0)
    b = train(cfg, data=data)
    assert _strip(a) == _strip(b)


def test_scheduler_closed_forms() -> None:
    model, base = MLP(8, in_features=4), MLP(4, in_features=4)
    groups = mup2.Parametrization.infer(model, base).param_groups(model, lr=1.0)
    opt = mup2.SAM(groups, torch.optim.SGD, rho=0.0, lr=1.0)

    def lrs(cfg: ScheduleConfig, epochs: int, per_epoch: int) -> list[float]:
        for g in opt.param_groups:
            g["lr"] = 1.0
            g.pop("initial_lr", None)
        sched = build_scheduler(opt, cfg, epochs, per_epoch, 1.0)
        out = []
        for _ in range(epochs * per_epoch):
            out.append(opt.param_groups[0]["lr"])
            assert all(g["lr"] == out[-1] for g in opt.param_groups)  # base LR, not multiplied
            opt.step(lambda: torch.zeros(()))
            sched.step()
        return out

    cos = lrs(ScheduleConfig(name="cosine", warmup_epochs=1, warmup_start_factor=0.1), 3, 2)
    expect = [0.1, 0.55] + [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert cos == pytest.approx(expect)
    step = lrs(ScheduleConfig(name="step", milestones=[1, 2], gamma=0.5, warmup_epochs=0.5), 3, 4)
    warm = [0.01 + 0.99 * t / 2 for t in range(2)]
    assert step == pytest.approx(warm + [1.0] * 2 + [0.5] * 4 + [0.25] * 4)  # absolute epochs
    assert lrs(ScheduleConfig(), 2, 3) == [1.0] * 6
    assert {g["lr_mult"] for g in opt.param_groups} == {2.0, 1.0, 0.5}


def test_cli_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        'epochs = 1\nbatch_size = 32\nprogress = false\n[model]\nname = "mlp"\nwidth = 16\n'
        '[data]\nname = "synthetic"\ntrain_size = 64\ntest_size = 32\n'
        '[optimizer]\nname = "sgd"\nlr = 0.1\n'
    )
    runner = CliRunner()
    out = runner.invoke(app, ["train", str(cfg)])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    assert summary["status"] == "ok" and summary["run_dir"] == str(Path("runs") / "tiny")
    assert (tmp_path / "runs" / "tiny" / RESULT).is_file()
    cfg.write_text(cfg.read_text().replace("lr = 0.1", "lr = 0.1\nmomentun = 0.9"))
    bad = runner.invoke(app, ["train", str(cfg), "--run-dir", str(tmp_path / "x")])
    assert bad.exit_code == 2
    assert "optimizer.momentun: unknown key; did you mean 'momentum'?" in bad.output
    missing = runner.invoke(app, ["train", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "none.toml" in missing.output


@pytest.mark.parametrize(
    ("optimizer", "scheme", "rho"),
    [  # the elementwise ascents move every coordinate by about rho: small radii
        ({"name": "adamw", "lr": 3e-3}, "mup-adam", 1e-3),
        ({"name": "adagrad", "lr": 0.1}, "mup-adam", 1e-3),
        ({"name": "adagrad-norm", "lr": 0.5}, "mup-sgd", 0.05),
    ],
)
def test_lightsam_from_a_config_learns(optimizer: dict[str, Any], scheme: str, rho: float) -> None:
    cfg = _cfg(optimizer=optimizer, scheme=scheme, sam={"rule": "lightsam", "rho": rho})
    result = train(cfg)
    assert result.status == "ok"
    assert result.test_accuracy is not None and result.test_accuracy > 0.5  # 10 classes
    opt = mup2.train.make_optimizer(cfg, *mup2.train.make_model(cfg, (1, 8, 8), 10))
    assert isinstance(opt, mup2.LightSAM) and opt.rule.startswith("lightsam-")


def test_lightsam_config_errors() -> None:
    with pytest.raises(mup2.config.ConfigError, match=r"sam\.rule: 'lightsam' needs an adaptive"):
        _cfg(sam={"rule": "lightsam", "rho": 0.05})
    with pytest.raises(mup2.config.ConfigError, match="scheme: 'mup-adam' has the wrong LR"):
        _cfg(optimizer={"name": "adagrad-norm", "lr": 0.1}, scheme="mup-adam")
