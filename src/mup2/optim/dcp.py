"""``torch.distributed.checkpoint`` state dicts for :class:`mup2.SAM` / :class:`mup2.LightSAM`.

``torch.distributed.checkpoint.state_dict.get_state_dict(model, sam)`` keeps only an optimizer's
``state`` and ``param_groups``, so it would drop the base optimizer's state (momenta, Adam
moments) that :meth:`mup2.SAM.state_dict` nests. These helpers save three entries, each keyed by
parameter name and sharded like the parameters under FSDP2: ``model``, ``optim`` (the base
optimizer, with the param groups and their μP metadata) and ``ascent`` (SAM's own state, e.g.
LightSAM's accumulators or LookSAM's ``g_v``; empty for SAM); and with ``every > 1``
``sam_step``, where the cycle stands (:attr:`mup2.SAM.sam_step`, a 0-d tensor)::

    sd = mup2.optim.dcp.get_state_dict(model, opt)
    torch.distributed.checkpoint.save(sd, checkpoint_id=path)
    ...
    sd = mup2.optim.dcp.get_state_dict(model, opt)  # the structure to load into
    torch.distributed.checkpoint.load(sd, checkpoint_id=path)
    mup2.optim.dcp.set_state_dict(model, opt, sd)

Save between steps (the perturbation buffer is not saved), as with :meth:`mup2.SAM.state_dict`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint import state_dict as dsd

from mup2.optim.sam import SAM

__all__ = ["get_state_dict", "set_state_dict"]


class _Ascent(torch.optim.Optimizer):
    """SAM's own state and groups seen as a stateful optimizer whose ``step`` does nothing (DCP
    may call ``step`` with zero gradients to initialize state; SAM's would step the base)."""

    def __init__(self, sam: SAM) -> None:
        super().__init__([{"params": list(g["params"])} for g in sam.param_groups], {})
        self.param_groups, self.state = sam.param_groups, sam.state  # shared, not copied

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        return None


def get_state_dict(model: nn.Module, opt: SAM) -> dict[str, Any]:
    """``{"model", "optim", "ascent"}`` for ``torch.distributed.checkpoint.save``/``load``."""
    opt.init_state()  # a fresh optimizer must offer its state's structure to load into
    sd = {
        "model": dsd.get_model_state_dict(model),
        "optim": dsd.get_optimizer_state_dict(model, opt.base_optimizer),
        "ascent": dsd.get_optimizer_state_dict(model, _Ascent(opt)) if opt.state else {},
    }
    if opt.every > 1:  # only then (checkpoints of every = 1, older ones too, lack it)
        sd["sam_step"] = torch.tensor(opt.sam_step, dtype=torch.int64)
    return sd


def set_state_dict(model: nn.Module, opt: SAM, state_dict: dict[str, Any]) -> None:
    """Load what :func:`get_state_dict` produced (after ``torch.distributed.checkpoint.load``)."""
    dsd.set_model_state_dict(model, state_dict["model"])
    dsd.set_optimizer_state_dict(model, opt.base_optimizer, state_dict["optim"])
    opt.param_groups = opt.base_optimizer.param_groups
    if "sam_step" in state_dict:  # saved before SAM had a cycle: 0
        opt.sam_step = int(state_dict["sam_step"])
    if state_dict["ascent"]:
        view = _Ascent(opt)
        dsd.set_optimizer_state_dict(model, view, state_dict["ascent"])
        opt.state = view.state
