"""The coordinate check on modules it does not call itself: MHA's functional out_proj, modules
with forward pre-hooks, tied tensors under each of their roles, and attention logits."""

from __future__ import annotations

import math
from functools import partial

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
