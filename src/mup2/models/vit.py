"""A small Vision Transformer whose width is the embedding dimension, with μP attention scaling.

Width grows by adding heads of a fixed dimension ``d_head``. Attention logits are
``attn_mult * q.k / d_head`` (μP's ``1/d_head``); the default ``attn_mult = sqrt(d_head)`` makes
them exactly SP's ``q.k / sqrt(d_head)`` at every width, since ``d_head`` is fixed. Tune
``attn_mult`` like any other width-independent hyperparameter. With ``zero_init=True`` (the μP²
paper's μP ViT) the query projections and the readout start at zero; the model ships those
overrides to :meth:`mup2.Parametrization.infer` as ``mup2_overrides``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["TOKEN_STD", "ZERO_INIT_PATTERNS", "Attention", "Block", "ViT"]

#: Std of the normal init of ``cls_token`` and ``pos_embed`` (width-independent: input-like).
TOKEN_STD = 0.02
#: Tensors zero-initialized when ``zero_init=True``: every query projection and the readout.
ZERO_INIT_PATTERNS = ("blocks.*.attn.q.*", "head.*")


class Attention(nn.Module):
    """Multi-head self-attention on ``(batch, tokens, width)`` with separate q/k/v/o Linears."""

    def __init__(self, width: int, d_head: int, attn_mult: float) -> None:
        super().__init__()
        self.heads, self.d_head = width // d_head, d_head
        self.scale = attn_mult / d_head
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.o = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape

        def split(t: Tensor) -> Tensor:  # (b, n, width) -> (b, heads, n, d_head)
            return t.view(b, n, self.heads, self.d_head).transpose(1, 2)

        out = nn.functional.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x)), scale=self.scale
        )
        result: Tensor = self.o(out.transpose(1, 2).reshape(b, n, -1))
        return result


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, width: int, d_head: int, attn_mult: float, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, d_head, attn_mult)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        out: Tensor = x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))
        return out


class ViT(nn.Module):
    """Vision Transformer: non-overlapping ``patch_size`` patches embedded by a strided conv,
    a learned ``cls_token`` and ``pos_embed`` (shapes ``(1, 1, width)`` and
    ``(1, 1 + patches, width)``), ``depth`` pre-LN :class:`Block` s, a final LayerNorm and a
    Linear ``head`` on the cls token. ``pool="mean"`` instead reads the mean over the patch
    tokens (no ``cls_token``; ``pos_embed`` ``(1, patches, width)``; the LayerNorm after the
    mean, as timm's ``global_pool="avg"``).

    Why ``"mean"`` exists: under CompleteP's ``1/L`` branches the cls token's row of the
    residual stream keeps its small init (RMS ``TOKEN_STD``) through the bottom blocks, and each
    pre-LN divides the gradient on it by that RMS, so the bottom blocks' gradients shrink slower
    than ``1/L`` (``docs/math.md`` §9). Mean pooling has no such row.

    Input ``(batch, in_channels, image_size, image_size)``, output ``(batch, num_classes)``
    logits. ``width`` must be a multiple of ``d_head``; there are ``width // d_head`` heads.
    ``attn_mult=None`` means ``sqrt(d_head)`` (SP's logits, see the module docstring). Base width
    for μP: :attr:`BASE_WIDTH` (4 heads of 32).

    Roles (inferred): the patch embedding and the cls/pos tokens are input-like; q/k/v/o and the
    MLP Linears hidden-like; LayerNorm parameters input-like norm parameters; ``head.weight``
    output-like. :attr:`mup2_overrides` gives the tokens a seeded ``N(0, TOKEN_STD)`` init and,
    with ``zero_init``, zero-initializes :data:`ZERO_INIT_PATTERNS`.
    """

    BASE_WIDTH = 128

    def __init__(
        self,
        width: int = 128,
        depth: int = 6,
        d_head: int = 32,
        patch_size: int = 4,
        image_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 10,
        mlp_ratio: int = 4,
        attn_mult: float | None = None,
        zero_init: bool = True,
        pool: str = "cls",
    ) -> None:
        super().__init__()
        if d_head < 1 or width < d_head or width % d_head:
            raise ValueError(f"width ({width}) must be a positive multiple of d_head ({d_head})")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(
                f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})"
            )
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.width, self.depth, self.d_head, self.pool = width, depth, d_head, pool
        self.attn_mult = math.sqrt(d_head) if attn_mult is None else float(attn_mult)
        self.zero_init = zero_init
        patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        if pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + (pool == "cls"), width))
        self.blocks = nn.Sequential(
            *(Block(width, d_head, self.attn_mult, mlp_ratio) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        with torch.no_grad():  # the documented init also without mup2 (a no-op on meta)
            for name in self._tokens():
                nn.init.normal_(getattr(self, name), std=TOKEN_STD)
            if zero_init:
                for name, p in self.named_parameters():
                    if name.startswith("head.") or ".attn.q." in name:
                        p.zero_()

    @property
    def mup2_overrides(self) -> dict[str, dict[str, Any]]:
        """Overrides picked up by :meth:`mup2.Parametrization.infer` (fnmatch pattern -> fields)."""
        out: dict[str, dict[str, Any]] = {t: {"init_std": TOKEN_STD} for t in self._tokens()}
        if self.zero_init:
            out.update({pat: {"init_mult": 0.0} for pat in ZERO_INIT_PATTERNS})
        return out

    def _tokens(self) -> tuple[str, ...]:
        """The learned token tensors: ``cls_token`` (with ``pool="cls"``) and ``pos_embed``."""
        return ("cls_token", "pos_embed") if self.pool == "cls" else ("pos_embed",)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (batch, patches, width)
        if self.pool == "mean":
            h = self.blocks(tokens + self.pos_embed)
            logits: Tensor = self.head(self.norm(h.mean(1)))
            return logits
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = self.blocks(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        logits = self.head(self.norm(h[:, 0]))
        return logits
