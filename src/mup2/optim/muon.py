"""Muon on the hidden matrices and AdamW on everything else, as one optimizer.

Muon (Jordan et al. 2024; ``torch.optim.Muon``) orthogonalizes each matrix's momentum with a
Newton-Schulz iteration, so its update ``O`` has singular values near 1; it is meant for the
hidden matrices only. Embeddings, the readout, biases and norm gains take AdamW, as Muon is meant
to be used. :class:`MuonAdamW` runs both on shared param groups, so it is one
``torch.optim.Optimizer`` that :class:`mup2.SAM` and :class:`mup2.LightSAM` wrap like any other
base optimizer, that LR schedulers drive through one ``lr`` and whose ``state_dict`` holds both.

Which groups take Muon: a group's ``muon`` key when it has one; else the groups whose ``role`` is
``"hidden"`` (the groups of :meth:`mup2.Parametrization.param_groups` carry it). Plain
parameters (no ``role``) take AdamW. Muon's tensors must be matrices (2-D).

The LR rule (``docs/math.md``, Muon): Muon's step is ``lr * a(shape) * O`` with the
``adjust_lr_fn`` of ``torch.optim.Muon``. mup2 builds on ``"match_rms_adamw"`` (Moonshot's,
``a = 0.2 sqrt(max(fan_out, fan_in))``): the update's RMS is then ``0.2 lr``, as AdamW's is about,
so one base ``lr`` serves both halves. The spectral condition (Yang, Simon, Bernstein 2023) asks
``||dW||_2 = Θ(sqrt(fan_out/fan_in))``; ``||O||_2 ≈ 1`` gives ``||dW||_2 = 0.2 lr sqrt(max)``, so a
hidden matrix whose fans both grow by ``m`` needs ``lr x m^-1/2`` (scheme ``mup-muon``); with
``"original"`` (``a = sqrt(max(1, fan_out/fan_in))``, a function of the aspect ratio) it would
need none. The AdamW tensors follow μP-Adam (``1/m_in``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from mup2.errors import check_number
from mup2.optim.sam import check_params

__all__ = ["ADJUST_LR_FN", "MuonAdamW", "uses_muon"]

#: The ``adjust_lr_fn`` of ``torch.optim.Muon`` that ``mup-muon``'s LR rule is derived for.
ADJUST_LR_FN = "match_rms_adamw"

#: Keys of a group that only AdamW reads, and only Muon reads (each inner optimizer fills in
#: its own defaults; ``eps`` is Adam's epsilon in AdamW groups, Newton-Schulz's in Muon's).
_MUON_KEYS = ("momentum", "nesterov", "ns_coefficients", "ns_steps", "adjust_lr_fn")


def uses_muon(group: dict[str, Any]) -> bool:
    """Whether ``group`` takes Muon: its ``muon`` key, else whether its ``role`` is hidden."""
    if "muon" in group:
        return bool(group["muon"])
    return group.get("role") == "hidden"


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the groups :func:`uses_muon` picks, AdamW on the others, one ``step``.

    Args:
        params: tensors or param groups (see the module docstring for which take Muon).
        lr: the base learning rate of both halves (each group's ``lr_mult`` applies on top, at
            step time, under :func:`mup2.attach_lr_multipliers` or :class:`mup2.SAM`).
        weight_decay: decoupled decay of both (``w -= lr * weight_decay * w``).
        momentum, nesterov, ns_steps, ns_coefficients, adjust_lr_fn: Muon's
            (``adjust_lr_fn`` defaults to :data:`ADJUST_LR_FN`, which ``mup-muon`` assumes).
        betas, eps: AdamW's.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
        adjust_lr_fn: str | None = ADJUST_LR_FN,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("eps", eps)):
            check_number(name, value)
        check_number("momentum", momentum)
        check_number("betas", betas)
        self._muon_kw: dict[str, Any] = {
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "ns_coefficients": ns_coefficients,
            "adjust_lr_fn": adjust_lr_fn,
        }
        self._adam_kw: dict[str, Any] = {"betas": betas, "eps": eps}
        self._inner: tuple[torch.optim.Optimizer, ...] = ()
        self._built = False
        super().__init__(check_params(params), {"lr": lr, "weight_decay": weight_decay})
        self._build()
        self._built = True

    def _build(self) -> None:
        """The inner ``torch.optim.Muon`` and ``AdamW`` over the shared groups and state."""
        muon = [g for g in self.param_groups if uses_muon(g)]
        adam = [g for g in self.param_groups if not uses_muon(g)]
        for i, g in enumerate(self.param_groups):
            if uses_muon(g):
                bad = [tuple(p.shape) for p in g["params"] if p.ndim != 2]
                if bad:
                    names = g.get("names", [])
                    why = "muon=True" if "muon" in g else f"role {g.get('role')!r}"
                    raise ValueError(
                        f"param group {i} takes Muon ({why}) but holds tensors of shapes "
                        f"{bad[:3]}{' ' + str(names[:3]) if names else ''}: Muon "
                        "orthogonalizes matrices (2-D); give the group muon=False for AdamW, or "
                        "use another optimizer for models with hidden conv kernels"
                    )
        inner: list[torch.optim.Optimizer] = []
        dummy = [torch.zeros(1, 1)]
        if muon:
            opt: torch.optim.Optimizer = torch.optim.Muon(
                dummy,
                lr=self.defaults["lr"],
                weight_decay=self.defaults["weight_decay"],
                **self._muon_kw,
            )
            opt.param_groups = []
            for g in muon:
                opt.add_param_group(g)
            inner.append(opt)
        if adam:
            opt = torch.optim.AdamW(
                dummy,
                lr=self.defaults["lr"],
                weight_decay=self.defaults["weight_decay"],
                **self._adam_kw,
            )
            opt.param_groups = []
            for g in adam:
                opt.add_param_group(g)
            inner.append(opt)
        for opt in inner:
            opt.state = self.state
        self._inner = tuple(inner)

    @property
    def parts(self) -> tuple[torch.optim.Optimizer, ...]:
        """The inner ``torch.optim.Muon`` (when a group takes Muon) and ``torch.optim.AdamW``
        (when one does not), in that order, over the shared groups and state."""
        return self._inner

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if self._built:  # after construction: rebuild the halves over the groups
            try:
                self._build()
            except ValueError:
                self.param_groups.pop()
                self._build()
                raise

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._build()  # the halves share the new groups and state

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One step of both halves (each group at its current ``lr``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self._inner:
            opt.step()
        return loss
