"""Optimizer families as data: one :class:`Family` per base optimizer mup2 trains with.

A family knows its class, whether it is SGD-like (the update scales like the gradient),
Adam-like (each coordinate normalized) or Muon (hidden matrices orthogonalized, AdamW elsewhere:
:class:`mup2.optim.MuonAdamW`), hence the μP scheme its param groups need, the LightSAM
variant with the same adaptive step size (Muon's: LightSAM's Adam ascent, the descent Muon's),
and the config keywords it takes beyond ``lr`` and ``weight_decay`` (which the param groups
carry).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mup2.optim.adagrad_norm import AdaGradNorm
from mup2.optim.muon import MuonAdamW
from mup2.optim.rules import Rule, get_rule

__all__ = ["FAMILIES", "Family", "Like", "adam_like", "family_of_variant", "get_family"]

Like = Literal["sgd", "adam", "muon"]


def _same(kw: Mapping[str, Any]) -> dict[str, Any]:
    return dict(kw)


def _adagrad(kw: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in kw.items() if k != "eps0"}
    if "eps0" in kw:  # LightSAM's convention: the accumulator starts at eps0**2, no eps
        out.update(initial_accumulator_value=kw["eps0"] ** 2, eps=0.0)
    return out


@dataclass(frozen=True)
class Family:
    """One base optimizer. ``keywords``: its config keywords besides ``lr``/``weight_decay``;
    ``lightsam``: the :class:`mup2.LightSAM` variant with its step size (``None``: none)."""

    name: str
    optimizer: type[torch.optim.Optimizer]
    like: Like
    keywords: tuple[str, ...]
    lightsam: str | None
    translate: Callable[[Mapping[str, Any]], dict[str, Any]] = _same

    @property
    def scheme(self) -> str:
        """The μP scheme whose LR multipliers fit this optimizer."""
        return f"mup-{self.like}"

    def kwargs(self, **config: Any) -> dict[str, Any]:
        """The optimizer's constructor keywords for config keywords (``lr``, ``eps0``, ...)."""
        return self.translate(config)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sgd", torch.optim.SGD, "sgd", ("momentum", "nesterov"), None),
        Family("adamw", torch.optim.AdamW, "adam", ("betas", "eps"), "adam"),
        Family("adagrad", torch.optim.Adagrad, "adam", ("eps0",), "adagrad", _adagrad),
        Family("adagrad-norm", AdaGradNorm, "sgd", ("eps0",), "adagrad-norm"),
        Family("muon", MuonAdamW, "muon", ("momentum", "nesterov", "betas", "eps"), "adam"),
    )
}


def get_family(name: str) -> Family:
    """Look a family up by its config name (``sgd``, ``adamw``, ``adagrad``, ``adagrad-norm``,
    ``muon``)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {list(FAMILIES)}")
    return FAMILIES[name]


def family_of_variant(variant: str) -> Family:
    """The family whose adaptive step size a LightSAM variant uses in both passes."""
    for f in FAMILIES.values():
        if f.lightsam == variant:
            return f
    variants = list(dict.fromkeys(f.lightsam for f in FAMILIES.values() if f.lightsam))
    raise ValueError(f"variant must be one of {variants}, not {variant!r}")


def adam_like(rule: str | Rule) -> bool:
    """Whether a rule's ascent normalizes each coordinate (LightSAM's AdaGrad and Adam): it
    then wants ``mup-adam`` groups and an Adam-sized learning rate."""
    variant = get_rule(rule).lightsam
    return variant is not None and family_of_variant(variant).like == "adam"
