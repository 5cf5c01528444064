"""``transformers.Trainer`` with μP param groups and SAM's two passes (extra ``hf``).

:class:`SAMTrainer` builds its optimizer in the Trainer's ``create_optimizer`` hook from a
:class:`mup2.Parametrization` (``lr`` and ``weight_decay`` from ``TrainingArguments``) and runs
SAM in ``training_step``. With ``gradient_accumulation_steps = n`` the first pass accumulates
over the ``n`` micro-batches as the Trainer does; after the last one the weights move to
``w + eps`` once, the second pass runs over the same ``n`` micro-batches (reduced under DDP only
in the last), and the weights are restored before the Trainer clips (the second-pass gradients)
and calls ``optimizer.step()``, which is then the base step. A skipped step (fp16 overflow) thus
leaves the weights unperturbed. The micro-batches are kept until the last one (references to
their tensors, no copies). Under DDP the first pass is reduced in its last micro-batch like any
Trainer step, so the perturbation is shared across replicas. Checkpoints are the Trainer's own:
:meth:`mup2.SAM.state_dict` holds the base optimizer's state, so ``resume_from_checkpoint``
resumes SAM.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer

from mup2.optim.contexts import frozen_bn_stats, gradient_sync
from mup2.optim.sam import SAM
from mup2.parametrization.parametrize import Parametrization

__all__ = ["SAMTrainer"]


class SAMTrainer(Trainer):
    """A ``transformers.Trainer`` whose optimizer is :class:`mup2.SAM` (or a subclass).

    Args:
        parametrization: the μP parametrization of the model (its groups carry the multipliers
            and the μP² metadata); ``None``: plain ``model.parameters()`` (base width).
        sam_class: :class:`mup2.SAM` or :class:`mup2.LightSAM`.
        sam_kwargs: passed to ``sam_class`` besides the groups (``base_optimizer``, ``rho``,
            ``rule``, ``scaling``, ``momentum``, ...); ``lr`` comes from the arguments' groups.
        *args, **kwargs: ``transformers.Trainer``'s (``optimizers`` must not be given).
    """

    def __init__(
        self,
        *args: Any,
        parametrization: Parametrization | None = None,
        sam_class: type[SAM] = SAM,
        sam_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.parametrization, self.sam_class = parametrization, sam_class
        self.sam_kwargs = dict(sam_kwargs or {})
        self._micro_batches: list[tuple[dict[str, Any], Any]] = []

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            net = self.model if model is None else model
            if net is None:
                raise ValueError("SAMTrainer needs a model to build its optimizer")
            lr, wd = self.args.learning_rate, self.args.weight_decay
            groups: Any = (
                [{"params": [p for p in net.parameters() if p.requires_grad], "weight_decay": wd}]
                if self.parametrization is None
                else self.parametrization.param_groups(net, lr=lr, weight_decay=wd)
            )
            self.optimizer = self.sam_class(groups, lr=lr, **self.sam_kwargs)
        return self.optimizer

    @property
    def sam(self) -> SAM:
        """The :class:`mup2.SAM` inside the Trainer's (possibly accelerate-wrapped) optimizer."""
        opt: Any = self.optimizer
        while not isinstance(opt, SAM):
            opt = opt.optimizer
        return opt

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """The first pass on ``inputs``; after the last micro-batch also the ascent, the second
        pass over all micro-batches and the restore. Returns the first-pass loss."""
        loss: torch.Tensor = super().training_step(model, dict(inputs), num_items_in_batch)
        self._micro_batches.append((inputs, num_items_in_batch))
        if not self.accelerator.sync_gradients:
            return loss
        sam, batches = self.sam, self._micro_batches
        self._micro_batches = []
        if sam.is_sam_step():  # else (rho = 0, or between SAM steps with every = k) one pass
            sam.first_step(zero_grad=True)
            with frozen_bn_stats(model):
                for i, (batch, items) in enumerate(batches):
                    with gradient_sync(model, i == len(batches) - 1):
                        super().training_step(model, dict(batch), items)
            sam.unperturb()
        return loss  # the Trainer's optimizer.step() is then SAM's second step
