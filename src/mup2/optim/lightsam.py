"""LightSAM (Cheng et al. 2025): adaptive step sizes in both the ascent and the descent.

With ``s = ∇L(w)`` and ``g = ∇L(w + eps)`` (``docs/math.md`` §6)::

    adagrad-norm  u += sum_V k_V ||s_V||^2 (from eps0^2)  eps_W = rho c_W s_W / sqrt(u)
    adagrad       u_W += s_W^2 (from eps0^2)              eps_W = rho c_W s_W / sqrt(u_W)
    adam          u_W = b2 u_W + (1-b2) s_W^2             eps_W = rho c_W m_W / (sqrt(u_W/bc2)+eps)

then the descent is :class:`mup2.AdaGradNorm`, ``torch.optim.Adagrad`` (accumulator from
``eps0^2``, no ``eps``) or ``torch.optim.AdamW`` on ``g``. ``c``/``k`` are the width factors of
the rule (:mod:`mup2.optim.rules`, 1 at base width). Where the paper is silent, the Adam ascent
follows Adam's conventions (bias correction on, ``u`` from 0, ``eps`` outside the root)
and uses the current gradient ``m = s``; both are options (``bias_correction``,
``ascent_beta1 > 0`` for an Adam first moment ``m = b1 m + (1-b1) s`` divided by ``bc1``).
The accumulators are optimizer state: they are checkpointed and resume bit for bit.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn
from torch.optim.optimizer import ParamsT

from mup2.errors import check_number, shown
from mup2.optim.families import family_of_variant
from mup2.optim.perturb import norms
from mup2.optim.rules import LIGHTSAM_RULES, Rule
from mup2.optim.sam import SAM, Between, Plan, Restore
from mup2.optim.shards import local

__all__ = ["LightSAM", "Variant", "descent_optimizer"]

Variant = Literal["adagrad-norm", "adagrad", "adam"]


def descent_optimizer(
    variant: Variant,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    eps0: float = 1e-8,
    weight_decay: float = 0.0,
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The base optimizer class and its keywords for a variant's adaptive descent:
    :class:`mup2.AdaGradNorm`, ``torch.optim.Adagrad`` (accumulator from ``eps0**2``, no
    ``eps``) or ``torch.optim.AdamW``."""
    family = family_of_variant(variant)
    given = {"betas": betas, "eps": eps, "eps0": eps0}
    kw = {k: given[k] for k in family.keywords}
    return family.optimizer, family.kwargs(lr=lr, weight_decay=weight_decay, **kw)


class LightSAM(SAM):
    """SAM with AdaGrad-Norm, AdaGrad or Adam step sizes in ascent and descent.

    Same API, checkpoints and helpers as :class:`mup2.SAM` (``step(closure)``, ``first_step`` /
    ``second_step``, ``model=`` for DDP and BatchNorm, ``every``/``between``/``alpha``/
    ``layerwise`` for SAM on every k-th step). Use μP groups of the matching base optimizer:
    ``mup-sgd`` for ``adagrad-norm`` (SGD-like), ``mup-adam`` for ``adagrad``/``adam``.
    Every group runs the variant's rule (``lightsam-<variant>``); groups may set their own
    ``rho`` and ``scaling``.

    ``base_optimizer``: another descent than the variant's, e.g. :class:`mup2.optim.MuonAdamW`
    with the Adam ascent (its own keywords in ``base_kwargs``; ``lr``, ``weight_decay`` and,
    where it takes them, ``betas`` and ``eps`` are passed on). ``None``: the variant's descent.
    """

    RULES: ClassVar[tuple[str, ...]] = LIGHTSAM_RULES

    def __init__(
        self,
        params: ParamsT,
        variant: Variant = "adam",
        *,
        lr: float = 1e-3,
        rho: float = 0.05,
        scaling: str = "mup2",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        eps0: float = 1e-8,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        ascent_beta1: float = 0.0,
        restore: Restore = "copy",
        model: nn.Module | None = None,
        sync_perturbation: bool = False,
        every: int = 1,
        between: Between = "sgd",
        alpha: float = 0.7,
        layerwise: bool = False,
        base_optimizer: type[torch.optim.Optimizer] | None = None,
        **base_kwargs: Any,
    ) -> None:
        if not isinstance(variant, str):
            raise TypeError(
                f"variant must be one of {list(get_args(Variant))}, got {shown(variant)}; "
                "LightSAM builds its descent optimizer from the variant (mup2.SAM takes an "
                "optimizer class)"
            )
        numbers = {"lr": lr, "rho": rho, "betas": betas, "eps": eps, "eps0": eps0}
        numbers |= {"weight_decay": weight_decay, "ascent_beta1": ascent_beta1}
        for name, value in numbers.items():
            check_number(name, value)
        base, kw = descent_optimizer(
            variant, lr=lr, betas=betas, eps=eps, eps0=eps0, weight_decay=weight_decay
        )
        if base_optimizer is not None:
            base = base_optimizer
            kw = {"lr": lr, "weight_decay": weight_decay, **base_kwargs}
            takes = inspect.signature(base_optimizer).parameters
            kw |= {k: v for k, v in (("betas", betas), ("eps", eps)) if k in takes}
        elif base_kwargs:
            raise TypeError(
                f"LightSAM got unexpected keywords {sorted(base_kwargs)}; keywords of another "
                "descent go with base_optimizer=<its class>"
            )
        if not 0.0 <= ascent_beta1 < 1.0:
            raise ValueError(f"ascent_beta1 must be in [0, 1), got {ascent_beta1}")
        self.variant, self.eps0 = variant, eps0
        self._rule = f"lightsam-{variant}"
        self.beta2, self.ascent_eps = betas[1], eps
        self.bias_correction, self.ascent_beta1 = bias_correction, ascent_beta1
        super().__init__(
            params,
            base,
            rho=rho,
            rule=f"lightsam-{variant}",
            scaling=scaling,
            restore=restore,
            model=model,
            sync_perturbation=sync_perturbation,
            every=every,
            between=between,
            alpha=alpha,
            layerwise=layerwise,
            **kw,
        )

    def _state(self, p: Tensor, key: str, init: float, scalar: bool = False) -> Tensor:
        """``self.state[p][key]``, created if missing: a scalar, or a tensor like ``p`` (under
        FSDP sharded like it; the local shard is returned)."""
        state = self.state[p]
        if key not in state:
            dtype = torch.promote_types(p.dtype, torch.float32)
            if scalar:
                state[key] = torch.full((), init, device=local(p).device, dtype=dtype)
            else:
                state[key] = torch.full_like(p, init, dtype=dtype)
        return local(state[key])

    def init_state(self) -> None:
        """Create the ascent state of every perturbed tensor at its initial value (as the first
        step would), so that a fresh optimizer has the structure a checkpoint loads into."""
        super().init_state()
        for p in self.perturbation_plan().owners:
            if self.variant == "adagrad-norm":
                self._state(p, "ascent_u", 0.0, scalar=True)
            elif self.variant == "adagrad":
                self._state(p, "ascent_u", self.eps0**2)
            else:
                self._state(p, "ascent_u", 0.0)
                self._state(p, "ascent_step", 0.0, scalar=True)
                if self.ascent_beta1:
                    self._state(p, "ascent_m", 0.0)

    def _check_group(self, i: int, group: dict[str, Any]) -> Rule:
        rule = super()._check_group(i, group)
        if rule.name != self._rule:
            raise ValueError(
                f"param group {i}: rule {rule.name!r} in a LightSAM of variant "
                f"{self.variant!r}, whose groups all run {self._rule!r}"
            )
        return rule

    def _perturbation(self, plan: Plan, grads: list[Tensor]) -> tuple[list[Tensor], Tensor, bool]:
        params, k = plan.owners, plan.rho * plan.c
        if self.variant == "adagrad-norm":
            accs = [self._state(p, "ascent_u", 0.0, scalar=True) for p in params]
            sq = norms(grads, accs[0], plan.reduce, plan.uniform) ** 2
            torch._foreach_add_(accs, list((plan.s.to(sq.dtype) * sq).unbind()))
            every = [st["ascent_u"] for st in self.state.values() if "ascent_u" in st]
            return list(grads), k / torch.sqrt(torch.stack(every).sum() + self.eps0**2), True
        if self.variant == "adagrad":
            accs = [self._state(p, "ascent_u", self.eps0**2) for p in params]
            torch._foreach_addcmul_(accs, grads, grads)
            return list(torch._foreach_div(grads, torch._foreach_sqrt(accs))), k, True
        accs = [self._state(p, "ascent_u", 0.0) for p in params]
        steps = [self._state(p, "ascent_step", 0.0, scalar=True) for p in params]
        torch._foreach_add_(steps, 1.0)
        torch._foreach_mul_(accs, self.beta2)
        torch._foreach_addcmul_(accs, grads, grads, value=1.0 - self.beta2)
        t = torch.stack(steps)
        denom = torch._foreach_sqrt(accs)
        if self.bias_correction:
            torch._foreach_div_(denom, list(torch.sqrt(1.0 - self.beta2**t).unbind()))
        torch._foreach_add_(denom, self.ascent_eps)
        if not self.ascent_beta1:
            return list(torch._foreach_div(grads, denom)), k, True
        moms = [self._state(p, "ascent_m", 0.0) for p in params]
        torch._foreach_lerp_(moms, grads, 1.0 - self.ascent_beta1)
        bc1 = 1.0 - self.ascent_beta1**t if self.bias_correction else torch.ones_like(t)
        return list(torch._foreach_div(moms, denom)), k / bc1.to(k.dtype), False
