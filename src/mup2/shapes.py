"""Width bookkeeping: base shapes, fan multipliers and role inference for every trainable tensor.

Conventions (``docs/parametrization.md``): a weight has shape ``(fan_out, fan_in, *kernel)``,
except the module types in :data:`FAN_AXES` (``nn.Embedding`` is ``(fan_in, fan_out)``,
transposed convolutions ``(fan_in, fan_out, *kernel)``). Vectors have ``fan_in = 1``; 0-d
tensors have no fan. Kernel dimensions never scale. ``m_in``/``m_out`` are the ratios of a
tensor's fans to the base model's.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import torch
from torch import nn

__all__ = [
    "FAN_AXES",
    "NORM_TYPES",
    "BaseSpec",
    "Role",
    "ShapeError",
    "TensorShape",
    "infer_shapes",
    "match_patterns",
    "named_parameters_with_owners",
    "normalize_name",
    "unwrap",
]


class ShapeError(ValueError):
    """The model cannot be matched with its base, or a role cannot be inferred."""


class Role(StrEnum):
    """How a tensor's dimensions grow with width (math note, section 1)."""

    INPUT = "input"  # fan_out grows: first layer, embeddings, every bias and norm parameter
    HIDDEN = "hidden"  # both grow
    OUTPUT = "output"  # fan_in grows: the readout
    SCALAR = "scalar"  # neither grows


#: ``(fan_out axis, fan_in axis)`` of ``weight`` for modules that differ from ``(0, 1)``.
FAN_AXES: dict[type[nn.Module], tuple[int, int]] = {
    nn.Embedding: (1, 0),
    nn.EmbeddingBag: (1, 0),
    nn.ConvTranspose1d: (1, 0),
    nn.ConvTranspose2d: (1, 0),
    nn.ConvTranspose3d: (1, 0),
}

#: Module types whose parameters count as normalization parameters (used by SAM-ON).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
)

#: A base given as a model, a mapping ``name -> shape``, or a width multiplier.
BaseSpec = nn.Module | Mapping[str, Sequence[int]] | float | int


@dataclass(frozen=True)
class TensorShape:
    """Everything mup2 knows about one trainable tensor's width.

    ``name`` is the normalized name (no ``module.``/``_orig_mod.`` wrapper prefixes); ``aliases``
    lists other names of the same tensor (tied weights). ``source`` is ``"inferred"``,
    ``"structural"`` (base given as a multiplier) or ``"override"``.
    """

    name: str
    shape: tuple[int, ...]
    base_shape: tuple[int, ...]
    role: Role
    m_in: float
    m_out: float
    module_type: str
    norm: bool = False
    aliases: tuple[str, ...] = ()
    source: str = "inferred"

    @property
    def r(self) -> float:
        """``m_out / m_in``: the μP² layerwise perturbation multiplier and μP-SGD LR multiplier."""
        return self.m_out / self.m_in

    @property
    def width(self) -> float:
        """The tensor's own width multiplier: ``m_out`` if it grows, else ``m_in``."""
        return self.m_out if self.m_out != 1.0 else self.m_in

    def with_role(self, role: Role, source: str = "override") -> TensorShape:
        """Same tensor, another role; ``m_in``/``m_out`` follow the role from the tensor's width."""
        m = max(_ratios(self.shape, self.base_shape), key=lambda x: abs(math.log(x)), default=1.0)
        m_in, m_out = {
            Role.INPUT: (1.0, m),
            Role.HIDDEN: (m, m),
            Role.OUTPUT: (m, 1.0),
            Role.SCALAR: (1.0, 1.0),
        }[role]
        return replace(self, role=role, m_in=m_in, m_out=m_out, source=source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "base_shape": list(self.base_shape),
            "role": self.role.value,
            "m_in": self.m_in,
            "m_out": self.m_out,
            "module_type": self.module_type,
            "norm": self.norm,
            "aliases": list(self.aliases),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorShape:
        return cls(
            name=str(d["name"]),
            shape=tuple(int(x) for x in d["shape"]),
            base_shape=tuple(int(x) for x in d["base_shape"]),
            role=Role(d["role"]),
            m_in=float(d["m_in"]),
            m_out=float(d["m_out"]),
            module_type=str(d["module_type"]),
            norm=bool(d["norm"]),
            aliases=tuple(str(a) for a in d["aliases"]),
            source=str(d["source"]),
        )


_WRAPPER_PREFIXES = (
    "module.",
    "_orig_mod.",
    "_fsdp_wrapped_module.",
    "_checkpoint_wrapped_module.",
)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP/DataParallel/``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
            continue
        return model


def normalize_name(name: str) -> str:
    """Strip wrapper prefixes (``module.``, ``_orig_mod.``, FSDP) from a parameter name."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    for prefix in _WRAPPER_PREFIXES[2:]:  # FSDP/checkpoint wrappers also appear mid-name
        name = name.replace("." + prefix, ".")
    return name


@dataclass(frozen=True)
class _Owner:
    name: str
    module: nn.Module
    local: str


def named_parameters_with_owners(
    model: nn.Module,
) -> Iterator[tuple[str, nn.Parameter, list[_Owner]]]:
    """Yield ``(name, param, owners)`` once per trainable tensor, in ``named_parameters`` order.

    ``owners`` lists every (full name, module, attribute) under which the tensor is registered,
    so tied weights yield once with all their aliases.
    """
    model = unwrap(model)
    owners: dict[int, list[_Owner]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for local, p in module._parameters.items():
            if p is not None:
                full = f"{mod_name}.{local}" if mod_name else local
                owners.setdefault(id(p), []).append(_Owner(full, module, local))
    for name, p in model.named_parameters():
        if p.requires_grad:
            yield name, p, owners[id(p)]


def _ratios(shape: Sequence[int], base: Sequence[int]) -> list[float]:
    return [s / b for s, b in zip(shape, base, strict=True) if s != b]


def _fan_axes(module: nn.Module, local: str, ndim: int) -> tuple[int | None, int | None]:
    if ndim == 0:
        return None, None
    if ndim == 1:
        return 0, None
    for typ, axes in FAN_AXES.items():
        if isinstance(module, typ) and local == "weight":
            return axes
    return 0, 1


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd)


def _role_of(m_in: float, m_out: float) -> Role:
    grows_in, grows_out = m_in != 1.0, m_out != 1.0
    if grows_out and grows_in:
        return Role.HIDDEN
    if grows_out:
        return Role.INPUT
    if grows_in:
        return Role.OUTPUT
    return Role.SCALAR


def _infer_one(
    name: str, p: torch.Tensor, base_shape: tuple[int, ...], owner: _Owner
) -> TensorShape:
    shape = tuple(p.shape)
    mtype = type(owner.module).__name__
    if len(shape) != len(base_shape):
        raise ShapeError(
            f"{name}: shape {list(shape)} has {len(shape)} dims "
            f"but the base's is {list(base_shape)}"
        )
    if any(s <= 0 for s in base_shape):
        raise ShapeError(f"{name}: base shape {list(base_shape)} has an empty dimension")
    out_ax, in_ax = _fan_axes(owner.module, owner.local, len(shape))
    kernel = [d for d in range(len(shape)) if d not in (out_ax, in_ax)]
    grown_kernel = [d for d in kernel if shape[d] != base_shape[d]]
    norm = isinstance(owner.module, NORM_TYPES)
    if grown_kernel:
        ratios = _ratios(shape, base_shape)
        if _is_conv(owner.module) or len(ratios) != 1:
            raise ShapeError(
                f"cannot infer the role of {name} ({mtype}): shape {list(shape)} vs base "
                f"{list(base_shape)} grows along dims {grown_kernel}, which are neither fan_out "
                f"(dim {out_ax}) nor fan_in (dim {in_ax}). Override it by name, e.g. "
                f"overrides={{'{name}': 'input'}}"
            )
        # A tensor with one growing dimension anywhere (cls/pos tokens, bias_k) is vector-like.
        return TensorShape(name, shape, base_shape, Role.INPUT, 1.0, ratios[0], mtype, norm)
    m_out = shape[out_ax] / base_shape[out_ax] if out_ax is not None else 1.0
    m_in = shape[in_ax] / base_shape[in_ax] if in_ax is not None else 1.0
    return TensorShape(name, shape, base_shape, _role_of(m_in, m_out), m_in, m_out, mtype, norm)


def _structural_roles(
    entries: Sequence[tuple[str, torch.Tensor, list[_Owner]]], m: float
) -> dict[str, TensorShape]:
    """Roles from module order when the base is a bare width multiplier ``m``.

    The first module holding a matrix is input-like, the last output-like, the rest hidden;
    vectors are input-like except those of the last module (fixed size, so scalar-like).
    """
    matrix_modules = [owners[0].module for _, p, owners in entries if p.ndim >= 2]
    first = matrix_modules[0] if matrix_modules else None
    last = matrix_modules[-1] if matrix_modules else None
    out: dict[str, TensorShape] = {}
    for name, p, owners in entries:
        mod = owners[0].module
        if p.ndim >= 2:
            role = (
                Role.SCALAR
                if mod is first and mod is last
                else Role.INPUT
                if mod is first
                else Role.OUTPUT
                if mod is last
                else Role.HIDDEN
            )
        else:
            role = Role.SCALAR if (mod is last or p.ndim == 0) else Role.INPUT
        m_in = m if role in (Role.HIDDEN, Role.OUTPUT) else 1.0
        m_out = m if role in (Role.HIDDEN, Role.INPUT) else 1.0
        base_shape = list(p.shape)
        out_ax, in_ax = _fan_axes(mod, owners[0].local, p.ndim)
        for ax, mult in ((out_ax, m_out), (in_ax, m_in)):
            if ax is not None and mult != 1.0:
                base_shape[ax] = max(1, round(p.shape[ax] / mult))
        out[name] = TensorShape(
            name,
            tuple(p.shape),
            tuple(base_shape),
            role,
            m_in,
            m_out,
            type(mod).__name__,
            isinstance(mod, NORM_TYPES),
            source="structural",
        )
    return out


def _base_shapes(base: nn.Module | Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    if isinstance(base, nn.Module):
        return {normalize_name(n): tuple(p.shape) for n, p, _ in named_parameters_with_owners(base)}
    return {normalize_name(n): tuple(int(x) for x in s) for n, s in base.items()}


def infer_shapes(model: nn.Module, base: BaseSpec) -> dict[str, TensorShape]:
    """Infer ``m_in``, ``m_out`` and the role of every trainable tensor of ``model``.

    ``base`` is a model of the same architecture at the base width (a ``meta``-device instance
    is enough), a mapping of parameter names to base shapes, or a width multiplier (roles then
    come from module order; see :func:`_structural_roles`). Returns ``{name: TensorShape}`` in
    parameter order. Raises :class:`ShapeError` naming the tensor on any mismatch.
    """
    entries = [(normalize_name(n), p, o) for n, p, o in named_parameters_with_owners(model)]
    if not entries:
        raise ShapeError("the model has no trainable parameters")
    if isinstance(base, bool) or not isinstance(base, nn.Module | Mapping | float | int):
        raise TypeError(
            "base must be an nn.Module, a mapping name -> shape, or a width multiplier, "
            f"not {type(base).__name__}"
        )
    if isinstance(base, float | int):
        if not (math.isfinite(base) and base > 0):
            raise ShapeError(f"width multiplier must be a positive number, got {base}")
        shapes = _structural_roles(entries, float(base))
    else:
        base_shapes = _base_shapes(base)
        names = {n for n, _, _ in entries}
        missing = [n for n in base_shapes if n not in names]
        if missing:
            raise ShapeError(
                f"the base has tensors the model lacks: {missing[:5]}; "
                "is the base the same architecture?"
            )
        shapes = {}
        for name, p, owners in entries:
            if name not in base_shapes:
                hint = difflib.get_close_matches(name, list(base_shapes), n=1)
                raise ShapeError(
                    f"{name} (shape {list(p.shape)}) has no counterpart in the base"
                    + (f"; closest base name: {hint[0]}" if hint else "")
                )
            shapes[name] = _infer_one(name, p, base_shapes[name], owners[0])
    for name, _, owners in entries:
        aliases = tuple(normalize_name(o.name) for o in owners[1:])
        if aliases:
            shapes[name] = replace(shapes[name], aliases=aliases)
    return shapes


def match_patterns(
    patterns: Sequence[str], names: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """``{pattern: [matching names]}`` with fnmatch patterns over each name and its aliases.

    Raises :class:`ShapeError` for a pattern that matches nothing, with the closest names.
    """
    found: dict[str, list[str]] = {}
    for pat in patterns:
        hits = [
            n
            for n, aliases in names.items()
            if any(fnmatch.fnmatchcase(a, pat) for a in (n, *aliases))
        ]
        if not hits:
            close = difflib.get_close_matches(pat, list(names), n=3, cutoff=0.4)
            raise ShapeError(
                f"override pattern {pat!r} matches no parameter"
                + (f"; did you mean one of {close}?" if close else "")
                + " (patterns are fnmatch-style over parameter names, e.g. 'head.*' or '*.bias')"
            )
        found[pat] = hits
    return found
