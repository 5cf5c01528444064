"""The training losses of :func:`mup2.train` (``loss`` in :class:`mup2.config.TrainConfig`), in one
place: every caller (training, evaluation, the batched trainer) computes its loss here.

Shapes: ``logits`` ``(..., B, C)`` float, ``y`` ``(..., B)`` int64 class indices in ``[0, C)``;
leading dims (a batched trainer's configuration axis ``K``) are carried through. Per example:

- ``cross-entropy``: ``-sum_c t_c log softmax(f)_c`` (:func:`torch.nn.functional.cross_entropy`);
- ``mse``: ``1/2 sum_c (f_c - t_c)**2``, the squared loss on the logits (no softmax).

The target ``t`` is the one-hot label, or with ``label_smoothing = a`` the smoothed one
``(1 - a) onehot(y) + a / C``, for both losses (torch's convention for cross-entropy). The batch
loss is the mean over ``B``. With the factor 1/2 and the sum over classes, MSE's gradient in
the logits is ``f - t``, as cross-entropy's is ``softmax(f) - t``: each logit's gradient is
Θ(1) and the two losses' learning rates are on comparable scales.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "Loss", "mean_loss", "per_example_loss", "sum_loss"]

Loss = Literal["cross-entropy", "mse"]
LOSSES: tuple[str, ...] = get_args(Loss)


def _check(logits: Tensor, y: Tensor, loss: str, label_smoothing: float) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}, not {loss!r}")
    if logits.dim() < 2 or tuple(logits.shape[:-1]) != tuple(y.shape):
        raise ValueError(
            f"logits of shape {list(logits.shape)} need labels of shape "
            f"{list(logits.shape[:-1])} (logits (..., B, C), labels (..., B)), got {list(y.shape)}"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


def _mse(logits: Tensor, y: Tensor, label_smoothing: float) -> Tensor:
    """``1/2 sum_c (f_c - t_c)**2`` per example, ``t`` the (smoothed) one-hot target."""
    classes = logits.shape[-1]
    target = F.one_hot(y, classes).to(logits.dtype)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / classes
    return 0.5 * (logits - target).square().sum(-1)


def _reduced(
    logits: Tensor,
    y: Tensor,
    loss: str,
    label_smoothing: float,
    reduction: Literal["none", "mean", "sum"],
) -> Tensor:
    """The loss per example (``none``), or its mean or sum over ``B``. Cross-entropy on one
    batch (2-D logits) reduces inside :func:`torch.nn.functional.cross_entropy`, the bits
    :func:`mup2.train` has always had."""
    _check(logits, y, loss, label_smoothing)
    if loss == "mse":
        per = _mse(logits, y, label_smoothing)
    elif logits.dim() == 2:
        return F.cross_entropy(logits, y, reduction=reduction, label_smoothing=label_smoothing)
    else:
        flat = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            y.reshape(-1),
            reduction="none",
            label_smoothing=label_smoothing,
        )
        per = flat.reshape(y.shape)
    if reduction == "mean":
        return per.mean(-1)
    if reduction == "sum":
        return per.sum(-1)
    return per


def per_example_loss(logits: Tensor, y: Tensor, loss: str, label_smoothing: float = 0.0) -> Tensor:
    """The loss of each example: logits ``(..., B, C)`` float, ``y`` ``(..., B)`` int64 ->
    ``(..., B)``, in the logits' dtype (see the module docstring for the formulas)."""
    return _reduced(logits, y, loss, label_smoothing, "none")


def mean_loss(logits: Tensor, y: Tensor, loss: str, label_smoothing: float = 0.0) -> Tensor:
    """The batch loss, the mean of :func:`per_example_loss` over ``B``: ``(..., B, C)`` ->
    ``(...)`` (a 0-d tensor for one batch)."""
    return _reduced(logits, y, loss, label_smoothing, "mean")


def sum_loss(logits: Tensor, y: Tensor, loss: str, label_smoothing: float = 0.0) -> Tensor:
    """The sum of :func:`per_example_loss` over ``B``: ``(..., B, C)`` -> ``(...)`` (evaluation
    sums over batches and divides by the number of examples)."""
    return _reduced(logits, y, loss, label_smoothing, "sum")
