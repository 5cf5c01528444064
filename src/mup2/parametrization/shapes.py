"""Width bookkeeping: base shapes, fan multipliers and role inference for every trainable tensor.

Conventions (``docs/parametrization.md``): a weight has shape ``(fan_out, fan_in, *kernel)``,
except the module types in the layout registry :data:`FAN_AXES` (``nn.Embedding`` is
``(fan_in, fan_out)``, transposed convolutions ``(fan_in, fan_out, *kernel)``, Hugging Face's
``Conv1D`` ``(fan_in, fan_out)``). Vectors have ``fan_in = 1``; 0-d tensors have no fan. Kernel
dimensions never scale. ``m_in``/``m_out`` are the ratios of a tensor's fans to the base model's.

A tensor registered under several names (tied weights) has one role per use, each from its
owner's layout; an embedding tied to a readout is input-like (its embedding use), whatever the
declaration order, and its readout use is recorded as output-like (:meth:`TensorShape.use_role`).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import nn

from mup2.errors import check_instance, shown
from mup2.roles import Role

__all__ = [
    "FAN_AXES",
    "NORM_NAME_SUFFIXES",
    "NORM_TYPES",
    "BaseSpec",
    "Layout",
    "ShapeError",
    "TensorShape",
    "check_model",
    "infer_shapes",
    "is_norm",
    "layout_of",
    "match_patterns",
    "named_parameters_with_owners",
    "normalize_name",
    "register_layout",
    "role_overrides",
    "unwrap",
]


class ShapeError(ValueError):
    """The model cannot be matched with its base, or a role cannot be inferred."""


class Layout(NamedTuple):
    """Which axes of a module's matrix parameters are ``fan_out`` and ``fan_in``."""

    fan_out: int
    fan_in: int
    params: tuple[str, ...] = ("weight",)


#: The layout registry: module type, or qualified class name ``"package.module.Class"`` (matched
#: against every class of a module's MRO, so the package is never imported), to the
#: :class:`Layout` of its parameters (a plain ``(fan_out, fan_in)`` pair means ``weight``).
#: Modules not listed hold ``(fan_out, fan_in, *kernel)`` tensors. Add yours with
#: :func:`register_layout`.
FAN_AXES: dict[type[nn.Module] | str, Layout | tuple[int, int]] = {
    nn.Embedding: Layout(1, 0),
    nn.EmbeddingBag: Layout(1, 0),
    nn.ConvTranspose1d: Layout(1, 0),
    nn.ConvTranspose2d: Layout(1, 0),
    nn.ConvTranspose3d: Layout(1, 0),
    "transformers.pytorch_utils.Conv1D": Layout(1, 0),  # weight (nx, nf) = (fan_in, fan_out)
}


def register_layout(
    module: type[nn.Module] | str,
    fan_out: int,
    fan_in: int,
    params: Sequence[str] = ("weight",),
) -> None:
    """Declare that ``module``'s parameters ``params`` hold ``fan_out`` on axis ``fan_out`` and
    ``fan_in`` on axis ``fan_in``. ``module`` is a class or its qualified name (no import)."""
    if fan_out == fan_in:
        raise ValueError(f"fan_out and fan_in must be different axes, got {fan_out} twice")
    FAN_AXES[module] = Layout(fan_out, fan_in, tuple(params))


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def layout_of(module: nn.Module) -> Layout | None:
    """The registered :class:`Layout` of ``module``'s type (nearest class in its MRO), if any."""
    for cls in type(module).__mro__:
        for key in (cls, _qualname(cls)):
            found = FAN_AXES.get(key)
            if found is not None:
                return found if isinstance(found, Layout) else Layout(*found)
    return None


#: Module types whose parameters count as normalization parameters (used by SAM-ON).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
)
#: Class-name endings that also mark normalization modules (``LlamaRMSNorm``, ``T5LayerNorm``).
NORM_NAME_SUFFIXES: tuple[str, ...] = ("LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm")


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer: a :data:`NORM_TYPES` instance, or a class
    whose name ends with one of :data:`NORM_NAME_SUFFIXES`."""
    if isinstance(module, NORM_TYPES):
        return True
    return any(c.__name__.endswith(NORM_NAME_SUFFIXES) for c in type(module).__mro__)


#: A base given as a model, a mapping ``name -> shape``, or a width multiplier.
BaseSpec = nn.Module | Mapping[str, Sequence[int]] | float | int


@dataclass(frozen=True)
class TensorShape:
    """Everything mup2 knows about one trainable tensor's width.

    ``name`` is the normalized name (no ``module.``/``_orig_mod.`` wrapper prefixes); ``aliases``
    lists other names of the same tensor (tied weights) and ``alias_roles`` the role of each of
    those uses (see :meth:`use_role`). ``source`` is ``"inferred"``, ``"structural"`` (base
    given as a multiplier) or ``"override"``.
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
    alias_roles: tuple[Role, ...] = ()

    def use_role(self, name: str) -> Role:
        """The role of the use of this tensor under ``name`` (the tensor's own name or an alias):
        a tied readout's use is output-like while the tensor (its embedding use) is input-like."""
        if name == self.name:
            return self.role
        if name in self.aliases:
            i = self.aliases.index(name)
            return self.alias_roles[i] if i < len(self.alias_roles) else self.role
        raise KeyError(f"{name!r} is not a name of {self.name}")

    @property
    def fan_ratio(self) -> float:
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
            "alias_roles": [r.value for r in self.alias_roles],
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
            alias_roles=tuple(Role(r) for r in d.get("alias_roles", ())),
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
    order: int = 0  # the module's position in ``named_modules`` (declaration order)


def named_parameters_with_owners(
    model: nn.Module,
) -> Iterator[tuple[str, nn.Parameter, list[_Owner]]]:
    """Yield ``(name, param, owners)`` once per trainable tensor, in ``named_parameters`` order.

    ``owners`` lists every (full name, module, attribute) under which the tensor is registered,
    so tied weights yield once with all their aliases.
    """
    model = unwrap(model)
    owners: dict[int, list[_Owner]] = {}
    for order, (mod_name, module) in enumerate(model.named_modules(remove_duplicate=False)):
        for local, p in module._parameters.items():
            if p is not None:
                full = f"{mod_name}.{local}" if mod_name else local
                owners.setdefault(id(p), []).append(_Owner(full, module, local, order))
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
    layout = layout_of(module)
    if layout is not None and local in layout.params:
        return layout.fan_out, layout.fan_in
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
    norm = is_norm(owner.module)
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
    if in_ax is not None and out_ax is not None and (m_in - 1.0) * (m_out - 1.0) < 0:
        raise ShapeError(
            f"{name} ({mtype}): from base to model fan_in goes {base_shape[in_ax]} -> "
            f"{shape[in_ax]} and fan_out {base_shape[out_ax]} -> {shape[out_ax]}; one grows and "
            "the other shrinks, so the base differs from the model in a fixed dimension (input "
            "features, classes): build the base with the model's fixed dimensions, changing "
            "only its widths"
        )
    return TensorShape(name, shape, base_shape, _role_of(m_in, m_out), m_in, m_out, mtype, norm)


def _structural_roles(
    entries: Sequence[tuple[str, torch.Tensor, list[_Owner]]], m: float
) -> dict[str, TensorShape]:
    """Roles from module order when the base is a bare width multiplier ``m``.

    The first module holding a matrix is input-like, the last output-like, the rest hidden;
    vectors are input-like except those of the last module (fixed size, so scalar-like). A tied
    tensor gets one role per owner (see :func:`_resolve_uses`).
    """
    matrix_owners = sorted(
        (o for _, p, owners in entries if p.ndim >= 2 for o in owners), key=lambda o: o.order
    )
    first = matrix_owners[0].module if matrix_owners else None
    last = matrix_owners[-1].module if matrix_owners else None

    def one(name: str, p: torch.Tensor, owner: _Owner) -> TensorShape:
        mod = owner.module
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
        out_ax, in_ax = _fan_axes(mod, owner.local, p.ndim)
        for ax, mult in ((out_ax, m_out), (in_ax, m_in)):
            if ax is not None and mult != 1.0:
                base_shape[ax] = max(1, round(p.shape[ax] / mult))
        return TensorShape(
            name,
            tuple(p.shape),
            tuple(base_shape),
            role,
            m_in,
            m_out,
            type(mod).__name__,
            is_norm(mod),
            source="structural",
        )

    out = {}
    for _, p, owners in entries:
        ts = _resolve_uses([one(normalize_name(o.name), p, o) for o in owners])
        out[ts.name] = ts
    return out


def _resolve_uses(uses: Sequence[TensorShape]) -> TensorShape:
    """One :class:`TensorShape` for a tensor from the shapes of its uses (one per owner), named
    after its primary use, with the other names as aliases.

    Uses that agree give that role (the first is primary). An embedding tied to a readout (an
    input-like and an output-like use) is input-like and named after its embedding use, whatever
    the order of declaration; its output-like uses are recorded in ``alias_roles`` (μP then puts
    a ``1/m`` multiplier on the readout's output).
    """
    roles = {u.role for u in uses}
    if len(roles) == 1:
        primary = uses[0]
    elif roles == {Role.INPUT, Role.OUTPUT}:
        primary = next(u for u in uses if u.role is Role.INPUT)
    else:  # not reachable from shapes alone (roles differ only by which axis is fan_in)
        listed = ", ".join(f"{u.name} ({u.role.value})" for u in uses)
        raise ShapeError(
            f"{uses[0].name} is tied across uses with incompatible roles: {listed}; untie them "
            f"or override the role by name, e.g. overrides={{'{uses[0].name}': 'hidden'}}"
        )
    aliases = [u for u in uses if u is not primary]
    return replace(
        primary,
        norm=any(u.norm for u in uses),
        aliases=tuple(u.name for u in aliases),
        alias_roles=tuple(u.role for u in aliases) if len(roles) > 1 else (),
    )


def _base_shapes(base: nn.Module | Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the base, every name of a tied tensor included (so a base that lost
    its ties, e.g. ``Model(cfg).to("meta")``, still matches)."""
    if isinstance(base, nn.Module):
        return {
            normalize_name(o.name): tuple(p.shape)
            for _, p, owners in named_parameters_with_owners(base)
            for o in owners
        }
    return {normalize_name(n): tuple(int(x) for x in s) for n, s in base.items()}


def check_model(model: object, name: str = "model") -> None:
    """Raise :class:`TypeError` unless ``model`` is a built ``nn.Module`` (not its class, not
    ``model.parameters()``)."""
    check_instance(name, model, nn.Module, "an nn.Module (a built model)")


def infer_shapes(model: nn.Module, base: BaseSpec) -> dict[str, TensorShape]:
    """Infer ``m_in``, ``m_out`` and the role of every trainable tensor of ``model``.

    ``base`` is a model of the same architecture at the base width (a ``meta``-device instance
    is enough), a mapping of parameter names to base shapes, or a width multiplier (roles then
    come from module order; see :func:`_structural_roles`). Returns ``{name: TensorShape}`` in
    parameter order, a tied tensor under the name of its primary use (the embedding's, for an
    embedding tied to a readout). Raises :class:`ShapeError` naming the tensor on any mismatch.
    """
    check_model(model)
    if isinstance(base, bool) or not isinstance(base, nn.Module | Mapping | float | int):
        fix = ""
        if isinstance(base, type):
            fix = (
                f"; build it at the base width (the meta device is enough): "
                f"with torch.device('meta'): {base.__qualname__}(...)"
            )
        raise TypeError(
            "base must be a model at the base width (an nn.Module), a mapping name -> shape, "
            f"or a width multiplier, got {shown(base)}{fix}"
        )
    entries = [(normalize_name(n), p, o) for n, p, o in named_parameters_with_owners(model)]
    if not entries:
        raise ShapeError("the model has no trainable parameters")
    if isinstance(base, float | int):
        if not (math.isfinite(base) and base > 0):
            raise ShapeError(f"width multiplier must be a positive number, got {base}")
        shapes = _structural_roles(entries, float(base))
    else:
        base_shapes = _base_shapes(base)
        names = {normalize_name(o.name) for _, _, owners in entries for o in owners}
        missing = [n for n in base_shapes if n not in names]
        if missing:
            raise ShapeError(
                f"the base has tensors the model lacks: {missing[:5]}; "
                "is the base the same architecture?"
            )
        shapes = {}
        for name, p, owners in entries:
            own_names = [name, *(normalize_name(o.name) for o in owners)]
            base_shape = next((base_shapes[n] for n in own_names if n in base_shapes), None)
            if base_shape is None:
                hint = difflib.get_close_matches(name, list(base_shapes), n=1)
                raise ShapeError(
                    f"{name} (shape {list(p.shape)}) has no counterpart in the base"
                    + (f"; closest base name: {hint[0]}" if hint else "")
                )
            ts = _resolve_uses(
                [_infer_one(normalize_name(o.name), p, base_shape, o) for o in owners]
            )
            shapes[ts.name] = ts
    return shapes


def role_overrides(model: nn.Module, other: BaseSpec) -> dict[str, str]:
    """Overrides (:meth:`mup2.Parametrization.infer`) giving each tensor of ``model`` the role
    it has as width changes, read from ``other``: the same architecture at another width.

    A model that is its own base has no growing dimension, so :func:`infer_shapes` makes every
    tensor scalar-like there. Where the roles matter at that width (a SAM rule that perturbs by
    role, ``sam-readout``), these overrides restore them and change no multiplier: with nothing
    growing, every role's is 1. Keys are the names escaped as fnmatch patterns."""
    return {_escape(n): ts.role.value for n, ts in infer_shapes(model, other).items()}


def _escape(name: str) -> str:
    """``name`` as an fnmatch pattern that matches it alone."""
    return re.sub(r"([*?\[])", r"[\1]", name)


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
