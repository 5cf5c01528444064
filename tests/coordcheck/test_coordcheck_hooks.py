"""The coordinate check on modules it does not call itself: MHA's functional out_proj, modules
with forward pre-hooks, tied tensors under each of their roles, and attention logits."""

from __future__ import annotations

import math
import warnings
from functools import partial

import pytest
import torch
from torch import Tensor, nn

from mup2.coordcheck import coord_check

from nets import Scaled, TiedLM

WIDTHS = (32, 64, 128)


class EncoderClassifier(nn.Module):
    def __init__(self, width: int, head_dim: int = 8) -> None:
        super().__init__()
        self.inp = nn.Linear(6, width)
        layer = nn.TransformerEncoderLayer(
            width, width // head_dim, 2 * width, dropout=0.0, batch_first=True
        )
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(width, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.enc(self.inp(x)).mean(1))
        return out


def _xy() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)


def test_mha_out_proj_is_measured() -> None:
    x, y = _xy()
    r = coord_check(EncoderClassifier, WIDTHS, x, y, scaling="mup2", seeds=(0,))
    name = "enc.layers.0.self_attn.out_proj"
    assert r.layer(name).role.value == "hidden"
    for q in ("activation", "update", "effective_perturbation", "total_perturbation"):
        assert math.isfinite(r.slope(name, q)), q
        assert abs(r.slope(name, q)) <= 0.3, (q, r.slope(name, q))


class Doubled(nn.Module):
    """Linear -> Linear whose input a forward pre-hook doubles -> Linear."""

    def __init__(self, width: int, hook: bool) -> None:
        super().__init__()
        self.hook = hook
        self.a, self.b, self.c = nn.Linear(6, width), nn.Linear(width, width), nn.Linear(width, 3)
        if hook:
            self.b.register_forward_pre_hook(lambda m, args: (args[0] * 2.0,))

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        out: Tensor = self.c(torch.relu(self.b(h if self.hook else 2.0 * h)))
        return out


def test_a_forward_pre_hook_is_applied_once() -> None:
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    hooked = coord_check(partial(Doubled, hook=True), WIDTHS, x, y, seeds=(0,))
    inline = coord_check(partial(Doubled, hook=False), WIDTHS, x, y, seeds=(0,))
    for q in ("update", "effective_perturbation"):
        a, b = hooked.values[(0, "b", q)], inline.values[(0, "b", q)]
        assert all(math.isclose(u, v, rel_tol=1e-9) for u, v in zip(a, b)), (q, a, b)


def test_tied_tensor_is_reported_under_each_role() -> None:
    tokens = torch.randint(0, 40, (8, 6))

    def loss(out: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(out.flatten(0, 1), y.flatten())

    for head_first in (False, True):
        r = coord_check(
            partial(TiedLM, head_first=head_first), WIDTHS, tokens, tokens, loss_fn=loss
        )
        assert r.layer("embed").group == "input-like"
        assert r.layer("head").group == "output-like"
        for q in ("update", "effective_perturbation"):
            assert abs(r.slope("head", q)) <= 0.25, (head_first, q, r.slope("head", q))


def _attn_net(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, width), Scaled(width, 2), nn.Linear(width, 3))


def test_attention_logits_are_measured() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, 6, generator=gen)
    y = torch.randint(0, 3, (8, 5), generator=gen)  # seeded: the global RNG depends on test order

    def loss(out: Tensor, t: Tensor) -> Tensor:
        return nn.functional.cross_entropy(out.flatten(0, 1), t.flatten())

    widths = (32, 64, 128, 256)
    mup = coord_check(_attn_net, widths, x, y, loss_fn=loss, lr=0.5, seeds=(0, 1))
    lay = mup.layer("1:logits")
    assert lay.group == "attention"
    assert math.isnan(mup.slope("1:logits", "effective_perturbation"))  # no own parameters
    # head_dim grows with 1/d_head: the first step's change does not grow (it vanishes like
    # m^-1/2 here: at init dL/dlogits is a sum of uncorrelated terms, see docs/transformers.md)
    assert mup.slope("1:logits", "update") <= 0.0
    # μP without the 1/d_head fix (logits still 1/sqrt(d_head)): the change grows like m^1/2
    sqrt_d = coord_check(
        _attn_net,
        widths,
        x,
        y,
        loss_fn=loss,
        lr=0.5,
        seeds=(0, 1),
        attention=False,
    )
    assert sqrt_d.slope("1:logits", "update") >= 0.3


class Attention(nn.Module):
    """Self-attention with a settable head dimension, computed by SDPA, by
    ``nn.MultiheadAttention`` (``need_weights`` picks its SDPA or explicit path) or by hand
    (``q @ k.T``, ``Tensor.softmax``); ``causal`` masks the future. Logits scaled by
    ``1/sqrt(head_dim)`` on every path."""

    def __init__(self, width: int, path: str, causal: bool = False) -> None:
        super().__init__()
        self.head_dim, self.path, self.causal = width // 2, path, causal
        self.inp, self.head = nn.Linear(6, width), nn.Linear(width, 3)
        self.mha = nn.MultiheadAttention(width, 2, batch_first=True, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        b, n, d = h.shape
        mask = torch.ones(n, n, dtype=torch.bool).triu(1) if self.causal else None
        if self.path in ("mha-sdpa", "mha-explicit"):
            out, _ = self.mha(h, h, h, need_weights=self.path == "mha-explicit", attn_mask=mask)
        else:  # the MHA's projections, the attention by SDPA or by hand
            w = self.mha.in_proj_weight
            q, k, v = (
                t.view(b, n, 2, self.head_dim).transpose(1, 2) for t in (h @ w.T).chunk(3, -1)
            )
            if self.path == "sdpa":
                att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
            else:
                logits = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
                if mask is not None:
                    logits = logits.masked_fill(mask, float("-inf"))
                att = logits.softmax(-1) @ v
            out = self.mha.out_proj(att.transpose(1, 2).reshape(b, n, d))
        result: Tensor = self.head(out.mean(1))
        return result


@pytest.mark.parametrize("causal", [False, True])
def test_attention_logits_are_measured_on_every_path(causal: bool) -> None:
    """The logits of one attention, computed by SDPA, by nn.MultiheadAttention on either path
    or by hand with a softmax, measure the same (a masked entry is left out); the paths differ
    only in rounding."""
    x, y = _xy()
    found = {}
    for path in ("sdpa", "by-hand", "mha-sdpa", "mha-explicit"):
        factory = partial(Attention, path=path, causal=causal)
        r = coord_check(factory, WIDTHS, x, y, seeds=(0,), attention=False)
        name = "mha:logits" if path.startswith("mha") else "(root):logits"
        assert r.layer(name).group == "attention", path
        found[path] = {q: r.values[(0, name, q)] for q in ("activation", "update")}
    for path, values in found.items():
        for q, v in values.items():
            assert all(math.isfinite(a) for a in v), (path, q, v)
            assert v == pytest.approx(found["sdpa"][q], rel=1e-9), (path, q)


def test_a_softmax_outside_attention_is_not_taken_for_logits() -> None:
    def net(width: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(6, width), nn.Softmax(-1), nn.Linear(width, 3))

    r = coord_check(net, WIDTHS, torch.randn(8, 6), torch.randint(0, 3, (8,)), seeds=(0,))
    assert not [lay for lay in r.layers if lay.group == "attention"]


class KeptAttention(nn.Module):
    """A tensor mup2 cannot re-initialize and an nn.MultiheadAttention whose head dimension
    grows: two warnings at every width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.inp, self.head = nn.Linear(6, width), nn.Linear(width, 3)
        self.gain = nn.Parameter(torch.randn(width) + 3.0)
        self.mha = nn.MultiheadAttention(width, 2, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x) * self.gain
        out: Tensor = self.head(self.mha(h, h, h)[0].mean(1))
        return out


def test_warnings_are_given_once_not_per_width() -> None:
    x, y = _xy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coord_check(KeptAttention, (16, 32, 64, 128), x, y, seeds=(0, 1))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert "cannot re-initialize ['gain']" in messages[0]
    assert "head_dim grows 8 -> 64" in messages[1]  # as at the largest width
    assert {w.filename for w in caught} == {__file__}  # from the caller's line
