"""``mup2.optim.families``: the base optimizers as data, and the config and sweep code that ask
the registry (``mup2.config.TrainConfig``, ``mup2.sweep.grid.scheme_of``)."""

from __future__ import annotations

import math
import typing
from typing import Any

import pytest
import torch

from mup2.config import ConfigError, OptimizerConfig, parse_config
from mup2.optim.adagrad_norm import AdaGradNorm
from mup2.optim.families import FAMILIES, Family, adam_like, family_of_variant, get_family
from mup2.optim.muon import MuonAdamW
from mup2.optim.rules import LIGHTSAM_RULES, RULES, get_rule
from mup2.sweep.config import PARAMETRIZATIONS, parse_sweep_config
from mup2.sweep.grid import GridPoint, scheme_of, trial_config

# name -> (class, like, scheme, LightSAM variant), written out
EXPECTED: dict[str, tuple[type[torch.optim.Optimizer], str, str, str | None]] = {
    "sgd": (torch.optim.SGD, "sgd", "mup-sgd", None),
    "adamw": (torch.optim.AdamW, "adam", "mup-adam", "adam"),
    "adagrad": (torch.optim.Adagrad, "adam", "mup-adam", "adagrad"),
    "adagrad-norm": (AdaGradNorm, "sgd", "mup-sgd", "adagrad-norm"),
    "muon": (MuonAdamW, "muon", "mup-muon", "adam"),
}


def test_registry() -> None:
    assert list(FAMILIES) == list(EXPECTED)
    for name, (cls, like, scheme, variant) in EXPECTED.items():
        f = get_family(name)
        assert f is FAMILIES[name] and isinstance(f, Family) and f.name == name
        assert (f.optimizer, f.like, f.scheme, f.lightsam) == (cls, like, scheme, variant)
    assert get_family("sgd").keywords == ("momentum", "nesterov")
    assert get_family("adamw").keywords == ("betas", "eps")
    assert get_family("adagrad").keywords == ("eps0",)
    assert get_family("adagrad-norm").keywords == ("eps0",)
    assert get_family("muon").keywords == ("momentum", "nesterov", "betas", "eps")


def test_unknown_family_lists_the_choices() -> None:
    with pytest.raises(ValueError) as err:
        get_family("lion")
    assert str(err.value) == (
        "unknown optimizer 'lion'; choose one of ['sgd', 'adamw', 'adagrad', 'adagrad-norm', "
        "'muon']"
    )


def test_kwargs_pass_through_except_adagrad_eps0() -> None:
    kw: dict[str, Any] = {"lr": 0.1, "weight_decay": 0.0, "momentum": 0.9}
    assert get_family("sgd").kwargs(**kw) == kw
    assert get_family("adagrad-norm").kwargs(lr=0.1, eps0=1e-3) == {"lr": 0.1, "eps0": 1e-3}
    assert get_family("adamw").kwargs(lr=1e-3, betas=(0.9, 0.99)) == {
        "lr": 1e-3,
        "betas": (0.9, 0.99),
    }
    adagrad = get_family("adagrad")
    assert adagrad.kwargs(lr=0.1, eps0=1e-3, weight_decay=0.01) == {
        "lr": 0.1,
        "weight_decay": 0.01,
        "initial_accumulator_value": 1e-3**2,
        "eps": 0.0,
    }
    assert adagrad.kwargs(lr=0.1) == {"lr": 0.1}  # no eps0: torch's own defaults


def test_adagrad_kwargs_start_the_accumulator_at_eps0_squared() -> None:
    """One step of the translated torch.optim.Adagrad: w - lr g / sqrt(eps0**2 + g**2)."""
    eps0, lr = 0.5, 0.1
    gen = torch.Generator().manual_seed(0)
    w0, g = torch.randn(7, generator=gen).double(), torch.randn(7, generator=gen).double()
    p = torch.nn.Parameter(w0.clone())
    opt = get_family("adagrad").optimizer([p], **get_family("adagrad").kwargs(lr=lr, eps0=eps0))
    p.grad = g.clone()
    opt.step()
    want = torch.tensor(
        [w - lr * gi / math.sqrt(eps0**2 + gi**2) for w, gi in zip(w0.tolist(), g.tolist())],
        dtype=torch.float64,
    )
    torch.testing.assert_close(p.detach(), want, rtol=1e-13, atol=0.0)


def test_every_family_builds_its_optimizer_from_its_kwargs() -> None:
    config: dict[str, dict[str, Any]] = {
        "sgd": {"momentum": 0.9, "nesterov": True},
        "adamw": {"betas": (0.9, 0.98), "eps": 1e-6},
        "adagrad": {"eps0": 1e-4},
        "adagrad-norm": {"eps0": 1e-4},
        "muon": {"momentum": 0.9, "nesterov": False, "betas": (0.9, 0.98), "eps": 1e-6},
    }
    for name, f in FAMILIES.items():
        assert set(config[name]) == set(f.keywords)
        opt = f.optimizer([torch.nn.Parameter(torch.ones(2))], **f.kwargs(lr=0.01, **config[name]))
        assert type(opt) is f.optimizer and opt.param_groups[0]["lr"] == 0.01


def test_family_of_variant() -> None:
    assert family_of_variant("adam") is FAMILIES["adamw"]
    assert family_of_variant("adagrad") is FAMILIES["adagrad"]
    assert family_of_variant("adagrad-norm") is FAMILIES["adagrad-norm"]
    for name in ("sgd", "adamw", "lion"):
        with pytest.raises(ValueError) as err:
            family_of_variant(name)
        assert str(err.value) == (
            f"variant must be one of ['adam', 'adagrad', 'adagrad-norm'], not {name!r}"
        )


def test_family_of_the_variant_of_every_lightsam_rule() -> None:
    for rule in LIGHTSAM_RULES:
        variant = get_rule(rule).lightsam
        assert variant is not None and rule == f"lightsam-{variant}"
        assert family_of_variant(variant).lightsam == variant


@pytest.mark.parametrize("rule", [*RULES, *LIGHTSAM_RULES])
def test_adam_like(rule: str) -> None:
    want = {"lightsam-adagrad": True, "lightsam-adam": True}.get(rule, False)
    assert adam_like(rule) is want
    assert adam_like(get_rule(rule)) is want


def test_adam_like_of_an_unknown_rule() -> None:
    with pytest.raises(ValueError, match=r"^unknown SAM rule 'lamb'; choose one of \['sam', "):
        adam_like("lamb")


# -- the config and the sweep agree with the registry -----------------------------------------


def _config(optimizer: str, **top: Any) -> dict[str, Any]:
    return {
        "model": {"name": "mlp", "width": 32},
        "data": {"name": "synthetic"},
        "optimizer": {"name": optimizer, "lr": 0.1},
        "epochs": 2,
        **top,
    }


def test_optimizer_configs_are_the_families_with_their_keywords() -> None:
    (union, *_) = typing.get_args(OptimizerConfig)  # Annotated[A | B | ..., Field(...)]
    sections = typing.get_args(union)
    names = {typing.get_args(cls.model_fields["name"].annotation)[0]: cls for cls in sections}
    assert set(names) == set(FAMILIES)
    common = {"name", "lr", "weight_decay", "wd_policy"}
    for name, cls in names.items():
        assert set(cls.model_fields) - common == set(get_family(name).keywords), name


@pytest.mark.parametrize("optimizer", list(FAMILIES))
def test_train_config_takes_the_family_scheme(optimizer: str) -> None:
    want = get_family(optimizer).scheme
    assert parse_config(_config(optimizer, scheme=want)).scheme == want
    assert parse_config(_config(optimizer, scheme="sp")).scheme == "sp"
    other = "mup-adam" if want == "mup-sgd" else "mup-sgd"
    with pytest.raises(ConfigError) as err:
        parse_config(_config(optimizer, scheme=other))
    assert str(err.value) == (
        f"invalid config:\n  scheme: {other!r} has the wrong LR multipliers for optimizer "
        f"{optimizer!r}; use {want!r}"
    )


@pytest.mark.parametrize("optimizer", list(FAMILIES))
def test_train_config_lightsam_rule_is_the_family_variant(optimizer: str) -> None:
    f = get_family(optimizer)
    cfg = _config(optimizer, scheme=f.scheme, sam={"rule": "lightsam", "rho": 0.1})
    if f.lightsam is None:
        with pytest.raises(ConfigError) as err:
            parse_config(cfg)
        assert str(err.value) == (
            f"invalid config:\n  sam.rule: 'lightsam' needs an adaptive optimizer, not "
            f"{optimizer!r}: set optimizer.name to 'adamw', 'adagrad', 'adagrad-norm', 'muon'"
        )
        return
    parsed = parse_config(cfg)
    assert parsed.sam.sam_rule(optimizer) == f"lightsam-{f.lightsam}"
    assert adam_like(parsed.sam.sam_rule(optimizer)) is (f.like in ("adam", "muon"))


@pytest.mark.parametrize("optimizer", list(FAMILIES))
def test_sweep_scheme_of_agrees_with_the_registry(optimizer: str) -> None:
    scheme = get_family(optimizer).scheme
    cfg = parse_sweep_config(
        {
            "name": "families",
            "train": _config(optimizer, scheme=scheme),
            "grid": {"widths": [16, 32], "lr": [0.1], "rho": [0.0, 0.05]},
        }
    )
    for name, (kind, scaling, rule) in PARAMETRIZATIONS.items():
        want = "sp" if kind == "sp" else scheme
        assert scheme_of(cfg, name) == want
        # the trial's config validates with that scheme
        trial = trial_config(cfg, GridPoint(name, 32, 0.1, 0.05, 0))
        assert (trial.scheme, trial.sam.scaling, trial.sam.rule, trial.optimizer.name) == (
            want,
            scaling,
            rule or cfg.train.sam.rule,
            optimizer,
        )
