"""The perturbation coordinate check (``docs/math.md`` §5): measure, across widths, how each
parametrized module's output moves under SAM's perturbation and the base optimizer's update.

For every module holding trainable parameters directly (Linear, Conv, norms, modules with
several parameters), at each measured step ``t`` with weights ``w_t``:

- ``activation``: RMS of the module's output at ``w_t``;
- ``effective_perturbation``: RMS of ``M(x; W+eps_W) - M(x; W)``, ``x`` the module's own input at
  ``w_t``, only its own parameters perturbed (for Linear: ``eps_W x + eps_b``);
- ``total_perturbation``: RMS of the change of the module's output when all parameters are
  perturbed (the model's forward at ``w_t + eps`` against the one at ``w_t``);
- ``update``: RMS of ``M(x; W+dW) - M(x; W)`` after one SAM step (``dW = w_{t+1} - w_t``).

Modules are evaluated with :func:`torch.func.functional_call` on snapshots of the parameters and
observed with hooks that are removed afterwards; the user's modules are never edited. A module's
input is recorded before any other forward pre-hook runs and its output after every forward
hook, so replaying it applies each hook once. A module the model never calls (its parameters
used functionally, like ``nn.MultiheadAttention.out_proj``) is measured at the output of its
nearest called ancestor, with only its own parameters changed. Attention logits, layer
``"<module>:logits"`` of the module that computes them, group ``attention``, are measured
whether or not they go through SDPA: the ``q.k * scale`` (mask added) of every
``F.scaled_dot_product_attention`` call, and the input of every softmax over the last dimension
that an attention module (one with a head dimension: ``head_dim``, ``attention_head_size`` or
``d_head``, as ``nn.MultiheadAttention`` and Hugging Face's have) takes itself, as
``nn.MultiheadAttention`` does with ``need_weights=True``, eager Hugging Face attention and
attention written out by hand (``F.softmax``, ``torch.softmax`` or ``Tensor.softmax``). A
softmax elsewhere is no attention's and is not taken; masked entries are left out. They have
``activation``, ``update`` and ``total_perturbation`` (changes of the whole forward) and no
effective perturbation (``nan``). Each forward and functional call starts from the same RNG
seed, so dropout masks agree. A warning (a kept tensor, an attention scale that cannot be set)
is given once, at the largest width, not once per width and seed.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mup2.errors import (
    check_class,
    check_instance,
    check_integer,
    check_iterable,
    check_number,
    shown,
)
from mup2.optim.contexts import frozen_bn_stats
from mup2.optim.families import family_of_variant
from mup2.optim.lightsam import LightSAM, Variant
from mup2.optim.onepass import RWP, onepass_optimizer
from mup2.optim.rules import get_rule
from mup2.optim.sam import SAM
from mup2.parametrization.attention import head_dim
from mup2.parametrization.parametrize import Override, Parametrization
from mup2.parametrization.schemes import MUP_SGD, Scheme, get_scheme
from mup2.parametrization.shapes import BaseSpec, is_norm, normalize_name, role_overrides
from mup2.roles import Role

__all__ = [
    "EFFECTIVE_SLOPE",
    "GROUPS",
    "QUANTITIES",
    "CoordCheck",
    "Layer",
    "LossFn",
    "ModelFactory",
    "Slope",
    "coord_check",
    "fit_slope",
    "verdict",
]

QUANTITIES = ("activation", "update", "effective_perturbation", "total_perturbation")
#: Layer groups of Table 1; a module's group is its weight's role, or ``normalization``.
GROUPS = ("input-like", "hidden-like", "output-like", "normalization", "scalar-like", "attention")
#: A layer is effectively perturbed when its slope is finite and above this (``docs/math.md`` §5).
EFFECTIVE_SLOPE = -0.25

ModelFactory = Callable[[int], nn.Module]
LossFn = Callable[[Tensor, Tensor], Tensor]


def fit_slope(widths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``log2(value)`` against ``log2(width)``; ``nan`` if any value is
    zero, negative or not finite (such a series has no power law to fit)."""
    if len(widths) != len(values) or len(widths) < 2:
        raise ValueError("fit_slope needs as many values as widths, and at least two")
    if not all(math.isfinite(v) and v > 0 for v in values):
        return math.nan
    x, y = np.log2(np.asarray(widths, float)), np.log2(np.asarray(values, float))
    return float(np.polyfit(x, y, 1)[0])


def verdict(slope: float, values: Sequence[float] = ()) -> str:
    """``"zero"`` (never moves), ``"undefined"`` (nan), ``"vanishes"`` (slope <= -0.25),
    ``"grows"`` (slope > +0.25) or ``"Θ(1)"``."""
    if values and all(v == 0.0 for v in values):
        return "zero"
    if not math.isfinite(slope):
        return "undefined"
    if slope <= EFFECTIVE_SLOPE:
        return "vanishes"
    return "grows" if slope > -EFFECTIVE_SLOPE else "Θ(1)"


@dataclass(frozen=True)
class Layer:
    """A parametrized module: its name in the model, type, role (of its weight, or else of its
    first parameter, at the largest width) and Table 1 group."""

    name: str
    module_type: str
    role: Role
    group: str


@dataclass(frozen=True)
class Slope:
    """The fitted log2-log2 slope of one quantity of one layer, with the values it was fit on."""

    scheme: str
    rule: str
    scaling: str
    quantity: str
    layer: str
    role: str
    group: str
    module_type: str
    step: int
    slope: float
    widths: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def verdict(self) -> str:
        return verdict(self.slope, self.values)

    @property
    def effective(self) -> bool:
        """Finite slope above :data:`EFFECTIVE_SLOPE` (the "effectively perturbed" criterion)."""
        return math.isfinite(self.slope) and self.slope > EFFECTIVE_SLOPE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``nan`` becomes ``None``)."""

        def num(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "scheme": self.scheme,
            "rule": self.rule,
            "scaling": self.scaling,
            "quantity": self.quantity,
            "layer": self.layer,
            "role": self.role,
            "group": self.group,
            "module_type": self.module_type,
            "step": self.step,
            "slope": num(self.slope),
            "verdict": self.verdict,
            "effective": self.effective,
            "widths": list(self.widths),
            "values": [num(v) for v in self.values],
        }


@dataclass(frozen=True)
class CoordCheck:
    """Measurements of one (scheme, rule, scaling) across widths.

    ``values[(step, layer, quantity)]`` holds, per width, the mean over ``seeds`` of the RMS.
    """

    scheme: str
    rule: str
    scaling: str
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    steps: int
    rho: float
    lr: float
    layers: tuple[Layer, ...]
    values: Mapping[tuple[int, str, str], tuple[float, ...]] = field(repr=False)

    def layer(self, name: str) -> Layer:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(f"no layer {name!r}; layers: {[lay.name for lay in self.layers]}")

    def slope(self, layer: str, quantity: str, step: int = -1) -> float:
        """The fitted slope of ``quantity`` for ``layer`` at ``step`` (default: the last)."""
        if quantity not in QUANTITIES:
            raise ValueError(f"unknown quantity {quantity!r}; choose one of {list(QUANTITIES)}")
        self.layer(layer)
        return fit_slope(self.widths, self.values[(step % self.steps, layer, quantity)])

    def slopes(self, step: int | None = -1) -> list[Slope]:
        """One :class:`Slope` per layer and quantity at ``step`` (``None``: every step)."""
        steps = range(self.steps) if step is None else [step % self.steps]
        out = []
        for t in steps:
            for lay in self.layers:
                for q in QUANTITIES:
                    vals = self.values[(t, lay.name, q)]
                    out.append(
                        Slope(
                            self.scheme,
                            self.rule,
                            self.scaling,
                            q,
                            lay.name,
                            lay.role.value,
                            lay.group,
                            lay.module_type,
                            t,
                            fit_slope(self.widths, vals),
                            self.widths,
                            vals,
                        )
                    )
        return out


# -- measurement ------------------------------------------------------------------------------


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    if isinstance(widths, str):
        raise TypeError(
            f"widths must be a sequence of integers such as [64, 128, 256], got {shown(widths)}"
        )
    ws = tuple(check_iterable("widths", widths))
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in ws):
        raise ValueError(f"widths must be positive integers, got {list(ws)}")
    if len(ws) < 3:
        raise ValueError(
            f"a coordinate check needs at least 3 widths to fit a slope, got {list(ws)}; "
            "use e.g. 64,128,256,512,1024"
        )
    if any(b <= a for a, b in itertools.pairwise(ws)):
        raise ValueError(f"widths must be strictly increasing, got {list(ws)}")
    return ws


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


def _shapes_at(factory: ModelFactory, width: int) -> dict[str, tuple[int, ...]]:
    """Trainable parameter shapes of ``factory(width)``, built on the meta device when possible."""
    try:
        with torch.device("meta"):
            return _shapes(factory(width))
    except Exception:  # a factory that insists on real tensors: build it for real
        return _shapes(factory(width))


def _base_model(factory: ModelFactory, width: int) -> nn.Module:
    """The base model, on the meta device when the factory allows it."""
    try:
        with torch.device("meta"):
            return factory(width)
    except Exception:  # a factory that insists on real tensors: build it for real
        return factory(width)


def _check_factory(
    factory: ModelFactory, widths: Sequence[int], base_width: int
) -> dict[str, tuple[int, ...]]:
    """The base model's shapes; raises if two widths, or the largest and the base, build models
    of the same shapes (a factory that ignores its width)."""
    base = _shapes_at(factory, base_width)
    prev = base if base_width == widths[0] else _shapes_at(factory, widths[0])
    for a, b in itertools.pairwise(widths):
        cur = _shapes_at(factory, b)
        if cur == prev:
            raise ValueError(
                f"the model factory built models with the same parameter shapes at widths {a} "
                f"and {b}: does it pass its width argument on to the model?"
            )
        prev = cur
    if prev == base:
        raise ValueError(
            f"the model at width {widths[-1]} has the same parameter shapes as the base model at "
            f"width {base_width}: nothing scales with width"
        )
    return base


def _param_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that hold trainable parameters directly, by their first name (root: ``""``)."""
    out: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for name, mod in model.named_modules():
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        if any(p.requires_grad for p in mod.parameters(recurse=False)):
            out[name] = mod
    return out


def _layer(name: str, module: nn.Module, p: Parametrization) -> Layer:
    """The layer's role is its weight's (else its first parameter's) role *in this use*: a
    readout tied to an embedding is output-like, the embedding input-like."""
    own = dict(module.named_parameters(recurse=False))
    local = "weight" if "weight" in own else next(iter(own))
    full = normalize_name(f"{name}.{local}" if name else local)
    role = Role.SCALAR
    for spec in p.tensors.values():
        if full == spec.shape.name or full in spec.shape.aliases:
            role = spec.shape.use_role(full)
            break
    group = "normalization" if is_norm(module) else f"{role.value}-like"
    return Layer(name or "(root)", type(module).__name__, role, group)


def _detach(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple | list):
        return type(obj)(_detach(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


def _flat(obj: Any) -> Tensor:
    """A module's primary output (its first floating-point tensor, depth first: the attention
    output of ``(output, weights)``), flattened, in float64."""
    if isinstance(obj, Tensor):
        if obj.is_floating_point() or obj.is_complex():
            return obj.detach().reshape(-1).to(torch.float64)
    elif isinstance(obj, tuple | list | dict):
        for x in obj.values() if isinstance(obj, dict) else obj:
            found = _flat(x)
            if found.numel():
                return found
    return torch.zeros(0, dtype=torch.float64)


_Call = tuple[tuple[Any, ...], dict[str, Any], Tensor]  # (args, kwargs, flat output)


class _Recorder:
    """Hooks on every module of ``model``: while ``active``, the calls of ``modules`` (inputs
    before any other pre-hook, output after every forward hook), how often each module ran,
    and the attention logits of every attention, by the module running it (see
    :meth:`attention`)."""

    def __init__(self, model: nn.Module, modules: Mapping[str, nn.Module]) -> None:
        self.active = False
        self.measured = set(modules)
        self.calls: dict[str, list[_Call]] = {n: [] for n in modules}
        self.counts: dict[str, int] = {}
        self.logits: dict[str, list[Tensor]] = {}
        self._stack: list[str] = []
        self._pending: dict[str, list[tuple[Any, Any]]] = {n: [] for n in modules}
        self._attention = {n for n, m in model.named_modules() if head_dim(m) is not None}
        self._in_softmax = False
        self._handles = []
        for name, mod in model.named_modules():
            self._handles.append(
                mod.register_forward_pre_hook(self._pre(name), prepend=True, with_kwargs=True)
            )
            self._handles.append(
                mod.register_forward_hook(self._post(name), with_kwargs=True, always_call=True)
            )

    def _pre(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            self._stack.append(name)
            if self.active:
                self.counts[name] = self.counts.get(name, 0) + 1
                if name in self.measured:
                    self._pending[name].append((_detach(args), _detach(kwargs)))

        return hook

    def _post(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if self._stack:
                self._stack.pop()
            if self.active and name in self.measured and self._pending[name]:
                a, k = self._pending[name].pop()
                self.calls[name].append((a, k, _flat(output).clone()))

        return hook

    def _record(self, logits: Tensor, dtype: torch.dtype) -> None:
        """Record ``logits`` (float64) for the module running; masked entries (``-inf``, or
        below half of ``dtype``'s lowest value, as Hugging Face masks them) become ``nan``,
        left out of every RMS."""
        low = torch.finfo(dtype).min / 2
        logits = logits.masked_fill(~(logits.isfinite() & (logits > low)), math.nan)
        name = f"{self._stack[-1] if self._stack and self._stack[-1] else '(root)'}:logits"
        self.logits.setdefault(name, []).append(logits.reshape(-1))

    def _logit(
        self, q: Tensor, k: Tensor, scale: float | None, mask: Tensor | None, causal: bool
    ) -> None:
        """The logits of a ``scaled_dot_product_attention`` call, as its softmax sees them:
        with the mask added (a boolean one: ``-inf`` where ``False``) and, when ``causal``,
        ``-inf`` above the diagonal."""
        if k.shape[-3] != q.shape[-3] and q.dim() >= 3:
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        s = q.shape[-1] ** -0.5 if scale is None else scale
        q64, k64 = q.detach().to(torch.float64), k.detach().to(torch.float64)
        logits = (q64 @ k64.transpose(-2, -1)) * s
        if causal:
            keep = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).tril()
            logits = logits.masked_fill(~keep, -math.inf)
        dtype = q.dtype
        if mask is not None and mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, -math.inf)
        elif mask is not None:
            logits, dtype = logits + mask.detach().to(torch.float64), mask.dtype
        self._record(logits, dtype)

    def _softmax_input(self, x: Tensor, dim: Any) -> None:
        """Record a softmax's input as attention logits when an attention module (one with a
        head dimension, :func:`~mup2.parametrization.attention.head_dim`) applies it itself,
        over the last dimension."""
        if not (self._stack and self._stack[-1] in self._attention):
            return
        if not isinstance(dim, int) or dim not in (-1, x.dim() - 1) or not x.is_floating_point():
            return
        self._record(x.detach().to(torch.float64), x.dtype)

    @contextmanager
    def attention(self) -> Iterator[None]:
        """Within the block, record attention logits: the ``q.k * scale`` of every
        ``F.scaled_dot_product_attention`` call, and the input of a softmax that an attention
        module takes itself (``F.softmax``, ``torch.softmax``, ``Tensor.softmax``: the explicit
        path of ``nn.MultiheadAttention`` with ``need_weights=True``, eager Hugging Face
        attention, attention written out by hand)."""
        sdpa, f_softmax, t_softmax = F.scaled_dot_product_attention, F.softmax, torch.softmax
        own = "softmax" in vars(torch.Tensor)

        def recorded_sdpa(
            query: Tensor,
            key: Tensor,
            value: Tensor,
            attn_mask: Tensor | None = None,
            dropout_p: float = 0.0,
            is_causal: bool = False,
            scale: float | None = None,
            **kwargs: Any,
        ) -> Tensor:
            if self.active:
                self._logit(query, key, scale, attn_mask, is_causal)
            return sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kwargs)

        def softmax(orig: Callable[..., Tensor]) -> Callable[..., Tensor]:
            def recorded(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
                if self._in_softmax:  # F.softmax calls Tensor.softmax: one record
                    return orig(x, *args, **kwargs)
                if self.active:
                    self._softmax_input(x, args[0] if args else kwargs.get("dim"))
                self._in_softmax = True
                try:
                    return orig(x, *args, **kwargs)
                finally:
                    self._in_softmax = False

            return recorded

        method = torch.Tensor.softmax
        F.scaled_dot_product_attention = recorded_sdpa  # type: ignore[assignment]
        F.softmax = softmax(f_softmax)
        torch.softmax = softmax(t_softmax)
        torch.Tensor.softmax = softmax(method)  # type: ignore[method-assign]
        try:
            yield
        finally:
            F.scaled_dot_product_attention = sdpa
            F.softmax = f_softmax
            torch.softmax = t_softmax
            if own:
                torch.Tensor.softmax = method  # type: ignore[method-assign]
            else:
                del torch.Tensor.softmax

    @contextmanager
    def recording(self) -> Iterator[dict[str, list[_Call]]]:
        self.calls = {n: [] for n in self.calls}
        self._pending = {n: [] for n in self.calls}
        self.counts, self.logits, self._stack = {}, {}, []
        self.active = True
        try:
            yield self.calls
        finally:
            self.active = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _host(name: str, called: Mapping[str, int]) -> str:
    """``name`` if the model called it, else its nearest called ancestor (the root at worst)."""
    while name and not called.get(name):
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name


def _rms(diffs: Sequence[Tensor], *, skip_nan: bool = False) -> float:
    """The RMS over every entry of ``diffs`` (``skip_nan``: over the entries that are not
    ``nan``, as masked attention logits are); ``nan`` for none."""
    if skip_nan:
        diffs = [d[~d.isnan()] for d in diffs]
    n = sum(d.numel() for d in diffs)
    if n == 0:
        return math.nan
    return math.sqrt(sum(float(d.pow(2).sum()) for d in diffs) / n)


def _snapshot(model: nn.Module) -> dict[Tensor, Tensor]:
    return {p: p.detach().clone() for p in model.parameters()}


def _seed(seed: int, device: torch.device) -> None:
    """Seed the generators a forward on ``device`` draws from (cheaper than torch.manual_seed)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def _call(
    module: nn.Module,
    state: Mapping[Tensor, Tensor],
    own: Mapping[Tensor, Tensor],
    own_ids: set[int],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seed: int,
    device: torch.device,
) -> Tensor:
    """``module``'s output with every parameter from ``state``, those in ``own_ids`` from
    ``own``."""
    params = {n: (own if id(p) in own_ids else state)[p] for n, p in module.named_parameters()}
    _seed(seed, device)
    return _flat(functional_call(module, params, args, kwargs))


def _logit_values(
    out: dict[tuple[int, str, str], float],
    t: int,
    at_w: Mapping[str, list[Tensor]],
    at_wp: Mapping[str, list[Tensor]],
    at_w1: Mapping[str, list[Tensor]],
) -> None:
    for key, base in at_w.items():

        def diff(other: Mapping[str, list[Tensor]], key: str = key) -> float:
            got = other.get(key, [])
            if len(got) != len(at_w[key]):
                return math.nan
            return _rms([b - a for a, b in zip(at_w[key], got, strict=True)], skip_nan=True)

        out[(t, key, "activation")] = _rms(base, skip_nan=True)
        out[(t, key, "total_perturbation")] = diff(at_wp)
        out[(t, key, "update")] = diff(at_w1)
        out[(t, key, "effective_perturbation")] = math.nan


def _measure_run(
    model: nn.Module,
    opt: SAM,
    modules: Mapping[str, nn.Module],
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    steps: int,
    seed: int,
) -> dict[tuple[int, str, str], float]:
    out: dict[tuple[int, str, str], float] = {}
    dev = inputs.device
    all_mods = dict(model.named_modules())
    with ExitStack() as stack:
        probe = _Recorder(model, {})
        stack.callback(probe.remove)
        with torch.no_grad(), frozen_bn_stats(model), probe.recording():
            _seed(seed, dev)
            model(inputs)
        probe.remove()
        hosts = {name: _host(name, probe.counts) for name in modules}
        rec = _Recorder(model, {h: all_mods[h] for h in set(hosts.values())})
        stack.callback(rec.remove)
        stack.enter_context(rec.attention())
        for t in range(steps):
            opt.zero_grad(set_to_none=True)
            with rec.recording() as at_w:
                _seed(seed, dev)
                torch.autograd.backward(loss_fn(model(inputs), targets))
            logits_w = rec.logits
            w0 = _snapshot(model)
            opt.first_step(zero_grad=True)
            wp = _snapshot(model)
            with frozen_bn_stats(model), rec.recording() as at_wp:
                _seed(seed, dev)
                torch.autograd.backward(loss_fn(model(inputs), targets))
            logits_wp = rec.logits
            opt.second_step(zero_grad=True)
            w1 = _snapshot(model)
            logits_w1: dict[str, list[Tensor]] = {}
            if logits_w:
                with torch.no_grad(), frozen_bn_stats(model), rec.recording():
                    _seed(seed, dev)
                    model(inputs)
                logits_w1 = rec.logits
            with torch.no_grad(), frozen_bn_stats(model):
                for name, mod in modules.items():
                    key, host = name or "(root)", hosts[name]
                    hmod = all_mods[host]
                    own = {id(p) for p in mod.parameters(recurse=False)}
                    calls, pert_calls = at_w[host], at_wp[host]
                    out[(t, key, "activation")] = _rms([o for _, _, o in calls])
                    out[(t, key, "total_perturbation")] = (
                        _rms(
                            [p - o for (_, _, o), (_, _, p) in zip(calls, pert_calls, strict=True)]
                        )
                        if len(pert_calls) == len(calls)
                        else math.nan
                    )
                    eff, upd = [], []
                    for args, kwargs, _ in calls:
                        base = _call(hmod, w0, w0, own, args, kwargs, seed, dev)
                        eff.append(_call(hmod, w0, wp, own, args, kwargs, seed, dev) - base)
                        upd.append(_call(hmod, w0, w1, own, args, kwargs, seed, dev) - base)
                    out[(t, key, "effective_perturbation")] = _rms(eff)
                    out[(t, key, "update")] = _rms(upd)
            _logit_values(out, t, logits_w, logits_wp, logits_w1)
    return out


def _check_arguments(
    factory: ModelFactory,
    inputs: Tensor,
    targets: Tensor,
    numbers: Mapping[str, float],
    steps: int,
    seeds: Sequence[int],
    dtype: torch.dtype,
) -> tuple[int, ...]:
    """Refuse arguments of :func:`coord_check` of the wrong kind before any model is built,
    naming the argument; the seeds as a tuple (read once, if an iterator)."""
    if isinstance(factory, nn.Module) or not callable(factory):
        raise TypeError(
            "factory must build a model from its width: a class such as MLP, or a function "
            f"such as partial(MLP, in_features=32), got {shown(factory)}; pass the class, not "
            "a built model"
        )
    check_instance("inputs", inputs, Tensor, "a tensor (one fixed batch)")
    check_instance("targets", targets, Tensor, "a tensor (the batch's targets)")
    for name, value in numbers.items():
        check_number(name, value)
    check_integer("steps", steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    seeds_ = tuple(check_iterable("seeds", seeds))
    if not seeds_:
        raise ValueError("seeds must not be empty")
    for seed in seeds_:
        check_integer("seeds", seed)
    check_instance("dtype", dtype, torch.dtype, "a torch.dtype such as torch.float64")
    return seeds_


def _check_training(
    loss_fn: LossFn,
    base_optimizer: type[torch.optim.Optimizer],
    base_kwargs: Mapping[str, Any] | None,
) -> None:
    """Refuse a loss or base optimizer of :func:`coord_check` of the wrong kind."""
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be a function (output, targets) -> loss, got {shown(loss_fn)}"
        )
    check_class(
        "base_optimizer",
        base_optimizer,
        torch.optim.Optimizer,
        "a torch optimizer class",
        "pass the class, and its arguments in base_kwargs: "
        "coord_check(..., base_optimizer=torch.optim.SGD, base_kwargs={'momentum': 0.9})",
    )
    if base_kwargs is not None and not isinstance(base_kwargs, Mapping):
        raise TypeError(
            f"base_kwargs must be a dict of keyword arguments, got {shown(base_kwargs)}"
        )


@contextmanager
def _warnings_once() -> Iterator[None]:
    """Give each warning raised in the block once, not once per width and seed: warnings that
    differ only in their numbers (``head_dim grows 8 -> 16``, ``8 -> 32``) are one, given as
    last raised (at the largest width), in the order first raised, from the caller's line."""
    caught: list[warnings.WarningMessage] | None = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:  # also when the check fails: the warnings may say why
        last: dict[tuple[type[Warning], str], warnings.WarningMessage] = {}
        for w in caught or []:
            last[(w.category, re.sub(r"\d+", "#", str(w.message)))] = w
        for w in last.values():
            warnings.warn(w.message, w.category, stacklevel=4)  # coord_check's caller


def coord_check(
    factory: ModelFactory,
    widths: Sequence[int],
    inputs: Tensor,
    targets: Tensor,
    *,
    scheme: str | Scheme = "mup-sgd",
    rule: str = "sam",
    scaling: str = "mup2",
    rho: float = 0.1,
    lr: float = 0.1,
    eta: float = 0.01,
    steps: int = 1,
    seeds: Sequence[int] = (0,),
    loss_fn: LossFn = F.cross_entropy,
    base_width: int | None = None,
    base_optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
    base_kwargs: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Override | str | Role | Mapping[str, Any]] | None = None,
    optimizer: Callable[[list[dict[str, Any]]], SAM] | None = None,
    dtype: torch.dtype = torch.float64,
    attention: bool = True,
    alpha: float | None = 1.0,
) -> CoordCheck:
    """Run ``steps`` SAM steps on the fixed batch ``(inputs, targets)`` at every width and seed,
    measuring every parametrized module (see the module docstring).

    ``factory(width)`` builds the model (the user's factory; its modules are never edited). Each
    model is cast to ``dtype`` (float64 by default, so that ``eps = w_pert - w`` is exact
    enough at large width), parametrized by ``scheme`` against ``factory(base_width)`` (default:
    the smallest width), initialized with the seed and trained with ``mup2.SAM(rho, rule,
    scaling, eta)`` around ``base_optimizer`` at base LR ``lr``, or by ``optimizer(groups)``
    when given (e.g. ``partial(mup2.LightSAM, variant="adam", lr=1e-3, rho=0.1)``; ``rule`` and
    ``scaling`` are then read from the optimizer it builds). A LightSAM ``rule``
    (``lightsam-adam``, ...) builds :class:`mup2.LightSAM` with ``lr`` and ``rho``; its
    elementwise variants are Adam-like, so ``mup-sgd`` then means ``mup-adam``. A one-pass
    rule (``msam``, ``rwp``) builds :class:`mup2.MSAM` or :class:`mup2.RWP` around
    ``base_optimizer`` (MSAM needs ``base_kwargs={"momentum": 0.9}`` with SGD); its
    perturbation is taken from the optimizer's state, not from the gradient at ``w_t`` that
    the check computes for its measurements, so MSAM's first step is unperturbed.
    Values are averaged over ``seeds``. ``attention=False`` leaves attention logit scales as the
    model computes them (see :meth:`mup2.Parametrization.infer`). ``alpha``: the residual-branch
    exponent against a base of fewer blocks (``None``: width only), as in
    :meth:`mup2.Parametrization.infer`; :func:`mup2.coordcheck.coord_check_depth` sweeps depth.
    Raises ``ValueError`` for fewer than 3 or non-increasing widths, and for a factory whose
    models do not differ in width.
    """
    ws = _check_widths(widths)
    noise_seeded = False
    seeds = _check_arguments(
        factory, inputs, targets, {"rho": rho, "lr": lr, "eta": eta}, steps, seeds, dtype
    )
    _check_training(loss_fn, base_optimizer, base_kwargs)
    sch = get_scheme(scheme)
    if optimizer is None:
        rule_ = get_rule(rule)
        rule_.scaling(scaling)  # fail early on an unknown rule or scaling
        if rule_.lightsam is not None:
            variant = cast(Variant, rule_.lightsam)
            optimizer = partial(LightSAM, variant=variant, lr=lr, rho=rho, scaling=scaling)
            if sch is MUP_SGD:  # the variant's own μP scheme
                sch = get_scheme(family_of_variant(variant).scheme)
        elif rule_.one_pass:
            onepass = onepass_optimizer(rule_)
            optimizer = partial(
                onepass,
                base_optimizer=base_optimizer,
                rho=rho,
                scaling=scaling,
                restore="copy",
                **dict(base_kwargs or {}),
            )
            noise_seeded = issubclass(onepass, RWP)  # RWP's noise drawn from each run's seed
    base_w = ws[0] if base_width is None else base_width
    if isinstance(base_w, bool) or not isinstance(base_w, int) or base_w < 1:
        raise ValueError(f"base_width must be a positive integer, got {base_w!r}")
    inputs, targets = inputs.detach(), targets.detach()
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)
    # at the base width the shapes tell no roles: a rule that perturbs by role gets them from
    # another width (mup2.parametrization.shapes.role_overrides)
    # (and Muon takes the hidden matrices only)
    by_role = (optimizer is None and get_rule(rule).roles is not None) or sch.like == "muon"
    sums: dict[tuple[int, str, str], list[float]] = {}
    layers: tuple[Layer, ...] = ()
    cuda = [inputs.device.index or 0] if inputs.device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=cuda),  # the caller's RNG state is left as it was
        _warnings_once(),
    ):
        _check_factory(factory, ws, base_w)
        base: BaseSpec = _base_model(factory, base_w)
        for w_i, width in enumerate(ws):
            for seed in seeds:
                torch.manual_seed(seed)
                model = factory(width).to(dtype)
                over = overrides
                if by_role and width == base_w:
                    other = _base_model(factory, ws[-1] if ws[-1] != base_w else ws[0])
                    over = {**role_overrides(model, other), **(overrides or {})}
                p = Parametrization.infer(
                    model, base, sch, overrides=over, attention=attention, alpha=alpha
                )
                p.init_(model, seed=seed)
                modules = _param_modules(model)
                if width == ws[-1] and not layers:
                    layers = tuple(_layer(n, m, p) for n, m in modules.items())
                groups = p.param_groups(model, lr=lr)
                if optimizer is None:
                    opt = SAM(
                        groups,
                        base_optimizer,
                        rho=rho,
                        rule=rule,
                        scaling=scaling,
                        eta=eta,
                        restore="copy",
                        **dict(base_kwargs or {}),
                    )
                else:
                    make = cast(Callable[..., SAM], optimizer)
                    opt = make(groups, seed=seed) if noise_seeded else make(groups)
                    rule, scaling = opt.rule, opt.scaling
                run = _measure_run(model, opt, modules, inputs, targets, loss_fn, steps, seed)
                if width == ws[-1] and seed == seeds[0]:
                    logit_layers = sorted({k[1] for k in run if k[1].endswith(":logits")})
                    layers += tuple(
                        Layer(n, "attention logits", Role.HIDDEN, "attention") for n in logit_layers
                    )
                for key, v in run.items():
                    sums.setdefault(key, [0.0] * len(ws))[w_i] += v / len(seeds)
    return CoordCheck(
        scheme=sch.name,
        rule=rule,
        scaling=scaling,
        widths=ws,
        seeds=tuple(seeds),
        steps=steps,
        rho=rho,
        lr=lr,
        layers=layers,
        values={k: tuple(v) for k, v in sums.items()},
    )
