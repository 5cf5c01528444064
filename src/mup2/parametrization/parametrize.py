"""Apply a scheme to a model: the per-tensor spec, its report, re-initialization and param groups.

The spec is plain data keyed by normalized parameter names (nothing is stored on
``nn.Parameter``), serializable with :meth:`Parametrization.to_dict`, and it matches the model
inside DDP / ``torch.compile`` wrappers. Besides per-tensor multipliers it holds what μP changes
in the forward pass: the ``1/m`` multiplier of a readout tied to an embedding and the attention
logit scale (:meth:`Parametrization.attach` installs both).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from statistics import mode
from typing import Any, Literal

import torch
from torch import nn

from mup2.errors import check_number, shown
from mup2.optim.rules import get_rule
from mup2.parametrization.attention import AttentionSpec, apply_attention, find_attention
from mup2.parametrization.depth import DepthSpec, depth_mismatch, infer_depth
from mup2.parametrization.forward_multipliers import set_output_multiplier
from mup2.parametrization.init import InitRule, Observed, default_init, draw_, observe
from mup2.parametrization.schemes import Scheme, get_scheme
from mup2.parametrization.shapes import (
    BaseSpec,
    ShapeError,
    TensorShape,
    check_model,
    infer_shapes,
    match_patterns,
    named_parameters_with_owners,
    normalize_name,
    unwrap,
)
from mup2.roles import Role
from mup2.tables import format_table

__all__ = ["Override", "Parametrization", "TensorSpec", "WeightDecayPolicy"]

WeightDecayPolicy = Literal["lr-scaled", "independent"]


@dataclass(frozen=True)
class Override:
    """What to change for the tensors whose names match a pattern (``None``: keep the inferred).

    ``init_mult`` replaces the scheme's init multiplier (``0`` gives a zero init); ``init_std``
    sets the base-width std of a normal init for tensors mup2 cannot initialize itself;
    ``lr_mult``, ``wd_mult`` and ``rho_mult`` are absolute multipliers; ``norm`` marks the tensor
    as a normalization parameter (SAM-ON perturbs only those).
    """

    role: Role | str | None = None
    init_mult: float | None = None
    init_std: float | None = None
    lr_mult: float | None = None
    wd_mult: float | None = None
    rho_mult: float | None = None
    norm: bool | None = None

    def __post_init__(self) -> None:
        """Refuse a role that is none and fields of the wrong type, naming the field."""
        roles = ", ".join(r.value for r in Role)
        if self.role is not None and self.role not in tuple(r.value for r in Role):
            if isinstance(self.role, str):
                raise ValueError(f"role {self.role!r} is not a role; choose one of {roles}")
            raise TypeError(f"role must be a role name ({roles}), got {shown(self.role)}")
        for name in ("init_mult", "init_std", "lr_mult", "wd_mult", "rho_mult"):
            check_number(name, getattr(self, name), optional=True)
        if self.norm is not None and not isinstance(self.norm, bool):
            raise TypeError(f"norm must be True, False or None, got {shown(self.norm)}")

    @classmethod
    def coerce(cls, value: Override | str | Role | Mapping[str, Any]) -> Override:
        """``value`` as an :class:`Override`: a role name, or a dict of its fields."""
        if isinstance(value, Override):
            return value
        if isinstance(value, str | Role):
            return cls(role=value)
        if not isinstance(value, Mapping):
            raise TypeError(
                "an override must be a role name, a dict of Override fields or an Override, "
                f"got {shown(value)}"
            )
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown override keys {unknown}; allowed: {sorted(allowed)}")
        return cls(**value)

    @classmethod
    def by_pattern(
        cls, overrides: Mapping[str, Override | str | Role | Mapping[str, Any]] | None
    ) -> list[tuple[str, Override]]:
        """``[(pattern, Override)]`` of an ``overrides`` argument (``None``: none); an error
        names the argument or the pattern whose override is wrong."""
        if overrides is None:
            return []
        if not isinstance(overrides, Mapping):
            raise TypeError(
                "overrides must be a dict {pattern: override}, e.g. {'head.*': 'output'} or "
                f"{{'*.bias': {{'lr_mult': 2.0}}}}, got {shown(overrides)}"
            )
        out = []
        for pattern, value in overrides.items():
            try:
                out.append((pattern, cls.coerce(value)))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"override {pattern!r}: {exc}") from None
        return out


@dataclass(frozen=True)
class TensorSpec:
    """One tensor under a scheme: its shape info, init rule at this width and multipliers."""

    shape: TensorShape
    init: InitRule
    init_mult: float | None
    lr_mult: float
    wd_mult: float = 1.0
    rho_mult: float = 1.0
    weight_scale: float = 1.0  # how the tensor's entries scale relative to the base (init std)
    init_source: str = "default"  # "default" (PyTorch's rule), "model", "override" or "keep"
    eps_mult: float = 1.0  # of Adam's eps (depth-aware schemes)
    depth_mult: float = 1.0  # L/L0 of the tensor's block stack; 1 outside the blocks

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape.to_dict(),
            "init": {"kind": self.init.kind, "value": self.init.value},
            "init_mult": self.init_mult,
            "lr_mult": self.lr_mult,
            "wd_mult": self.wd_mult,
            "rho_mult": self.rho_mult,
            "weight_scale": self.weight_scale,
            "init_source": self.init_source,
            "eps_mult": self.eps_mult,
            "depth_mult": self.depth_mult,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(
            shape=TensorShape.from_dict(d["shape"]),
            init=InitRule(d["init"]["kind"], float(d["init"]["value"])),
            init_mult=None if d["init_mult"] is None else float(d["init_mult"]),
            lr_mult=float(d["lr_mult"]),
            wd_mult=float(d["wd_mult"]),
            rho_mult=float(d["rho_mult"]),
            weight_scale=float(d.get("weight_scale", 1.0)),
            init_source=str(d.get("init_source", "default")),
            eps_mult=float(d.get("eps_mult", 1.0)),
            depth_mult=float(d.get("depth_mult", 1.0)),
        )


def _padding_rows(model: nn.Module) -> dict[str, int]:
    return {
        normalize_name(f"{n}.weight" if n else "weight"): m.padding_idx
        for n, m in model.named_modules()
        if isinstance(m, nn.Embedding) and m.padding_idx is not None
    }


def _all_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every trainable tensor under every name it has (tied weights under each)."""
    return {
        normalize_name(o.name): p
        for _, p, owners in named_parameters_with_owners(model)
        for o in owners
    }


def _base_values(base: BaseSpec, dspec: DepthSpec | None) -> dict[str, nn.Parameter]:
    """The base's tensors, whose values give each tensor's base init (:func:`_observed`).

    A Hugging Face base (one with ``init_weights``) built on the meta device is drawn by its own
    init when the parametrization scales with depth: that init may depend on the depth (GPT-2
    draws its branch outputs ``c_proj`` with std ``initializer_range / sqrt(2 n_layer)``), and
    the model's own values, drawn at the model's depth, would carry that dependence on top of
    the branch multipliers. Drawn on the CPU under a fixed seed, leaving the caller's RNG as it
    was; only the values' distribution is read."""
    if not isinstance(base, nn.Module):
        return {}
    scaled = dspec is not None and any(s.branches and s.ratio != 1 for s in dspec.stacks)
    init_weights = getattr(base, "init_weights", None)
    on_meta = any(p.is_meta for p in base.parameters())
    if scaled and on_meta and callable(init_weights):
        real = copy.deepcopy(base).to_empty(device="cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            real.init_weights()  # type: ignore[operator]
        return _all_params(real)
    return _all_params(base)


def _observed(
    module: nn.Module,
    local: str,
    p: torch.Tensor,
    base_p: torch.Tensor | None,
    ts: TensorShape,
    w_shapes: tuple[tuple[int, ...] | None, tuple[int, ...] | None],
) -> tuple[InitRule, InitRule, str]:
    """``(rule at base width, rule at this width, source)`` of the model's own init.

    From the base's values when the base is a real model; otherwise from the model's: PyTorch's
    default law when its values fit the module's default rule, else width-independent.
    """
    default_base = default_init(module, local, ts.base_shape, w_shapes[0])
    default_cur = default_init(module, local, ts.shape, w_shapes[1])
    cur = observe(p, default_cur)
    if base_p is not None and not base_p.is_meta:
        base = observe(base_p, default_base)
    elif cur.source == "default":
        base = Observed(default_base, "default")
    else:
        base = cur
    if "keep" in (base.source, cur.source):
        return InitRule("keep"), InitRule("keep"), "keep"
    return base.rule, cur.rule, "default" if base.source == cur.source == "default" else "model"


@dataclass(frozen=True)
class Parametrization:
    """A scheme applied to a model: ``{name: TensorSpec}`` plus the model's width multiplier,
    the forward multipliers of tied readouts (``{module name: multiplier}``) and the attention
    modules' logit scales.

    Build it with :meth:`infer`; use :meth:`init_`, :meth:`param_groups` and :meth:`report`.
    """

    scheme: Scheme
    tensors: Mapping[str, TensorSpec]
    width_mult: float
    wd_policy: WeightDecayPolicy = "lr-scaled"
    forward_mults: Mapping[str, float] = field(default_factory=dict)
    attention: tuple[AttentionSpec, ...] = ()
    depth: DepthSpec | None = None

    @classmethod
    def infer(
        cls,
        model: nn.Module,
        base: BaseSpec,
        scheme: str | Scheme = "mup-sgd",
        overrides: Mapping[str, Override | str | Role | Mapping[str, Any]] | None = None,
        wd_policy: WeightDecayPolicy = "lr-scaled",
        attention: bool = True,
        *,
        depth: int | None = None,
        base_depth: int | None = None,
        alpha: float | None = 1.0,
        branches: Sequence[str] | None = None,
    ) -> Parametrization:
        """Infer the spec of ``model`` against ``base`` (see
        :func:`mup2.parametrization.shapes.infer_shapes`).

        Init: each tensor's base-width rule is the model's own init (measured on a real
        ``base``, else on the freshly built ``model``: PyTorch's default law when the values fit
        the module's default, otherwise a width-independent std), times the scheme's multiplier.
        Tensors no rule describes are kept (``keep``) and warned about once. A readout tied to
        an input-like embedding gets the scheme's forward multiplier (μP: ``1/m``), and with
        ``attention`` the logit scale of attention modules whose head dimension grows becomes
        ``1/d_head`` (see :mod:`mup2.parametrization.attention`); :meth:`attach` installs both
        on the model.

        ``overrides`` maps fnmatch patterns over parameter names to an :class:`Override` (or a
        role name, or a dict of Override fields); later patterns win. A model may ship its own
        overrides as a ``mup2_overrides`` attribute; the user's are applied after them.
        ``wd_policy``: ``"lr-scaled"`` (default) lets decoupled weight decay follow each tensor's
        μP learning rate, as torch's AdamW does with per-group LRs; ``"independent"`` divides the
        group's decay by its LR multiplier so that ``lr * weight_decay`` is the same for all.

        Depth (``docs/math.md``, depth; :mod:`mup2.parametrization.depth`): the base may have
        fewer (or more) blocks than the model; blocks are matched by their repeated structure
        (``layers.N``, ``h.N``, ``blocks.N``). Against a base of another depth, or with
        ``base_depth=`` (the base's number of blocks, when the base given is not that deep)
        and ``depth=`` (the model's, checked), the parametrization is depth-aware: each block's
        residual branch outputs (``branches``, block-relative module names; default: the model's
        ``mup2_branches`` or the known ones) get the forward multiplier ``(L/L0)**-alpha``
        (``alpha = 1``: CompleteP; ``1/2``: Depth-μP), and tensors get the scheme's depth rules
        (:class:`~mup2.parametrization.schemes.DepthRule`: LR, Adam ``eps`` and weight-decay
        multipliers). ``alpha=None``: width only (a base of another depth is matched, nothing
        changes with depth).
        """
        if wd_policy not in ("lr-scaled", "independent"):
            raise ValueError(f"wd_policy must be 'lr-scaled' or 'independent', not {wd_policy!r}")
        scheme = get_scheme(scheme)
        check_model(model)
        dspec = infer_depth(
            model, base, depth=depth, base_depth=base_depth, alpha=alpha, branches=branches
        )
        if dspec is not None and scheme.depth is None:  # SP: matched, nothing scaled
            dspec = DepthSpec(tuple(replace(s, branches=()) for s in dspec.stacks), 0.0)
        shapes = infer_shapes(model, _depth_base(model, base, dspec))
        owners = {
            normalize_name(o.name): o
            for _, _, os in named_parameters_with_owners(model)
            for o in os
        }
        values = _all_params(model)
        base_values = _base_values(base, dspec)
        shipped = getattr(unwrap(model), "mup2_overrides", None)
        pairs = Override.by_pattern(shipped) + Override.by_pattern(overrides)
        hits = match_patterns([pat for pat, _ in pairs], {n: t.aliases for n, t in shapes.items()})
        per_name: dict[str, list[Override]] = {n: [] for n in shapes}
        for pat, o in pairs:
            for n in hits[pat]:
                per_name[n].append(o)

        out_proj_ids = {
            id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)
        }
        tensors: dict[str, TensorSpec] = {}
        for name, ts in shapes.items():
            o = _fold(per_name[name])
            if o.role is not None:
                ts = ts.with_role(Role(o.role))
            if o.norm is not None:
                ts = replace(ts, norm=o.norm)
            owner = owners[name]
            weight = shapes.get(name.rsplit(".", 1)[0] + ".weight" if "." in name else "weight")
            if id(owner.module) in out_proj_ids and owner.local == "bias":
                base_rule = cur_rule = InitRule("constant", 0.0)
                source = "default"
            else:
                w_shapes = (weight.base_shape, weight.shape) if weight else (None, None)
                base_p = next(
                    (
                        base_values[b]
                        for n in (name, *ts.aliases)
                        if (b := dspec.base_name(n) if dspec else n) in base_values
                    ),
                    None,
                )
                base_rule, cur_rule, source = _observed(
                    owner.module, owner.local, values[name], base_p, ts, w_shapes
                )
            if o.init_std is not None:
                base_rule = cur_rule = InitRule("normal", o.init_std)
                source = "override"
            init_mult = o.init_mult
            if init_mult is None:
                init_mult = scheme.init_mult(ts.role, ts.m_in, ts.m_out)
            if init_mult is None:  # SP: the model's own init at this width
                rule = cur_rule
            elif init_mult == 0.0 and base_rule.kind != "constant":
                rule = InitRule("constant", 0.0)
            else:
                rule = base_rule.scaled(init_mult)
            lr_mult = o.lr_mult
            if lr_mult is None:
                lr_mult = scheme.lr_mult(ts.role, ts.m_in, ts.m_out)
            d_mult, eps_mult, wd_mult = 1.0, 1.0, 1.0
            if dspec is not None and dspec.stacks[0].branches and scheme.depth is not None:
                d_mult = dspec.ratio(name)
                rule_d = scheme.depth[ts.role]
                args = (ts.m_in, ts.m_out, 1.0, d_mult, dspec.alpha)
                if o.lr_mult is None:
                    lr_mult *= rule_d.lr(*args)
                eps_mult, wd_mult = rule_d.eps(*args), rule_d.wd(*args)
            scale = scheme.init_mult(ts.role, ts.m_in, ts.m_out)
            if scale is None:  # SP: the default init's own change with width
                drawn = cur_rule.kind in ("uniform", "normal") and base_rule.value > 0
                scale = cur_rule.value / base_rule.value if drawn else 1.0
            tensors[name] = TensorSpec(
                ts,
                rule,
                init_mult,
                lr_mult,
                wd_mult if o.wd_mult is None else o.wd_mult,
                1.0 if o.rho_mult is None else o.rho_mult,
                scale,
                source,
                eps_mult,
                d_mult,
            )
        kept = [n for n, t in tensors.items() if t.init.kind == "keep"]
        if kept:
            warnings.warn(
                f"mup2 cannot re-initialize {kept}: no rule describes their values (not constant, "
                "nonzero mean, or a module mup2 does not know), so init_ leaves them as the model "
                "made them, with no μP init multiplier; give each an override "
                "{'init_std': <std at base width>} (or 'init_mult': 0 for a zero init)",
                stacklevel=2,
            )
        specs: tuple[AttentionSpec, ...] = ()
        if attention:
            found, warns = find_attention(
                model,
                base if isinstance(base, nn.Module) else None,
                scheme.attention,
                dspec.base_name if dspec is not None else None,
            )
            specs = tuple(found)
            for w in warns:
                warnings.warn(w, stacklevel=2)
        widths = [t.shape.width for t in tensors.values() if t.shape.role is not Role.SCALAR]
        mults = _tied_readouts(scheme, tensors)
        if dspec is not None and scheme.depth is not None:
            mults.update(dspec.branch_multipliers())
        return cls(
            scheme,
            tensors,
            mode(widths) if widths else 1.0,
            wd_policy,
            mults,
            specs,
            dspec,
        )

    # -- applying ---------------------------------------------------------------------------

    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        check_model(model)
        every = _all_params(model)
        known = {a for n, t in self.tensors.items() for a in (n, *t.shape.aliases)}
        params = {n: every[n] for n in self.tensors if n in every}
        missing = [n for n in self.tensors if n not in every]
        extra = [
            normalize_name(n)
            for n, _, owners in named_parameters_with_owners(model)
            if not any(normalize_name(o.name) in known for o in owners)
        ]
        if missing or extra:
            raise ShapeError(
                f"the model does not match this parametrization: missing {missing[:5]}, "
                f"unknown {extra[:5]}"
            )
        for n, p in params.items():
            if tuple(p.shape) != self.tensors[n].shape.shape:
                raise ShapeError(
                    f"{n}: model shape {list(p.shape)} but the parametrization was built for "
                    f"{list(self.tensors[n].shape.shape)}"
                )
        return params

    def init_(self, model: nn.Module, seed: int | None = None) -> nn.Module:
        """Re-initialize every tensor in place under the scheme and return ``model``.

        Values are drawn afresh (from ``seed``, else torch's global RNG), so the result does not
        depend on the model's previous values: applying twice equals applying once. Tensors
        whose rule is ``keep`` are left untouched (give them an ``init_std`` override). Also
        installs the forward multipliers and attention scales (:meth:`attach`).
        """
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        params = self._params(model)
        self.attach(model)
        padding = _padding_rows(model)
        for name, spec in self.tensors.items():
            p = params[name]
            draw_(p, spec.init, gen)
            if name in padding:
                with torch.no_grad():
                    p[padding[name]].zero_()
        return model

    def param_groups(
        self, model: nn.Module, lr: float | None = None, weight_decay: float | None = None
    ) -> list[dict[str, Any]]:
        """Param groups for any torch optimizer (or :class:`mup2.SAM`).

        Tensors with equal multipliers share a group. Each group holds ``lr`` (the *base* LR,
        which schedulers may change; the multiplier is applied at step time by
        :func:`mup2.attach_lr_multipliers` or :class:`mup2.SAM`), ``lr_mult``, ``weight_decay``
        (after ``wd_mult`` and the decay policy), and the metadata SAM needs: ``role``,
        ``m_in``, ``m_out``, ``width_mult``, ``rho_mult``, ``weight_scale`` (the init std's
        change with width; scales the ASAM offset under μP²), ``norm`` and ``names``. Also
        installs the forward multipliers and attention scales (:meth:`attach`), so a model
        restored from a checkpoint gets them back.
        """
        check_number("lr", lr, optional=True)
        check_number("weight_decay", weight_decay, optional=True)
        params = self._params(model)
        self.attach(model)
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for name, spec in self.tensors.items():
            ts = spec.shape
            key = (
                ts.role,
                ts.m_in,
                ts.m_out,
                spec.lr_mult,
                spec.wd_mult,
                spec.rho_mult,
                spec.weight_scale,
                ts.norm,
                spec.eps_mult,
                spec.depth_mult,
            )
            if key not in groups:
                g: dict[str, Any] = {
                    "params": [],
                    "names": [],
                    "lr_mult": spec.lr_mult,
                    "role": ts.role.value,
                    "m_in": ts.m_in,
                    "m_out": ts.m_out,
                    "width_mult": self.width_mult,
                    "rho_mult": spec.rho_mult,
                    "weight_scale": spec.weight_scale,
                    "norm": ts.norm,
                }
                if self.depth is not None:  # depth-aware: Adam's eps multiplier, L/L0, alpha
                    g["eps_mult"] = spec.eps_mult
                    g["depth_mult"] = spec.depth_mult
                    g["depth_alpha"] = self.depth.alpha
                if lr is not None:
                    g["lr"] = lr
                if weight_decay is not None:
                    wd = weight_decay * spec.wd_mult
                    if self.wd_policy == "independent" and spec.lr_mult > 0:
                        wd /= spec.lr_mult
                    g["weight_decay"] = wd
                groups[key] = g
            groups[key]["params"].append(params[name])
            groups[key]["names"].append(name)
        return list(groups.values())

    def attach(self, model: nn.Module) -> nn.Module:
        """Install what the scheme changes in the forward pass, idempotently, and return
        ``model``: the forward multiplier of every tied readout (a hook, see
        :mod:`mup2.parametrization.forward_multipliers`) and the attention modules' logit scales."""
        if self.forward_mults:
            mods = {normalize_name(n): m for n, m in unwrap(model).named_modules()}
            for name, mult in self.forward_mults.items():
                if name not in mods:
                    raise ShapeError(f"the model has no module {name!r} for a forward multiplier")
                set_output_multiplier(mods[name], mult)
        apply_attention(model, self.attention)
        return model

    # -- reporting and serialization ------------------------------------------------------

    def rows(self, rule: str = "sam", scaling: str = "mup2") -> list[dict[str, Any]]:
        """One dict per tensor: the report's columns, with the perturbation multiplier ``c_W``
        of ``rule`` under ``scaling`` (times ``rho_mult``)."""
        rule_ = get_rule(rule)
        ps = rule_.scaling(scaling)
        out = []
        for name, spec in self.tensors.items():
            ts = spec.shape
            alpha = self.depth.alpha if self.depth is not None else 1.0
            c = ps.c[ts.role](ts.m_in, ts.m_out, self.width_mult, spec.depth_mult, alpha)
            rho = c * spec.rho_mult
            init = "default" if spec.init_mult is None else f"x{spec.init_mult:.3g}"
            if spec.init.kind == "keep":
                init = "keep"
            out.append(
                {
                    "name": name + (f" (= {', '.join(ts.aliases)})" if ts.aliases else ""),
                    "shape": "x".join(map(str, ts.shape)) or "scalar",
                    "base": "x".join(map(str, ts.base_shape)) or "scalar",
                    "role": ts.role.value + ("*" if ts.source == "override" else ""),
                    "m_in": f"{ts.m_in:g}",
                    "m_out": f"{ts.m_out:g}",
                    "init": init,
                    "init_rule": spec.init.describe(),
                    "lr": f"x{spec.lr_mult:.3g}",
                    "wd": f"x{spec.wd_mult:.3g}",
                    "rho": f"x{rho:.3g}" if rule_.perturbs(ts.norm, ts.role) else "x0",
                    "norm": "yes" if ts.norm else "",
                }
            )
            if self.depth is not None:
                out[-1]["L/L0"] = f"{spec.depth_mult:g}" if spec.depth_mult != 1.0 else ""
                out[-1]["eps"] = f"x{spec.eps_mult:.3g}"
        return out

    def report(self, rule: str = "sam", scaling: str = "mup2", markdown: bool = False) -> str:
        """The role table: name, shape, base shape, role (``*``: overridden), ``m_in``, ``m_out``,
        init multiplier and rule, LR, weight-decay and perturbation multipliers, norm flag."""
        rows = self.rows(rule, scaling)
        cols = list(rows[0])
        title = (
            f"scheme {self.scheme.name}, width multiplier {self.width_mult:g}, "
            f"perturbation {rule}/{scaling}"
        )
        if all(t.shape.shape == t.shape.base_shape for t in self.tensors.values()):
            title += " (the model is its own base: every tensor is scalar-like, every x1)"
        table = format_table([[str(r[c]) for c in cols] for r in rows], cols, markdown=markdown)
        notes = self._notes()
        if markdown:  # a blank line after the title, the notes as a list
            title += "\n"
            notes = "\n".join(f"- {line}" for line in notes.splitlines())
        return f"{title}\n{table}" + ("\n\n" + notes if notes else "")

    def _notes(self) -> str:
        """The report's lines below the table: tied uses, forward multipliers, attention, kept
        tensors."""
        lines = []
        for name, spec in self.tensors.items():
            ts = spec.shape
            for alias in ts.aliases:
                use = ts.use_role(alias)
                if use is not ts.role:
                    mod = alias.rsplit(".", 1)[0] if "." in alias else ""
                    mult = self.forward_mults.get(mod)
                    how = (
                        f"forward multiplier x{mult:.3g} on {mod or '(root)'}'s output"
                        if mult is not None
                        else "no forward multiplier (scheme without one)"
                    )
                    lines.append(
                        f"tied: {alias} is {name} used as {use.value}-like "
                        f"(m_in {ts.m_out:g}); the tensor stays {ts.role.value}-like; {how}"
                    )
        lines += [f"attention: {a.module}: {a.note}" for a in self.attention]
        if self.depth is not None:
            lines.append(self.depth.describe())
        kept = [n for n, t in self.tensors.items() if t.init.kind == "keep"]
        if kept:
            lines.append(
                f"not re-initialized (kept as the model made them, no init multiplier): {kept}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy (scheme by name)."""
        return {
            "scheme": self.scheme.name,
            "width_mult": self.width_mult,
            "wd_policy": self.wd_policy,
            "tensors": {n: t.to_dict() for n, t in self.tensors.items()},
            "forward_mults": dict(self.forward_mults),
            "attention": [a.to_dict() for a in self.attention],
            "depth": None if self.depth is None else self.depth.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Parametrization:
        return cls(
            get_scheme(d["scheme"]),
            {n: TensorSpec.from_dict(t) for n, t in d["tensors"].items()},
            float(d["width_mult"]),
            d["wd_policy"],
            {str(k): float(v) for k, v in d.get("forward_mults", {}).items()},
            tuple(AttentionSpec.from_dict(a) for a in d.get("attention", ())),
            None if d.get("depth") is None else DepthSpec.from_dict(d["depth"]),
        )


def _depth_base(model: nn.Module, base: BaseSpec, dspec: DepthSpec | None) -> BaseSpec:
    """The base as :func:`infer_shapes` takes it: against a base of another depth, a mapping
    giving each of the model's tensors the shape of the base tensor it is matched with. Refuses
    a base whose depth differs in blocks that no stack explains."""
    if not isinstance(base, nn.Module | Mapping):
        return base
    base_shapes = (
        {normalize_name(n): tuple(p.shape) for n, p in _all_params(base).items()}
        if isinstance(base, nn.Module)
        else {normalize_name(n): tuple(int(x) for x in s) for n, s in base.items()}
    )
    names = list(_all_params(model))
    if dspec is None:
        problem = depth_mismatch(names, list(base_shapes))
        if problem:
            raise ShapeError(problem)
        return base
    mapped: dict[str, tuple[int, ...]] = {}
    for n in names:
        b = dspec.base_name(n)
        if b in base_shapes:
            mapped[n] = base_shapes[b]
    stacked = {n for n in base_shapes if dspec.stack_of(n) is not None}
    mapped.update({n: s for n, s in base_shapes.items() if n not in stacked and n not in mapped})
    return mapped


def _tied_readouts(scheme: Scheme, tensors: Mapping[str, TensorSpec]) -> dict[str, float]:
    """``{module: multiplier}`` for every output-like use of an input-like tensor (a readout
    tied to an embedding), from the scheme's ``tied_readout`` rule at the use's ``m_in``."""
    out: dict[str, float] = {}
    if scheme.tied_readout is None:
        return out
    for spec in tensors.values():
        ts = spec.shape
        if ts.role is not Role.INPUT:
            continue
        for alias in ts.aliases:
            if ts.use_role(alias) is Role.OUTPUT:
                out[alias.rsplit(".", 1)[0] if "." in alias else ""] = scheme.tied_readout(
                    ts.m_out, 1.0
                )
    return out


def _fold(overrides: Sequence[Override]) -> Override:
    """Later overrides win, field by field."""
    merged: dict[str, Any] = {}
    for o in overrides:
        merged.update({k: v for k, v in vars(o).items() if v is not None})
    return Override(**merged)
