"""μP scales the init the model already has (HF's N(0, 0.02), a user's own), not PyTorch's
defaults for the module type; what mup2 cannot re-initialize is shown as such and warned once."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor, nn

from mup2 import Parametrization


class OwnInit(nn.Module):
    """Embedding -> Linear -> LayerNorm -> readout, all N(0, 0.02) with zero biases (HF-style)."""

    def __init__(self, width: int, vocab: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mid = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)
        h = h + self.out(torch.relu(self.mid(h)))
        out: Tensor = self.head(self.norm(h))
        return out


def _stds(model: nn.Module) -> dict[str, float]:
    return {n: p.detach().std().item() for n, p in model.named_parameters() if p.ndim == 2}


@pytest.mark.parametrize("meta_base", [False, True])
def test_at_base_width_init_keeps_the_models_own_distribution(meta_base: bool) -> None:
    torch.manual_seed(0)
    model = OwnInit(64)
    before = _stds(model)
    if meta_base:
        with torch.device("meta"):
            base = OwnInit(64)
    else:
        base = OwnInit(64)
    p = Parametrization.infer(model, base, "mup-sgd")
    p.init_(model, seed=1)
    after = _stds(model)
    for name, std in before.items():
        assert after[name] == pytest.approx(std, rel=0.1), name
        assert after[name] == pytest.approx(0.02, rel=0.1), name
    init = p.tensors["embed.weight"].init  # measured on the model (or its real base)
    assert init.kind == "normal" and init.value == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(model.mid.bias) == 0 and torch.all(model.norm.weight == 1)


@pytest.mark.parametrize("meta_base", [False, True])
def test_mup_multipliers_scale_the_models_own_init(meta_base: bool) -> None:
    torch.manual_seed(0)
    model = OwnInit(256)
    if meta_base:
        with torch.device("meta"):
            base = OwnInit(64)
    else:
        base = OwnInit(64)
    Parametrization.infer(model, base, "mup-adam").init_(model, seed=0)
    stds = _stds(model)
    assert stds["embed.weight"] == pytest.approx(0.02, rel=0.05)  # input-like: x1
    assert stds["mid.weight"] == pytest.approx(0.02 / 2, rel=0.05)  # hidden: x m^-1/2
    assert stds["out.weight"] == pytest.approx(0.02 / 2, rel=0.05)
    assert stds["head.weight"] == pytest.approx(0.02 / 4, rel=0.05)  # output: x 1/m


def test_pytorch_default_init_still_follows_its_width_law() -> None:
    """A model left at PyTorch's defaults keeps the old behaviour exactly."""
    model = nn.Sequential(nn.Linear(12, 256), nn.ReLU(), nn.Linear(256, 256), nn.Linear(256, 5))
    base = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.Linear(64, 5))
    p = Parametrization.infer(model, base, "mup-sgd")
    assert p.tensors["2.weight"].init.value == pytest.approx(1 / math.sqrt(3 * 64) / 2)
    assert p.tensors["3.weight"].init.value == pytest.approx(1 / math.sqrt(3 * 64) / 4)
    assert p.tensors["0.weight"].init.describe() == "U(std 0.167)"


class Odd(nn.Module):
    """A parameter whose init mup2 cannot describe (nonzero mean, not constant)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.gain = nn.Parameter(1.0 + 0.1 * torch.rand(width))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.lin(x) * self.gain
        return out


def test_a_tensor_that_cannot_be_reinitialized_is_shown_and_warned_once() -> None:
    model = Odd(64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = Parametrization.infer(model, Odd(16), "mup-sgd")
    msgs = [str(w.message) for w in caught if "cannot re-initialize" in str(w.message)]
    assert len(msgs) == 1 and "gain" in msgs[0] and "init_std" in msgs[0]
    row = next(r for r in p.rows() if r["name"] == "gain")
    assert row["init"] == "keep" and row["init_rule"] == "keep"
    before = model.gain.detach().clone()
    p.init_(model, seed=0)
    assert torch.equal(model.gain, before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Parametrization.infer(model, Odd(16), overrides={"gain": {"init_std": 0.1}})
