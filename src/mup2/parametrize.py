"""Apply a scheme to a model: the per-tensor spec, its report, re-initialization and param groups.

The spec is plain data keyed by normalized parameter names (nothing is stored on
``nn.Parameter``), serializable with :meth:`Parametrization.to_dict`, and it matches the model
inside DDP / ``torch.compile`` wrappers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from statistics import mode
from typing import Any, Literal

import torch
from torch import nn

from mup2.initializers import InitRule, default_init, draw_
from mup2.schemes import Scheme, get_scheme, perturb_scaling
from mup2.shapes import (
    BaseSpec,
    Role,
    ShapeError,
    TensorShape,
    infer_shapes,
    match_patterns,
    named_parameters_with_owners,
    normalize_name,
    unwrap,
)

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

    @classmethod
    def coerce(cls, value: Override | str | Role | Mapping[str, Any]) -> Override:
        if isinstance(value, Override):
            return value
        if isinstance(value, str | Role):
            return cls(role=value)
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown override keys {unknown}; allowed: {sorted(allowed)}")
        return cls(**value)


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape.to_dict(),
            "init": {"kind": self.init.kind, "value": self.init.value},
            "init_mult": self.init_mult,
            "lr_mult": self.lr_mult,
            "wd_mult": self.wd_mult,
            "rho_mult": self.rho_mult,
            "weight_scale": self.weight_scale,
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
        )


def _padding_rows(model: nn.Module) -> dict[str, int]:
    return {
        normalize_name(f"{n}.weight" if n else "weight"): m.padding_idx
        for n, m in model.named_modules()
        if isinstance(m, nn.Embedding) and m.padding_idx is not None
    }


@dataclass(frozen=True)
class Parametrization:
    """A scheme applied to a model: ``{name: TensorSpec}`` plus the model's width multiplier.

    Build it with :meth:`infer`; use :meth:`init_`, :meth:`param_groups` and :meth:`report`.
    """

    scheme: Scheme
    tensors: Mapping[str, TensorSpec]
    width_mult: float
    wd_policy: WeightDecayPolicy = "lr-scaled"

    @classmethod
    def infer(
        cls,
        model: nn.Module,
        base: BaseSpec,
        scheme: str | Scheme = "mup-sgd",
        overrides: Mapping[str, Override | str | Role | Mapping[str, Any]] | None = None,
        wd_policy: WeightDecayPolicy = "lr-scaled",
    ) -> Parametrization:
        """Infer the spec of ``model`` against ``base`` (see :func:`mup2.shapes.infer_shapes`).

        ``overrides`` maps fnmatch patterns over parameter names to an :class:`Override` (or a
        role name, or a dict of Override fields); later patterns win. A model may ship its own
        overrides as a ``mup2_overrides`` attribute; the user's are applied after them.
        ``wd_policy``: ``"lr-scaled"`` (default) lets decoupled weight decay follow each tensor's
        μP learning rate, as torch's AdamW does with per-group LRs; ``"independent"`` divides the
        group's decay by its LR multiplier so that ``lr * weight_decay`` is the same for all.
        """
        if wd_policy not in ("lr-scaled", "independent"):
            raise ValueError(f"wd_policy must be 'lr-scaled' or 'independent', not {wd_policy!r}")
        scheme = get_scheme(scheme)
        shapes = infer_shapes(model, base)
        owners = {normalize_name(n): o[0] for n, _, o in named_parameters_with_owners(model)}
        shipped = dict(getattr(unwrap(model), "mup2_overrides", None) or {})
        pairs = [
            (pat, Override.coerce(v))
            for src in (shipped, overrides or {})
            for pat, v in src.items()
        ]
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
            else:
                w_base, w_cur = (weight.base_shape, weight.shape) if weight else (None, None)
                base_rule = default_init(owner.module, owner.local, ts.base_shape, w_base)
                cur_rule = default_init(owner.module, owner.local, ts.shape, w_cur)
            if o.init_std is not None:
                base_rule = cur_rule = InitRule("normal", o.init_std)
            init_mult = o.init_mult
            if init_mult is None:
                init_mult = scheme.init_mult(ts.role, ts.m_in, ts.m_out)
            if init_mult is None:  # SP: PyTorch's default at this width
                rule = cur_rule
            elif init_mult == 0.0 and base_rule.kind != "constant":
                rule = InitRule("constant", 0.0)
            else:
                rule = base_rule.scaled(init_mult)
            lr_mult = o.lr_mult
            if lr_mult is None:
                lr_mult = scheme.lr_mult(ts.role, ts.m_in, ts.m_out)
            scale = scheme.init_mult(ts.role, ts.m_in, ts.m_out)
            if scale is None:  # SP: the default init's own change with width
                drawn = cur_rule.kind in ("uniform", "normal") and base_rule.value > 0
                scale = cur_rule.value / base_rule.value if drawn else 1.0
            tensors[name] = TensorSpec(
                ts,
                rule,
                init_mult,
                lr_mult,
                1.0 if o.wd_mult is None else o.wd_mult,
                1.0 if o.rho_mult is None else o.rho_mult,
                scale,
            )
        widths = [t.shape.width for t in tensors.values() if t.shape.role is not Role.SCALAR]
        return cls(scheme, tensors, mode(widths) if widths else 1.0, wd_policy)

    # -- applying ---------------------------------------------------------------------------

    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = {normalize_name(n): p for n, p, _ in named_parameters_with_owners(model)}
        missing = [n for n in self.tensors if n not in params]
        extra = [n for n in params if n not in self.tensors]
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
        whose rule is ``keep`` are left untouched (give them an ``init_std`` override).
        """
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        params = self._params(model)
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
        change with width; scales the ASAM offset under μP²), ``norm`` and ``names``.
        """
        params = self._params(model)
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

    # -- reporting and serialization ------------------------------------------------------

    def rows(self, rule: str = "sam", scaling: str = "mup2") -> list[dict[str, Any]]:
        """One dict per tensor: the report's columns, with the perturbation multiplier ``c_W``
        of ``rule`` under ``scaling`` (times ``rho_mult``)."""
        ps = perturb_scaling(rule, scaling)
        out = []
        for name, spec in self.tensors.items():
            ts = spec.shape
            rho = ps.c[ts.role](ts.m_in, ts.m_out, self.width_mult) * spec.rho_mult
            out.append(
                {
                    "name": name + (f" (= {', '.join(ts.aliases)})" if ts.aliases else ""),
                    "shape": "x".join(map(str, ts.shape)) or "scalar",
                    "base": "x".join(map(str, ts.base_shape)) or "scalar",
                    "role": ts.role.value + ("*" if ts.source == "override" else ""),
                    "m_in": f"{ts.m_in:g}",
                    "m_out": f"{ts.m_out:g}",
                    "init": "default" if spec.init_mult is None else f"x{spec.init_mult:.3g}",
                    "init_rule": spec.init.describe(),
                    "lr": f"x{spec.lr_mult:.3g}",
                    "wd": f"x{spec.wd_mult:.3g}",
                    "rho": "x0" if rule == "sam-on" and not ts.norm else f"x{rho:.3g}",
                    "norm": "yes" if ts.norm else "",
                }
            )
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
        if markdown:
            lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
            return f"{title}\n\n" + "\n".join(lines)
        widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
        lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
        lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
        return title + "\n" + "\n".join(line.rstrip() for line in lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy (scheme by name)."""
        return {
            "scheme": self.scheme.name,
            "width_mult": self.width_mult,
            "wd_policy": self.wd_policy,
            "tensors": {n: t.to_dict() for n, t in self.tensors.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Parametrization:
        return cls(
            get_scheme(d["scheme"]),
            {n: TensorSpec.from_dict(t) for n, t in d["tensors"].items()},
            float(d["width_mult"]),
            d["wd_policy"],
        )


def _fold(overrides: Sequence[Override]) -> Override:
    """Later overrides win, field by field."""
    merged: dict[str, Any] = {}
    for o in overrides:
        merged.update({k: v for k, v in vars(o).items() if v is not None})
    return Override(**merged)
