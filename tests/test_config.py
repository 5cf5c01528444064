import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from mup2.config import (
    ConfigError,
    MLPConfig,
    SyntheticData,
    TrainConfig,
    ViTConfig,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_mlp.toml"

BASE: dict[str, Any] = {
    "model": {"name": "mlp", "width": 32},
    "data": {"name": "synthetic"},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 2,
}

TOML = """
scheme = "mup-adam"
epochs = 3
[model]
name = "vit"
width = 64
d_head = 16
[data]
name = "cifar10"
root = "/data/cifar"
crop_padding = 4
hflip = true
[optimizer]
name = "adamw"
lr = 1e-3
betas = [0.9, 0.98]
weight_decay = 0.05
[sam]
rho = 0.1
rule = "asam"
[schedule]
name = "cosine"
warmup_epochs = 1
"""


def _with(change: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(BASE)
    for key, value in change.items():
        *path, last = key.split(".")
        node = cfg
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def test_toml_and_yaml_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(TOML)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(tomllib.loads(TOML)))
    a, b = load_config(tmp_path / "a.toml"), load_config(tmp_path / "a.yaml")
    assert a == b
    assert isinstance(a.model, ViTConfig) and a.model.d_head == 16 and a.base_width == 128
    assert a.optimizer.name == "adamw" and a.optimizer.betas == (0.9, 0.98)
    assert a.sam.rule == "asam" and a.sam.scaling == "mup2" and a.schedule.warmup_epochs == 1
    assert a.data.hflip and a.data.crop_padding == 4
    assert parse_config(a.to_dict()) == a  # a JSON round trip


def test_defaults_and_example() -> None:
    c = parse_config(BASE)
    assert isinstance(c.model, MLPConfig) and isinstance(c.data, SyntheticData)
    assert (c.scheme, c.sam.rho, c.schedule.name, c.batch_size, c.device) == (
        "mup-sgd",
        0.0,
        "constant",
        128,
        "auto",
    )
    assert c.base_width == 64  # MLP.BASE_WIDTH
    assert parse_config(_with({"model.base_width": 16})).base_width == 16
    example = load_config(EXAMPLE)
    assert example.model.width == 512 and example.sam.scaling == "mup2"


def test_vit_zero_init_follows_the_scheme() -> None:
    vit = {"model": {"name": "vit", "width": 64}}
    mup = parse_config({**BASE, **vit})
    sp = parse_config({**BASE, **vit, "scheme": "sp"})
    assert mup.model.kwargs(mup.scheme)["zero_init"] is True
    assert sp.model.kwargs(sp.scheme)["zero_init"] is False
    forced = parse_config(_with({"model": {"name": "vit", "width": 64, "zero_init": True}}))
    assert forced.model.kwargs("sp")["zero_init"] is True


def test_vit_pool() -> None:
    """``model.pool`` reaches the ViT; anything but cls or mean is refused, naming the key."""
    from mup2.models import build_model

    cfg = parse_config(_with({"model": {"name": "vit", "width": 32, "d_head": 16, "pool": "mean"}}))
    model = build_model(
        "vit", 32, input_shape=(1, 8, 8), num_classes=10, **cfg.model.kwargs(cfg.scheme)
    )
    names = {n for n, _ in model.named_parameters()}
    assert "cls_token" not in names and "pos_embed" in names
    with pytest.raises(ConfigError, match=r"model.pool: Input should be 'cls' or 'mean' \(got"):
        parse_config(_with({"model": {"name": "vit", "width": 32, "pool": "max"}}))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"learning_rate": 0.1}, "learning_rate: unknown key"),
        ({"model.depht": 3}, "model.depht: unknown key; did you mean 'depth'?"),
        ({"optimizer.betas": [0.9, 0.99]}, "optimizer.betas: unknown key"),  # SGD has no betas
        ({"sam.rh": 0.1}, "sam.rh: unknown key; did you mean 'rho'?"),
        ({"data.shape": [1, 8, 8], "data.name": "cifar10"}, "data.shape: unknown key"),
        ({"schedule.warmup": 1}, "schedule.warmup: unknown key"),
    ],
)
def test_unknown_keys_are_named(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match="invalid config") as err:
        parse_config(_with(change))
    assert key in str(err.value)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"model.width": 0}, "model.width: Input should be greater than 0"),
        ({"model.name": "vgg"}, "model.name: must be one of ['mlp', 'resmlp', 'resnet18', 'vit']"),
        ({"model.norm": "group"}, "model.norm: Input should be 'none', 'layer' or 'batch'"),
        ({"optimizer.lr": -1}, "optimizer.lr: Input should be greater than 0"),
        ({"optimizer.momentum": 1.5}, "optimizer.momentum: Input should be less than 1"),
        ({"optimizer.nesterov": True, "optimizer.momentum": 0}, "optimizer.nesterov:"),
        ({"sam.rho": -0.1}, "sam.rho: Input should be greater than or equal to 0"),
        ({"sam.rule": "gsam"}, "sam.rule: Input should be"),
        ({"sam.rule": "asam", "sam.scaling": "mup2-coupled"}, "sam.scaling:"),
        ({"sam.rule": "sam-on"}, "sam.rule: 'sam-on' perturbs only normalization layers"),
        ({"scheme": "mup-adam"}, "scheme: 'mup-adam' has the wrong LR multipliers"),
        ({"scheme": "ntk"}, "scheme: Input should be 'sp', 'mup-sgd', 'mup-adam' or 'mup-muon'"),
        ({"epochs": "many"}, "epochs: Input should be a valid integer"),
        ({"device": "gpu"}, "device: 'auto', 'cpu', 'cuda' or 'cuda:N', not 'gpu'"),
        ({"label_smoothing": 1.0}, "label_smoothing: Input should be less than 1"),
        ({"schedule.name": "step"}, "schedule.milestones: the step schedule needs"),
        ({"schedule.name": "step", "schedule.milestones": [1, 1]}, "schedule.milestones:"),
        ({"schedule.name": "step", "schedule.milestones": [2]}, "must be below epochs = 2"),
        ({"schedule.warmup_epochs": 2}, "schedule.warmup_epochs: 2.0 must be below epochs"),
        ({"data.shape": [1, 8]}, "data.shape: too few items"),
        ({"model": {"name": "vit", "width": 40}}, "model.width: 40 is not a multiple of d_head"),
        ({"optimizer.lr": float("inf")}, "optimizer.lr: Input should be a finite number"),
        ({"sam.rho": float("inf")}, "sam.rho: Input should be a finite number"),
        ({"optimizer.weight_decay": float("nan")}, "optimizer.weight_decay: Input should be a"),
        ({"data.noise": float("inf")}, "data.noise: Input should be a finite number"),
        ({"data.label_noise": 1.0}, "data.label_noise: Input should be less than 1"),
        ({"precision": "fp8"}, "precision: Input should be 'fp32', 'bf16' or 'fp16'"),
        ({"loss": "mae"}, "loss: Input should be 'cross-entropy' or 'mse'"),
        (
            {"sam.rule": "sam-readout", "sam.scaling": "mup2-coupled"},
            "sam.scaling: scaling 'mup2-coupled' is defined only for rules 'sam' and 'sam-on'",
        ),
    ],
)
def test_bad_values_are_named(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_with(change))
    assert key in str(err.value)


def test_missing_keys_and_files(tmp_path: Path) -> None:
    cfg = copy.deepcopy(BASE)
    del cfg["optimizer"]["lr"], cfg["epochs"]
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert "optimizer.lr: required key is missing" in str(err.value)
    assert "epochs: required key is missing" in str(err.value)
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    with pytest.raises(ConfigError, match=r"bad\.toml: cannot parse"):
        load_config(bad)
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"\.toml, \.yaml or \.yml"):
        load_config(tmp_path / "c.json")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_config_is_frozen() -> None:
    c = parse_config(BASE)
    with pytest.raises(Exception, match="frozen"):
        c.epochs = 3  # type: ignore[misc]
    assert isinstance(c, TrainConfig)


@pytest.mark.parametrize("scaling", ["naive", "global", "mup2"])
@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
def test_the_controls_of_issue_26_validate(scaling: str, loss: str) -> None:
    """``sam.rule = "sam-readout"`` under naive, global and μP² scaling, and ``loss``, which
    defaults to cross-entropy and round-trips."""
    cfg = parse_config(_with({"sam.rule": "sam-readout", "sam.scaling": scaling, "loss": loss}))
    assert (cfg.sam.rule, cfg.sam.sam_rule("sgd"), cfg.loss) == ("sam-readout",) * 2 + (loss,)
    assert parse_config(cfg.to_dict()) == cfg
    assert parse_config(BASE).loss == "cross-entropy"
