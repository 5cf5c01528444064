"""One-pass SAM variants: the perturbation needs no gradient at ``w``, so a step costs one
forward/backward, as SGD's does (``docs/math.md`` §8).

One step: ``eps`` from the optimizer's state, move to ``w + eps``, ``g = ∇L(w + eps)`` (the
only pass), restore ``w``, then the base optimizer steps with ``g``.

- :class:`MSAM` (Becker et al. 2024, arXiv 2401.12033): ``eps`` along minus the base
  optimizer's momentum ``m`` (SGD's ``momentum_buffer``, Adam's ``exp_avg``), normalized as SAM
  normalizes the gradient: ``eps_W = -rho**2 c_W m_W / sqrt(sum_V rho_V**2 s_V ||m_V||**2)``.
  The first step (no momentum yet) is not perturbed.
- :class:`RWP` (Li et al. 2022, arXiv 2211.11489): Gaussian noise, ``eps_W = rho_W c_W xi_W``
  with ``xi ~ N(0, 1)`` entrywise from a seeded generator (the same on every DDP replica, saved
  in checkpoints); under μP² ``c_W = m_in^-1/2`` (:mod:`mup2.optim.rules`).

The formula runs in :mod:`mup2.optim.perturb`; restoring, checkpoints, ``first_step`` /
``second_step`` and the param-group conventions are :class:`mup2.SAM`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim.optimizer import ParamsT

from mup2.errors import check_integer
from mup2.optim.perturb import gaussian
from mup2.optim.rules import ONEPASS_RULES, Rule, get_rule
from mup2.optim.sam import SAM, Plan, Restore

__all__ = ["MSAM", "RWP", "OnePassSAM", "momentum_key", "onepass_optimizer"]

#: Base optimizers whose first moment MSAM reads as its momentum (``exp_avg``).
_ADAM_LIKE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, torch.optim.RAdam)


def momentum_key(optimizer: torch.optim.Optimizer) -> str:
    """The state key of ``optimizer``'s momentum: ``momentum_buffer`` (SGD) or ``exp_avg``
    (Adam, AdamW, NAdam, RAdam); a clear error for an optimizer without one."""
    if isinstance(optimizer, torch.optim.SGD):
        return "momentum_buffer"
    if isinstance(optimizer, _ADAM_LIKE):
        return "exp_avg"
    raise ValueError(
        f"MSAM perturbs along the base optimizer's momentum, and {type(optimizer).__name__} "
        "keeps none: use torch.optim.SGD with momentum > 0, or Adam/AdamW (their exp_avg)"
    )


class OnePassSAM(SAM):
    """The base of the one-pass variants: :meth:`step` perturbs first, then runs the closure
    once at ``w + eps``, restores ``w`` and takes the base step. Subclasses define the ascent
    (:meth:`SAM._ascent_inputs`, :meth:`SAM._perturbation`) and list their rule in ``RULES``.

    The loss :meth:`step` returns is the one at ``w + eps`` (the only one computed). With
    ``model=`` the pass reduces gradients as usual under DDP, and BatchNorm statistics update
    in it (there is no other pass to take them from). Without a closure, call
    :meth:`first_step` (before the forward), then backward, then :meth:`second_step`.
    """

    RULES: ClassVar[tuple[str, ...]] = ()

    def needs_second_pass(self) -> bool:
        """Never: the perturbed pass is the only one."""
        return False

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor | None:
        """One step; returns the loss at ``w + eps`` (detached). ``closure`` zeroes the
        gradients, computes the loss and calls ``backward`` (on ``scaler.scale(loss)`` with an
        fp16 ``scaler``); it runs once. Without a closure this is :meth:`second_step`, valid
        after :meth:`first_step` and a backward."""
        if closure is None:
            return super().step(None, scaler)
        self.first_step()
        with torch.enable_grad():
            loss = closure()
        self.second_step(scaler=scaler)
        return loss.detach()

    def step_accumulate(
        self,
        loss_fn: Callable[[Any], Tensor],
        micro_batches: Sequence[Any],
        scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor:
        """One step with gradient accumulation over ``micro_batches`` at ``w + eps``; returns
        the mean loss there (detached). ``loss_fn(batch)``: the mean loss of one micro-batch;
        gradients are reduced in the last micro-batch's backward only (with ``model=``)."""
        if len(micro_batches) == 0:
            raise ValueError("step_accumulate needs at least one micro-batch")
        self.zero_grad()
        self.first_step()
        loss = self._accumulate(loss_fn, micro_batches, scaler, sync_last=True)
        self.second_step(scaler=scaler)
        return loss


class MSAM(OnePassSAM):
    """Momentum-SAM: perturb along minus the base optimizer's normalized momentum, one pass.

    Args:
        params: tensors or param groups (μP groups from
            :meth:`mup2.Parametrization.param_groups` for ``global``/``mup2`` scaling).
        base_optimizer: ``torch.optim.SGD`` with ``momentum > 0`` (its ``momentum_buffer``) or
            Adam/AdamW/NAdam/RAdam (their ``exp_avg``).
        rho: the radius; MSAM's best ``rho`` is larger than SAM's (the paper: about 0.3 with
            SGD), because ``-m`` is not the steepest ascent direction.
        scaling: ``"naive"``, ``"global"`` or ``"mup2"`` (SAM's layerwise ``r``: the momentum
            scales like the gradient).
        restore, model: as :class:`mup2.SAM`.
        **base_kwargs: passed to ``base_optimizer``.

    A tensor without momentum yet (the first step) is not perturbed. With SGD weight decay the
    momentum includes ``weight_decay * w`` (torch adds it to the gradient before the buffer).
    """

    RULES: ClassVar[tuple[str, ...]] = ("msam",)

    def __init__(
        self,
        params: ParamsT,
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
        *,
        rho: float = 0.3,
        scaling: str = "mup2",
        restore: Restore = "copy",
        model: nn.Module | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            base_optimizer,
            rho=rho,
            rule="msam",
            scaling=scaling,
            restore=restore,
            model=model,
            **base_kwargs,
        )
        self.momentum_key = momentum_key(self.base_optimizer)

    def _check_group(self, i: int, group: dict[str, Any]) -> Rule:
        rule = super()._check_group(i, group)
        base = self._base
        if base is not None and not isinstance(base, torch.optim.SGD):
            momentum_key(base)
        elif base is not None and not group.get("momentum", 0.0) > 0.0:
            raise ValueError(
                f"param group {i}: MSAM perturbs along SGD's momentum, and this group has "
                f"momentum={group.get('momentum', 0.0)}: set momentum > 0 (e.g. 0.9)"
            )
        return rule

    def _ascent_inputs(self, plan: Plan) -> tuple[Plan, list[Tensor]]:
        """The tensors with a momentum buffer, and their buffers."""
        state = self.base_optimizer.state
        bufs = [state[p].get(self.momentum_key) if p in state else None for p in plan.params]
        if any(b is None for b in bufs):
            plan = plan.subset([i for i, b in enumerate(bufs) if b is not None])
            bufs = [state[p][self.momentum_key] for p in plan.params]
        return plan, bufs  # type: ignore[return-value]


class RWP(OnePassSAM):
    """Random weight perturbation: Gaussian noise ``eps_W = rho_W c_W xi_W``, one pass.

    Args:
        params, base_optimizer, restore, model, **base_kwargs: as :class:`mup2.SAM` (any base
            optimizer).
        rho: the noise's standard deviation at base width (per entry of every tensor).
        scaling: ``"naive"``, ``"global"`` or ``"mup2"`` (``c_W = m_in^-1/2``: the noise of a
            tensor whose fan-in grows shrinks like the μP init of a hidden layer, so that its
            effect ``eps_W x`` on the layer's output keeps its size).
        seed: the noise generator's seed. Every process with the same seed draws the same noise
            (DDP replicas perturb identically); the generator's state is saved in
            :meth:`state_dict`, so a resumed run draws what it would have drawn.

    Not for FSDP-sharded parameters (the noise would repeat across shards).
    """

    RULES: ClassVar[tuple[str, ...]] = ("rwp",)

    def __init__(
        self,
        params: ParamsT,
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
        *,
        rho: float = 0.01,
        scaling: str = "mup2",
        seed: int = 0,
        restore: Restore = "copy",
        model: nn.Module | None = None,
        **base_kwargs: Any,
    ) -> None:
        check_integer("seed", seed)
        self.seed = int(seed)
        self.generators: dict[torch.device, torch.Generator] = {}
        super().__init__(
            params,
            base_optimizer,
            rho=rho,
            rule="rwp",
            scaling=scaling,
            restore=restore,
            model=model,
            **base_kwargs,
        )

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self.generators.get(device)
        if gen is None:
            gen = self.generators[device] = torch.Generator(device=device)
            gen.manual_seed(self.seed)
        return gen

    def _ascent_inputs(self, plan: Plan) -> tuple[Plan, list[Tensor]]:
        """Every tensor of the plan (noise needs no gradient)."""
        return plan, list(plan.params)

    def _perturbation(self, plan: Plan, grads: list[Tensor]) -> tuple[list[Tensor], Tensor, bool]:
        if plan.reduce is not None:
            raise NotImplementedError(
                "RWP does not run on FSDP-sharded parameters (each shard would draw the same "
                "noise); use DDP, or mup2.SAM/MSAM"
            )
        for p in plan.params:
            self._generator(p.device)
        return gaussian(plan.params, self.generators), plan.rho * plan.c, True

    def state_dict(self) -> dict[str, Any]:
        """:meth:`mup2.SAM.state_dict` plus the seed and the noise generators' states."""
        sd = super().state_dict()
        sd["rwp"] = {
            "seed": self.seed,
            "generators": {str(d): g.get_state() for d, g in self.generators.items()},
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rwp = state_dict.pop("rwp", None)
        if rwp is None:
            raise ValueError("not a mup2.RWP state dict: it lacks 'rwp' (the noise generators)")
        super().load_state_dict(state_dict)
        self.seed = int(rwp["seed"])
        self.generators = {}
        for dev, gen_state in rwp["generators"].items():
            self._generator(torch.device(dev)).set_state(gen_state)


def onepass_optimizer(rule: str | Rule) -> type[OnePassSAM]:
    """The optimizer class of a one-pass rule (:data:`mup2.optim.rules.ONEPASS_RULES`)."""
    r = get_rule(rule)
    if not r.one_pass:
        raise ValueError(f"rule {r.name!r} is not one-pass; one-pass rules: {list(ONEPASS_RULES)}")
    return MSAM if r.reads_momentum else RWP
