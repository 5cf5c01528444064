"""SAM, ASAM and SAM-ON with naive, global and μP² perturbation scaling, wrapping any optimizer.

One step: ``g = ∇L(w)``, ``eps = perturbation(g, w)`` (:mod:`mup2.perturb`), ``w + eps``,
``g' = ∇L(w + eps)``, restore ``w``, then the base optimizer steps with ``g'``. Weight decay,
momentum and gradient clipping act only in the base step; the ascent uses the loss gradient alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mup2.lr import attach_lr_multipliers
from mup2.passes import frozen_bn_stats, no_sync
from mup2.perturb import compute_perturbation
from mup2.schemes import perturb_scaling
from mup2.shapes import Role

__all__ = ["SAM", "Restore"]

Restore = Literal["auto", "subtract", "copy"]

#: Group keys SAM reads, with their values for plain params (base width: μP² is plain SAM).
_GROUP_DEFAULTS: dict[str, Any] = {
    "rho_mult": 1.0,
    "role": Role.SCALAR.value,
    "m_in": 1.0,
    "m_out": 1.0,
    "width_mult": 1.0,
    "norm": False,
    "lr_mult": 1.0,
}


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimization around any torch optimizer.

    Args:
        params: tensors or param groups; groups from :meth:`mup2.Parametrization.param_groups`
            carry the width metadata that ``global``/``mup2`` scaling need (plain params count
            as base width, where μP² is plain SAM). Each group may set its own ``rho``.
        base_optimizer: the optimizer class for the descent (``torch.optim.SGD``, ``AdamW``, ...);
            it shares ``param_groups`` with SAM, so LR schedulers may wrap either.
        rho: perturbation radius. ``rho = 0`` is exactly the base optimizer.
        rule: ``"sam"``, ``"asam"`` (elementwise, ``|W| + eta``), ``"asam-layerwise"``
            (``||W||_F + eta``) or ``"sam-on"`` (only groups with ``norm=True`` are perturbed).
        scaling: ``"naive"``, ``"global"``, ``"mup2"`` (layerwise, balanced) or ``"mup2-coupled"``.
        eta: the ASAM offset ``η_A``.
        restore: how ``w`` is restored after the perturbed pass: ``"subtract"`` the persistent
            perturbation buffer, or ``"copy"`` back a saved copy (exact; for fp16/bf16 weights,
            per-replica DDP perturbations and fp16 GradScaler runs). ``"auto"``: ``copy`` for
            half-precision parameters or a DDP ``model`` with per-replica perturbation, else
            ``subtract``. Either way one parameter-sized buffer persists.
        model: optional; :meth:`step` then runs the first pass under DDP ``no_sync`` (unless
            ``sync_perturbation``) and the second with frozen BatchNorm statistics.
        sync_perturbation: under DDP, all-reduce the first-pass gradients (one shared
            perturbation) instead of perturbing each replica with its own gradient.
        **base_kwargs: passed to ``base_optimizer`` (``lr``, ``momentum``, ``weight_decay``, ...).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
        *,
        rho: float = 0.05,
        rule: str = "sam",
        scaling: str = "mup2",
        eta: float = 0.01,
        restore: Restore = "auto",
        model: nn.Module | None = None,
        sync_perturbation: bool = False,
        **base_kwargs: Any,
    ) -> None:
        if not (rho >= 0.0):
            raise ValueError(f"rho must be >= 0, got {rho}")
        if not (eta >= 0.0):
            raise ValueError(f"eta must be >= 0, got {eta}")
        if restore not in ("auto", "subtract", "copy"):
            raise ValueError(f"restore must be 'auto', 'subtract' or 'copy', not {restore!r}")
        self.scaling_table = perturb_scaling(rule, scaling)
        self.rule, self.scaling, self.eta = rule, scaling, eta
        self.model, self.sync_perturbation = model, sync_perturbation
        self._base: torch.optim.Optimizer | None = None
        super().__init__(params, {"rho": rho, **_GROUP_DEFAULTS})
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self._base = self.base_optimizer
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        attach_lr_multipliers(self.base_optimizer)
        if rule == "sam-on" and not any(g["norm"] for g in self.param_groups):
            raise ValueError(
                "rule 'sam-on' perturbs normalization parameters only, and no param group has "
                "norm=True: build the groups with "
                "mup2.Parametrization.infer(...).param_groups(model)"
            )
        ddp_per_replica = isinstance(model, nn.parallel.DistributedDataParallel) and not (
            sync_perturbation
        )
        low = any(
            p.dtype in (torch.float16, torch.bfloat16)
            for g in self.param_groups
            for p in g["params"]
        )
        self.restore: Literal["subtract", "copy"] = (
            ("copy" if low or ddp_per_replica else "subtract") if restore == "auto" else restore
        )
        self._buffers: dict[Tensor, Tensor] = {}
        self._perturbed: list[Tensor] = []
        self._plan_key: tuple[Any, ...] | None = None
        self._plan: tuple[list[Tensor], Tensor, Tensor, Tensor] | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if self._base is not None:  # after construction: keep the base optimizer in step
            self._base.add_param_group(self.param_groups.pop())
            self.param_groups = self._base.param_groups

    # -- the perturbation -----------------------------------------------------------------

    def _factors(self) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
        """Perturbable tensors and their ``rho``, ``c`` and ``s`` (1-D, one entry per tensor);
        cached until a group's ``rho`` changes."""
        key = tuple((g["rho"], g["rho_mult"], len(g["params"])) for g in self.param_groups)
        if key != self._plan_key or self._plan is None:
            params: list[Tensor] = []
            rho_c_s: list[tuple[float, float, float]] = []
            for g in self.param_groups:
                rho = g["rho"] * g["rho_mult"]
                if rho == 0.0 or (self.rule == "sam-on" and not g["norm"]):
                    continue
                role = Role(g["role"])
                args = (g["m_in"], g["m_out"], g["width_mult"])
                c, s = self.scaling_table.c[role](*args), self.scaling_table.s[role](*args)
                params += g["params"]
                rho_c_s += [(rho, c, s)] * len(g["params"])
            dev = params[0].device if params else torch.device("cpu")
            dt = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
            table = torch.tensor(rho_c_s, device=dev, dtype=dt).reshape(-1, 3)
            self._plan = (params, table[:, 0], table[:, 1], table[:, 2])
            self._plan_key = key
        return self._plan

    def _perturbation(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        rho: Tensor,
        c: Tensor,
        s: Tensor,
        out: list[Tensor],
    ) -> None:
        """Write ``eps`` of every tensor into ``out`` (the ascent; LightSAM overrides it)."""
        rho2 = rho * rho
        compute_perturbation(self.rule, params, grads, rho2 * c, rho2 * s, out, self.eta)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to ``w + eps`` using the current gradients (tensors without one stay put)."""
        if self._perturbed:
            raise RuntimeError("first_step() called twice without second_step() in between")
        params, rho, c, s = self._factors()
        present = [i for i, p in enumerate(params) if p.grad is not None]
        if present:
            if len(present) < len(params):
                idx = torch.tensor(present, device=rho.device)
                params = [params[i] for i in present]
                rho, c, s = rho[idx], c[idx], s[idx]
            grads: list[Tensor] = [p.grad for p in params]  # type: ignore[misc]
            bufs = [self._buffer(p) for p in params]
            if self.restore == "subtract":
                self._perturbation(params, grads, rho, c, s, bufs)
                torch._foreach_add_(params, bufs)
            else:
                eps = [torch.empty_like(p) for p in params]
                self._perturbation(params, grads, rho, c, s, eps)
                torch._foreach_copy_(bufs, params)
                torch._foreach_add_(params, eps)
            self._perturbed = params
        if zero_grad:
            self.zero_grad()

    def _buffer(self, p: Tensor) -> Tensor:
        buf = self._buffers.get(p)
        if buf is None:
            buf = self._buffers[p] = torch.empty_like(p, memory_format=torch.preserve_format)
        return buf

    @torch.no_grad()
    def unperturb(self) -> None:
        """Restore exactly the tensors that :meth:`first_step` perturbed."""
        if self._perturbed:
            bufs = [self._buffers[p] for p in self._perturbed]
            if self.restore == "subtract":
                torch._foreach_sub_(self._perturbed, bufs)
            else:
                torch._foreach_copy_(self._perturbed, bufs)
            self._perturbed = []

    @torch.no_grad()
    def second_step(
        self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None
    ) -> None:
        """Restore ``w`` and take the base optimizer's step with the current (perturbed) gradients.

        With an AMP ``scaler``, the step goes through ``scaler.step`` (which unscales once and
        skips non-finite steps); call ``scaler.update()`` afterwards as usual.
        """
        self.unperturb()
        if scaler is not None:
            scaler.step(self.base_optimizer)
        else:
            self.base_optimizer.step()
        self._opt_called = True  # tells LR schedulers that the optimizer stepped
        if zero_grad:
            self.zero_grad()

    def _needs_second_pass(self) -> bool:
        return any(
            g["rho"] * g["rho_mult"] > 0 and (self.rule != "sam-on" or g["norm"])
            for g in self.param_groups
        )

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """With a closure (zeroes grads, computes the loss, calls backward, returns the loss): a
        whole SAM step, returning the loss at the unperturbed point (detached). Without one:
        :meth:`second_step` (restore, then the base step)."""
        if closure is None:
            self.second_step()
            return None
        first: AbstractContextManager[Any] = nullcontext()
        second: AbstractContextManager[Any] = nullcontext()
        if self.model is not None:
            if not self.sync_perturbation:
                first = no_sync(self.model)
            second = frozen_bn_stats(self.model)
        with torch.enable_grad(), first:
            loss = closure()
        if self._needs_second_pass():
            self.first_step()
            with torch.enable_grad(), second:
                closure()
        self.second_step()
        return loss.detach()

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """SAM's state and param groups plus the base optimizer's state (momenta, Adam moments)."""
        sd = super().state_dict()
        sd["base_optimizer"] = self.base_optimizer.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "base_optimizer" not in state_dict:
            raise ValueError("not a mup2.SAM state dict: it lacks 'base_optimizer'")
        base = state_dict.pop("base_optimizer")
        super().load_state_dict(state_dict)
        self.base_optimizer.load_state_dict(base)
        self.param_groups = self.base_optimizer.param_groups
        self._plan_key = None
