"""Build a model by name from a dataset's input shape and class count (what configs refer to)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from mup2.models.mlp import MLP
from mup2.models.resmlp import ResMLP
from mup2.models.resnet import ResNet18
from mup2.models.vit import ViT

__all__ = ["MODELS", "base_width", "build_model"]

#: Model names accepted by :func:`build_model` and the configs.
MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "resmlp": ResMLP,
    "resnet18": ResNet18,
    "vit": ViT,
}


def base_width(name: str) -> int:
    """The documented base width (``BASE_WIDTH``) of a registered model."""
    return int(getattr(_lookup(name), "BASE_WIDTH"))  # noqa: B009


def build_model(
    name: str, width: int, *, input_shape: Sequence[int], num_classes: int, **kwargs: Any
) -> nn.Module:
    """``MODELS[name]`` at ``width`` for inputs ``(batch, *input_shape)`` (``(C, H, W)`` images)
    and ``num_classes`` outputs; ``kwargs`` go to the model's constructor.

    The MLP and the ResMLP flatten their input; the ResNet takes any ``(C, H, W)``; the ViT
    needs square images.
    """
    cls = _lookup(name)
    shape = tuple(int(s) for s in input_shape)
    if cls is MLP or cls is ResMLP:
        return cls(width, in_features=math.prod(shape), out_features=num_classes, **kwargs)
    if len(shape) != 3:
        raise ValueError(f"model {name!r} needs (channels, height, width) inputs, got {shape}")
    if cls is ResNet18:
        return ResNet18(width, in_channels=shape[0], num_classes=num_classes, **kwargs)
    if shape[1] != shape[2]:
        raise ValueError(f"model 'vit' needs square images, got {shape[1]}x{shape[2]}")
    return ViT(width, image_size=shape[1], in_channels=shape[0], num_classes=num_classes, **kwargs)


def _lookup(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]
