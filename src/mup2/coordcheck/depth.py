"""The coordinate check across depth (``docs/math.md`` §9): at a fixed width, models of
``depths`` blocks against a base of ``base_depth`` blocks, each block's quantities against
log2 depth.

:func:`coord_check_depth` runs :func:`mup2.coordcheck.coord_check` with depth as the axis (the
factory takes the depth) and folds the per-block layers ``P.i.rest`` of each stack ``P`` into
``P.#.rest`` (the mean over the blocks the model has at each depth), ``P.first.rest`` (block 0)
and ``P.last.rest`` (block ``L - 1``): their slopes say whether a block's activation, update and
effective perturbation stay Θ(1) as the model deepens. The layers outside the blocks keep their
names. ``alpha=None`` is the width-only parametrization (the shallower base matched, nothing
scaled with depth); ``alpha=1`` CompleteP with the depth-aware perturbation.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mup2.coordcheck.measure import CoordCheck, Layer, coord_check
from mup2.coordcheck.plot import plot_coord_checks
from mup2.coordcheck.table import records
from mup2.models.resmlp import ResMLP
from mup2.models.vit import ViT
from mup2.parametrization.depth import find_stacks
from mup2.tables import format_table

__all__ = [
    "DEPTH_MODELS",
    "block_means",
    "coord_check_depth",
    "depth_batch",
    "depth_checks",
    "depth_factory",
    "depth_records",
    "fold_blocks",
    "format_depth_summary",
    "plot_depth_checks",
]

_VIT = {"d_head": 16, "patch_size": 4, "image_size": 8, "in_channels": 3}
#: Models the command's ``--depths`` check builds: name -> (class, fixed keywords). ``vit-mean``
#: reads the mean of the patch tokens instead of the cls token (:class:`~mup2.models.vit.ViT`).
DEPTH_MODELS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "resmlp": (ResMLP, {}),
    "vit": (ViT, _VIT),
    "vit-mean": (ViT, {**_VIT, "pool": "mean"}),
}


def depth_factory(model: str, width: int, **kwargs: Any) -> Callable[[int], nn.Module]:
    """``depth -> model`` at ``width`` for a model of :data:`DEPTH_MODELS`."""
    if model not in DEPTH_MODELS:
        raise ValueError(f"model must be one of {sorted(DEPTH_MODELS)}, not {model!r}")
    cls, fixed = DEPTH_MODELS[model]

    def make(depth: int) -> nn.Module:
        return cls(width, depth=depth, **{**fixed, **kwargs})

    return make


#: How :func:`fold_blocks` names a stack's folded layer (``P.<tag>.rest``) and which blocks of a
#: model with ``d`` blocks it averages.
_FOLDS: dict[str, Callable[[int], Sequence[int]]] = {
    "#": range,
    "first": lambda d: [0],
    "last": lambda d: [d - 1],
}


def fold_blocks(result: CoordCheck, prefixes: Sequence[str]) -> CoordCheck:
    """``result`` (across depths) with the per-block layers of the stacks ``prefixes`` folded
    into ``P.#.rest``, ``P.first.rest`` and ``P.last.rest`` (see the module docstring)."""
    depths = result.widths
    folded: dict[str, tuple[str, str]] = {}  # layer -> (prefix, rest)
    for lay in result.layers:
        for p in prefixes:
            m = re.match(rf"{re.escape(p)}\.(\d+)([.:].*)$", lay.name)
            if m:
                folded[lay.name] = (p, m.group(2))
    layers: list[Layer] = []
    values = {k: v for k, v in result.values.items() if k[1] not in folded}
    seen: set[tuple[str, str]] = set()
    for lay in result.layers:
        if lay.name not in folded:
            layers.append(lay)
            continue
        p, rest = folded[lay.name]
        if (p, rest) in seen:
            continue
        seen.add((p, rest))
        for tag, pick in _FOLDS.items():
            name = f"{p}.{tag}{rest}"
            layers.append(dataclasses.replace(lay, name=name))
            for t in range(result.steps):
                for q in {k[2] for k in result.values if k[1] == lay.name}:
                    values[(t, name, q)] = tuple(
                        sum(result.values[(t, f"{p}.{i}{rest}", q)][k] for i in pick(d))
                        / len(pick(d))
                        for k, d in enumerate(depths)
                    )
    return dataclasses.replace(result, layers=tuple(layers), values=values)


def block_means(result: CoordCheck) -> CoordCheck:
    """``result`` (:func:`fold_blocks`'d) without the first and last blocks' layers: the
    blocks' means ``P.#.rest`` and the layers outside the blocks (for a readable plot)."""
    edges = "|".join(tag for tag in _FOLDS if tag != "#")
    keep = tuple(lay for lay in result.layers if not re.search(rf"\.({edges})[.:]", lay.name))
    names = {lay.name for lay in keep}
    values = {k: v for k, v in result.values.items() if k[1] in names}
    return dataclasses.replace(result, layers=keep, values=values)


def plot_depth_checks(results: Sequence[tuple[str, CoordCheck]], path: str | Path) -> Path:
    """Plot labelled depth checks (``(setting, result)``, as :func:`depth_checks` returns):
    :func:`block_means` of each against depth, one column a setting titled by its label."""
    return plot_coord_checks(
        [block_means(res) for _, res in results],
        path,
        axis="depth",
        titles=[label for label, _ in results],
    )


def depth_records(
    results: Sequence[tuple[str, CoordCheck]], step: int | None = None
) -> list[dict[str, Any]]:
    """The slope records (:func:`mup2.coordcheck.records`) of labelled depth checks, each with
    its ``setting`` label; ``step``: that step's only (default: every step)."""
    return [dict(rec, setting=label) for label, res in results for rec in records([res], step)]


def coord_check_depth(
    factory: Callable[[int], nn.Module],
    depths: Sequence[int],
    inputs: Tensor,
    targets: Tensor,
    *,
    base_depth: int | None = None,
    **kwargs: Any,
) -> CoordCheck:
    """:func:`mup2.coordcheck.coord_check` across ``depths`` (``factory(depth)`` at a fixed
    width) against ``factory(base_depth)`` (default: the smallest depth), the blocks folded
    (:func:`fold_blocks`). ``kwargs`` go to ``coord_check`` (``scheme``, ``rule``, ``scaling``,
    ``alpha``: ``None`` for width only, ``base_optimizer``, ...). The result's ``widths`` are
    the depths."""
    depths = [int(d) for d in depths]
    with torch.device("meta"):
        prefixes = list(find_stacks(factory(depths[-1])))
    if not prefixes:
        raise ValueError(
            "the factory's models have no stack of residual blocks (an nn.ModuleList or "
            "nn.Sequential of blocks of one class): nothing to sweep in depth"
        )
    base = depths[0] if base_depth is None else base_depth
    result = coord_check(factory, depths, inputs, targets, base_width=base, **kwargs)
    return fold_blocks(result, prefixes)


def depth_batch(model: str, batch_size: int = 32, in_features: int = 32) -> tuple[Tensor, Tensor]:
    """The fixed batch of the depth check (seed 0): for a ViT of :data:`DEPTH_MODELS` images
    ``(B, 3, 8, 8)``, else inputs ``(B, in_features)``; labels ``(B,)`` in ``0..9``."""
    gen = torch.Generator().manual_seed(0)
    if DEPTH_MODELS[model][0] is ViT:
        x = torch.randn(batch_size, 3, 8, 8, generator=gen)
    else:
        x = torch.randn(batch_size, in_features, generator=gen)
    return x, torch.randint(0, 10, (batch_size,), generator=gen)


def depth_checks(
    model: str,
    depths: Sequence[int],
    *,
    width: int,
    settings: Sequence[tuple[str, float | None, str]],
    base_depth: int | None = None,
    in_features: int = 32,
    batch_size: int = 32,
    **kwargs: Any,
) -> list[tuple[str, CoordCheck]]:
    """The depth check of the command: one :func:`coord_check_depth` per setting
    ``(label, alpha, scaling)`` of ``model`` (:data:`DEPTH_MODELS`) at ``width``."""
    extra = {"in_features": in_features} if DEPTH_MODELS[model][0] is ResMLP else {}
    factory = depth_factory(model, width, **extra)
    x, y = depth_batch(model, batch_size, in_features)
    return [
        (
            label,
            coord_check_depth(
                factory, depths, x, y, base_depth=base_depth, alpha=alpha, scaling=scaling, **kwargs
            ),
        )
        for label, alpha, scaling in settings
    ]


def _slope(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:+.2f}"  # –: a layer the rule does not perturb


def format_depth_summary(results: Sequence[tuple[str, CoordCheck]], markdown: bool = True) -> str:
    """One row per setting and folded block layer (and the layers outside the blocks): slopes
    of activation, update and effective perturbation against log2 depth, and the update's and
    effective perturbation's slopes relative to the layer's own activation (a branch output
    carries the branch multiplier ``D**-alpha``, which the relative slope removes)."""
    cols = ["setting", "layer", "activation", "update", "eff. pert.", "update rel.", "eff. rel."]
    rows = []
    for label, r in results:
        for lay in r.layers:
            if ":logits" in lay.name:
                continue
            a, u, e = (
                r.slope(lay.name, q) for q in ("activation", "update", "effective_perturbation")
            )
            rows.append([label, lay.name, *(_slope(v) for v in (a, u, e, u - a, e - a))])
    return format_table(rows, cols, markdown=markdown)
