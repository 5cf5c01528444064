"""Which training configs can train together as one stacked model, and how many fit at once.

A *bundle* is ``K`` :class:`~mup2.config.TrainConfig` that differ only in what differs between
the grid points of one width: ``optimizer.lr``, ``sam.rho``, ``sam.eta``, ``seed`` and the
parametrization (``scheme``, ``sam.scaling`` and a ``sam.rule`` of the same factor ``A``, see
:mod:`mup2.optim.rules`). Everything else (model and width, data, schedule, epochs, batch size,
precision, device) is shared. :func:`check_batchable` refuses, with a message naming the reason,
what the batched path cannot reproduce exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from mup2.config import ConfigError, MLPConfig, TrainConfig
from mup2.models.registry import build_model
from mup2.optim.rules import get_rule
from mup2.train import resolve_device

__all__ = ["BatchError", "auto_bundle_size", "bundle_key", "check_batchable"]

#: Config keys that may differ within a bundle (dotted paths of ``TrainConfig.to_dict()``).
PER_CONFIG = (
    "optimizer.lr",
    "sam.rho",
    "sam.eta",
    "sam.scaling",
    "sam.rule",
    "scheme",
    "seed",
    "progress",
    "checkpoint",
)


class BatchError(ConfigError):
    """Configs that cannot be trained as one stacked model (train them one at a time)."""


def _shared(config: TrainConfig) -> dict[str, Any]:
    d = config.to_dict()
    for path in PER_CONFIG:
        *head, last = path.split(".")
        node = d
        for key in head:
            node = node[key]
        node.pop(last, None)
    rule = get_rule(config.sam.sam_rule(config.optimizer.name))
    d["perturbation_factor"] = rule.factor.value
    return d


def bundle_key(config: TrainConfig) -> str:
    """A string equal for configs that :func:`mup2.batched.train_batched` can train together."""
    return json.dumps(_shared(config), sort_keys=True)


def check_batchable(configs: Sequence[TrainConfig]) -> None:
    """Raise :class:`BatchError` unless ``configs`` form one bundle the batched path runs
    exactly as separate :func:`mup2.train` runs."""
    if not configs:
        raise BatchError("train_batched needs at least one config")
    first = configs[0]
    key = _shared(first)
    for i, c in enumerate(configs[1:], 1):
        other = _shared(c)
        if other != key:
            differ = sorted(_differ(key, other))
            raise BatchError(
                f"config {i} differs from config 0 in {differ}: a bundle may differ only in "
                f"{list(PER_CONFIG[:-2])} (and a rule with the same factor); train the others "
                "in another bundle"
            )
    if first.optimizer.name != "sgd":
        raise BatchError(
            f"optimizer.name: batched training runs 'sgd' (with momentum, nesterov and weight "
            f"decay), not {first.optimizer.name!r}; use batch = 1"
        )
    for c in configs:
        rule = get_rule(c.sam.sam_rule(c.optimizer.name))
        if rule.lightsam is not None:
            raise BatchError(f"sam.rule: batched training has no LightSAM ({rule.name!r})")
        if rule.one_pass:
            raise BatchError(
                f"sam.rule: batched training has no one-pass rule ({rule.name!r}); use batch = 1"
            )
    sam = first.sam
    if sam.schedule != "constant" or sam.every != 1:
        raise BatchError(
            f"sam: batched training runs SAM on every step with a constant rho, not "
            f"schedule = {sam.schedule!r}, every = {sam.every} (between = {sam.between!r}); "
            "use batch = 1"
        )
    if first.precision == "fp16":
        raise BatchError("precision: fp16 needs a gradient scaler per run; use bf16 or fp32")
    if first.data.crop_padding or first.data.hflip:
        raise BatchError(
            "data: augmentation (crop_padding, hflip) draws per-run random numbers that the "
            "batched path does not reproduce; use batch = 1"
        )
    if first.model.name == "resnet18" or (
        isinstance(first.model, MLPConfig) and first.model.norm == "batch"
    ):
        raise BatchError(
            "model: BatchNorm's running statistics are not stacked; train BatchNorm models with "
            "batch = 1"
        )


def _differ(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in a.keys() | b.keys():
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differ(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


#: Parameter-sized tensors per configuration while a SAM step runs: weights, gradients, the
#: saved weights, momentum, the ASAM/direction temporaries and the update's temporaries.
_PARAM_COPIES = 8


def auto_bundle_size(config: TrainConfig, free_bytes: int | None = None, *, most: int = 256) -> int:
    """How many configs like ``config`` fit in one bundle on its device (at least 1, at most
    ``most``): parameter-sized state and one batch's activations per configuration against
    80% of ``free_bytes`` (default: the CUDA device's free memory, or 8 configurations on the
    CPU, where batching only removes Python overhead)."""
    device = resolve_device(config.device)
    if free_bytes is None:
        if device.type != "cuda":
            return min(8, most)
        # what torch's caching allocator holds but no tensor uses (a previous bundle's) is free
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        free_bytes = torch.cuda.mem_get_info(device)[0] + cached
    per = _bytes_per_config(config)
    return max(1, min(most, int(0.8 * free_bytes) // per))


def _bytes_per_config(config: TrainConfig) -> int:
    """An upper estimate of one configuration's device memory in fp32. The input shape and
    class count come from the data config where it says them (synthetic data), else from the
    data set's name (Fashion-MNIST and IDX: 1x28x28, CIFAR: 3x32x32)."""
    data = config.data
    shape = getattr(data, "shape", None) or (
        (3, 32, 32) if data.name in ("cifar10", "cifar100") else (1, 28, 28)
    )
    classes = getattr(data, "num_classes", None) or (100 if data.name == "cifar100" else 10)
    with torch.device("meta"):
        model = build_model(
            config.model.name,
            config.model.width,
            input_shape=shape,
            num_classes=classes,
            **config.model.kwargs(config.scheme),
        )
    params = sum(p.numel() for p in model.parameters())
    # per layer: a training batch's activations kept for two backward passes (about 6 per
    # example) and an evaluation chunk's (2 per example)
    rows = 6 * config.batch_size + 2 * config.eval_batch_size
    activations = rows * config.model.width * getattr(config.model, "depth", 12)
    return 4 * (_PARAM_COPIES * params + activations)
