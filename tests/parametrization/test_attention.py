"""μP's 1/d_head attention logits: set where the model lets it be set, a drop-in for
nn.MultiheadAttention, a warning with the fix otherwise, nothing when only the heads grow."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from mup2 import Parametrization
from mup2.parametrization.attention import MuMultiheadAttention, use_mup_attention

from nets import Scaled


def _net(width: int, heads: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, width), Scaled(width, heads), nn.Linear(width, 3))


def test_growing_head_dim_gets_one_over_d_head() -> None:
    model, base = _net(256, 4), _net(64, 4)  # head_dim 16 -> 64
    p = Parametrization.infer(model, base, "mup-sgd")
    p.init_(model, seed=0)
    assert model[1].scaling == pytest.approx(16**-0.5 * 16 / 64)
    p.init_(model, seed=0)  # idempotent
    assert model[1].scaling == pytest.approx(16**-0.5 * 16 / 64)
    assert "1/d_head" in p.report()
    sp = _net(256, 4)
    Parametrization.infer(sp, base, "sp").init_(sp, seed=0)
    assert sp[1].scaling == pytest.approx(64**-0.5)  # SP: the model as built


def test_growing_heads_need_no_change() -> None:
    model = _net(256, 16)  # head_dim 16 fixed, heads 4 -> 16
    p = Parametrization.infer(model, _net(64, 4), "mup-sgd")
    p.init_(model, seed=0)
    assert model[1].scaling == pytest.approx(16**-0.5)
    assert "no change needed" in p.report()


def _encoder(width: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def test_plain_mha_with_growing_head_dim_warns_with_the_fix() -> None:
    with pytest.warns(UserWarning, match=r"use_mup_attention"):
        Parametrization.infer(_encoder(64, 2), _encoder(16, 2), "mup-sgd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Parametrization.infer(_encoder(64, 8), _encoder(16, 2), "mup-sgd")  # head_dim fixed


def test_mha_drop_in_matches_and_scales() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 2, batch_first=True)
    mu = MuMultiheadAttention(32, 2, batch_first=True)
    mu.load_state_dict(mha.state_dict())
    x = torch.randn(3, 5, 32)
    ref, ref_w = mha(x, x, x)
    out, w = mu(x, x, x)
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(w, ref_w, atol=1e-6)
    mu.scaling = 2.0 * 16**-0.5  # twice torch's 1/sqrt(head_dim), head_dim 16
    scaled = nn.MultiheadAttention(32, 2, batch_first=True)
    scaled.load_state_dict(mha.state_dict())
    with torch.no_grad():
        scaled.in_proj_weight[:32] *= 2.0
        scaled.in_proj_bias[:32] *= 2.0
    assert torch.allclose(mu(x, x, x)[0], scaled(x, x, x)[0], atol=1e-6)


def test_use_mup_attention_swaps_in_place_and_infer_sets_the_scaling() -> None:
    enc = _encoder(64, 2)
    params = list(enc.parameters())
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    x = torch.randn(2, 7, 64)
    enc.eval()
    with torch.no_grad():
        ref = enc(x)
    use_mup_attention(enc)
    assert all(isinstance(layer.self_attn, MuMultiheadAttention) for layer in enc.layers)
    assert all(a is b for a, b in zip(list(enc.parameters()), params))
    assert set(enc.state_dict()) == set(state)
    with torch.no_grad():
        assert torch.allclose(enc(x), ref, atol=1e-5)  # the fused inference path is not taken
    base = use_mup_attention(_encoder(16, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = Parametrization.infer(enc, base, "mup-adam")
    p.init_(enc, seed=0)
    assert enc.layers[0].self_attn.scaling == pytest.approx(8**-0.5 * 8 / 32)
    assert math.isclose(enc.layers[1].self_attn.scaling, enc.layers[0].self_attn.scaling)
