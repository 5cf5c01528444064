"""Mixed precision for a training loop: the autocast context and the gradient scaler of a
``precision`` name.

``fp32`` changes nothing. ``bf16`` runs the forward (and so the backward) under
``torch.autocast(device, dtype=torch.bfloat16)``: matrix products in bf16, weights, gradients,
optimizer state and the SAM perturbation in fp32, no scaler (bf16 has fp32's range). ``fp16``
autocasts to float16 and scales the loss with a :class:`torch.amp.GradScaler`; pass the scaler to
:meth:`mup2.SAM.step`, which unscales the first pass's gradients before the ascent and lets
``scaler.step`` skip a step whose perturbed pass overflowed.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal, get_args

import torch
from torch import Tensor

__all__ = ["PRECISIONS", "Precision", "at_least_fp32", "autocast", "grad_scaler"]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager[Any]:
    """The context to run a forward pass in (``fp32``: a no-op)."""
    _check(precision)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler | None:
    """A fresh gradient scaler for ``fp16``, else ``None``."""
    _check(precision)
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def at_least_fp32(t: Tensor) -> Tensor:
    """``t`` in float32 if it is in a lower precision (autocast's bf16/fp16 logits), else as it
    is: losses are computed in float32, or in float64 for a float64 model."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()
