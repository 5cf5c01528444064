"""Attention logits under μP: ``1/d_head`` instead of ``1/sqrt(d_head)`` when the head dimension
grows with width (``docs/math.md`` §2).

mup2 finds attention modules by attribute: a head dimension (``head_dim``,
``attention_head_size`` or ``d_head``) and a float logit scale (``scaling``, as in Hugging Face
attention modules, or ``scale``) that the module's forward reads. When the head dimension grows,
the scale becomes ``s_base * (d_base / d)**a`` (``a = 1`` under μP: equal to the model's at base
width, ``1/d_head`` beyond); when only the number of heads grows, nothing changes.
``nn.MultiheadAttention`` has no such attribute: :func:`use_mup_attention` turns it into
:class:`MuMultiheadAttention` in place (same parameters, same ``state_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mup2.parametrization.shapes import normalize_name, unwrap

__all__ = [
    "HEAD_DIM_ATTRS",
    "SCALE_ATTRS",
    "AttentionSpec",
    "MuMultiheadAttention",
    "apply_attention",
    "find_attention",
    "head_dim",
    "use_mup_attention",
]

#: Attributes read as an attention module's head dimension, in this order.
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "d_head")
#: Attributes read (and set) as its logit scale, in this order.
SCALE_ATTRS = ("scaling", "scale")


@dataclass(frozen=True)
class AttentionSpec:
    """One attention module: its head dimension here and at base width, the logit scale of the
    base model (``None``: ``1/sqrt(d_base)``), the scale mup2 sets through attribute ``attr``
    (``None``: leave it) and a one-line ``note`` for the report."""

    module: str
    head_dim: int
    base_head_dim: int
    attr: str
    base_scaling: float | None
    scaling: float | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttentionSpec:
        return cls(**d)


def head_dim(module: nn.Module) -> int | None:
    """The head dimension of an attention module (its first positive integer attribute of
    :data:`HEAD_DIM_ATTRS`); ``None`` for other modules."""
    for attr in HEAD_DIM_ATTRS:
        v = getattr(module, attr, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _scale_attr(module: nn.Module) -> str | None:
    if isinstance(module, MuMultiheadAttention):
        return "scaling"
    if isinstance(module, nn.MultiheadAttention):
        return None
    for attr in SCALE_ATTRS:
        v = getattr(module, attr, None)
        if isinstance(v, float | int) and not isinstance(v, bool):
            return attr
    return None


def _attention_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, int]]:
    for name, mod in unwrap(model).named_modules():
        d = head_dim(mod)
        if d is not None and (_scale_attr(mod) or isinstance(mod, nn.MultiheadAttention)):
            yield normalize_name(name), mod, d


def find_attention(
    model: nn.Module,
    base: nn.Module | None,
    exponent: float | None,
    base_name: Callable[[str], str] | None = None,
) -> tuple[list[AttentionSpec], list[str]]:
    """The attention modules of ``model`` against ``base`` and what to set on each, with the
    warnings to give (modules whose head dimension grows but whose scale cannot be set, or a
    base that is not a model). ``exponent``: the scheme's ``attention`` (``None``: SP).
    ``base_name``: the name of the base's module matched with a model's (a base of another
    depth, :meth:`mup2.parametrization.depth.DepthSpec.base_name`)."""
    found = list(_attention_modules(model))
    if not found:
        return [], []
    if base is None:
        return [], [
            "the model has attention modules but the base is not a model, so mup2 cannot tell "
            "whether their head dimension grows; pass the base as a model (a meta-device "
            "instance is enough) to get μP's 1/d_head logits"
        ]
    base_mods = {normalize_name(n): m for n, m in unwrap(base).named_modules()}
    specs, warns = [], []
    for name, mod, d in found:
        bmod = base_mods.get(base_name(name) if base_name is not None else name)
        d0 = head_dim(bmod) if bmod is not None else None
        if bmod is None or d0 is None:
            continue
        attr = _scale_attr(mod)
        raw = getattr(bmod, attr, None) if attr else None
        s0 = float(raw) if isinstance(raw, float | int) else None
        if d == d0:
            note = f"head_dim {d} at both widths (heads grow): no change needed"
            specs.append(AttentionSpec(name, d, d0, attr or "", s0, None, note))
            continue
        if exponent is None:
            note = f"head_dim {d0} -> {d}: logits as the model computes them (scheme without μP)"
            specs.append(AttentionSpec(name, d, d0, attr or "", s0, None, note))
            continue
        if attr is None:
            warns.append(
                f"{name} ({type(mod).__name__}): head_dim grows {d0} -> {d} but its logit "
                "scale cannot be set, so it stays 1/sqrt(head_dim) instead of μP's 1/d_head; call "
                "mup2.parametrization.attention.use_mup_attention(model) (and on the base) "
                "before Parametrization.infer, or keep head_dim fixed and grow the number of heads"
            )
            note = f"head_dim {d0} -> {d}: NOT FIXED (the scale cannot be set)"
            specs.append(AttentionSpec(name, d, d0, "", s0, None, note))
            continue
        base_scale = s0 if s0 is not None else d0**-0.5
        scaling = base_scale * (d0 / d) ** exponent
        note = (
            f"head_dim {d0} -> {d}: {attr} {base_scale:.4g} -> {scaling:.4g} "
            f"(μP 1/d_head, equal to the model's at base width)"
        )
        specs.append(AttentionSpec(name, d, d0, attr, s0, scaling, note))
    return specs, warns


def apply_attention(model: nn.Module, specs: tuple[AttentionSpec, ...]) -> None:
    """Set the logit scale of every module in ``specs`` that has one to set (idempotent)."""
    if not any(s.scaling is not None for s in specs):
        return
    mods = {normalize_name(n): m for n, m in unwrap(model).named_modules()}
    for s in specs:
        if s.scaling is not None and s.module in mods:
            setattr(mods[s.module], s.attr, s.scaling)


def _no_fused_path(module: nn.Module, args: Any) -> None:
    """A no-op pre-hook: ``nn.TransformerEncoderLayer`` skips its fused inference kernel (which
    reads ``in_proj_weight`` directly, ignoring the scale) when a submodule has hooks."""
    return None


class MuMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with a settable logit scale ``scaling`` (``None``: torch's
    ``1/sqrt(head_dim)``). Same parameters, ``state_dict`` and call signature.

    The scale is applied by multiplying the query projection (weight rows and bias) by
    ``scaling * sqrt(head_dim)`` inside the forward: logits and gradients are exactly those of
    ``scaling * q.k``, and every option of ``nn.MultiheadAttention`` keeps working.
    """

    scaling: float | None

    def __init__(self, *args: Any, scaling: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scaling = scaling
        self.register_forward_pre_hook(_no_fused_path)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        c = 1.0 if self.scaling is None else self.scaling * math.sqrt(self.head_dim)
        e = self.embed_dim
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        bias: Tensor | None = self.in_proj_bias
        if c != 1.0 and bias is not None:
            bias = torch.cat([bias[:e] * c, bias[e:]])
        separate = not self._qkv_same_embed_dim
        in_w: Tensor | None = self.in_proj_weight
        q_w: Tensor | None = self.q_proj_weight
        if c != 1.0:
            if separate and q_w is not None:
                q_w = q_w * c
            elif in_w is not None:
                in_w = torch.cat([in_w[:e] * c, in_w[e:]])
        out, weights = F.multi_head_attention_forward(
            query,
            key,
            value,
            e,
            self.num_heads,
            in_w,
            bias,
            self.bias_k,
            self.bias_v,
            self.add_zero_attn,
            self.dropout,
            self.out_proj.weight,
            self.out_proj.bias,
            training=self.training,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            use_separate_proj_weight=separate,
            q_proj_weight=q_w,
            k_proj_weight=self.k_proj_weight,
            v_proj_weight=self.v_proj_weight,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights


def use_mup_attention(model: nn.Module) -> nn.Module:
    """Turn every ``nn.MultiheadAttention`` of ``model`` into :class:`MuMultiheadAttention` in
    place (same objects, parameters and hooks; the scale starts as torch's) and return it."""
    for mod in unwrap(model).modules():
        if type(mod) is nn.MultiheadAttention:
            mod.__class__ = MuMultiheadAttention
            vars(mod)["scaling"] = None  # a plain attribute, as MuMultiheadAttention.__init__ sets
            mod.register_forward_pre_hook(_no_fused_path)
    return model
