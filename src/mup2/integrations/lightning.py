"""SAM in a ``lightning.LightningModule`` under manual optimization (extra ``lightning``).

Lightning's automatic optimization runs one backward per step, so SAM's two passes need
``automatic_optimization = False`` and this helper in ``training_step``::

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            ...

        def configure_optimizers(self):
            return mup2.SAM(parametrization.param_groups(self, lr=0.1), torch.optim.SGD, rho=0.05)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return sam_step(self, lambda: F.cross_entropy(self(x), y))

:func:`sam_step` goes through the ``LightningOptimizer`` (so ``global_step``, checkpoints and
``max_steps`` work as usual) and :meth:`mup2.SAM.step`: the first pass under DDP ``no_sync``
unless ``sync_perturbation``, the second with frozen BatchNorm statistics. Checkpoints are
Lightning's: :meth:`mup2.SAM.state_dict` includes the base optimizer's state. Precision
``32``/``64``/``bf16-mixed``; ``16-mixed`` (a GradScaler plugin that runs the closure itself) is
not supported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning
from torch import Tensor

from mup2.optim.sam import SAM

__all__ = ["sam_step"]


def sam_step(
    module: lightning.LightningModule, loss_fn: Callable[[], Tensor], optimizer_idx: int = 0
) -> Tensor:
    """One SAM step: ``loss_fn()`` (a forward on the current batch returning the loss) is
    called twice, each time followed by ``module.manual_backward``. Returns the detached loss at
    the unperturbed weights. ``optimizer_idx``: which of ``module.optimizers()`` is the SAM."""
    opts: Any = module.optimizers()
    opt = opts[optimizer_idx] if isinstance(opts, list) else opts
    sam = opt.optimizer
    if not isinstance(sam, SAM):
        raise TypeError(f"sam_step needs a mup2.SAM from configure_optimizers, got {type(sam)}")
    sam.model = module.trainer.strategy.model  # the DDP wrapper, if any: no_sync is on it

    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_fn()
        module.manual_backward(loss)
        return loss

    loss: Tensor = opt.step(closure=closure)
    opt.zero_grad()
    return loss
