"""The training losses (mup2.losses): values against hand computations, leading dims, and
cross-entropy bit for bit as torch computes it (what mup2.train always did)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from mup2.losses import LOSSES, mean_loss, per_example_loss, sum_loss

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]], dtype=torch.float64)
Y = torch.tensor([0, 2])
Formula = Callable[[list[float], list[float]], float]


def _ce(row: list[float], target: list[float]) -> float:
    log_z = math.log(sum(math.exp(v) for v in row))
    return -sum(t * (v - log_z) for v, t in zip(row, target, strict=True))


def _mse(row: list[float], target: list[float]) -> float:
    return 0.5 * sum((v - t) ** 2 for v, t in zip(row, target, strict=True))


def _targets(smoothing: float) -> list[list[float]]:
    """The (smoothed) one-hot targets of Y over 3 classes, written out."""
    return [[(1 - smoothing) * (c == y) + smoothing / 3 for c in range(3)] for y in Y.tolist()]


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize(("loss", "formula"), [("cross-entropy", _ce), ("mse", _mse)])
def test_values_by_hand(loss: str, formula: Formula, smoothing: float) -> None:
    want = [formula(r, t) for r, t in zip(LOGITS.tolist(), _targets(smoothing), strict=True)]
    got = per_example_loss(LOGITS, Y, loss, smoothing)
    assert got.dtype == torch.float64 and got.shape == (2,)
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    assert float(mean_loss(LOGITS, Y, loss, smoothing)) == pytest.approx(sum(want) / 2, rel=1e-12)
    assert float(sum_loss(LOGITS, Y, loss, smoothing)) == pytest.approx(sum(want), rel=1e-12)


def test_mse_numbers() -> None:
    """1/2 ((2-1)^2 + 0^2 + (-1)^2) = 1 and 1/2 (0.5^2 + 0.5^2 + 0^2) = 0.25; its gradient in
    the logits is f - onehot(y), as cross-entropy's is softmax(f) - onehot(y)."""
    assert per_example_loss(LOGITS, Y, "mse").tolist() == [1.0, 0.25]
    f = LOGITS.clone().requires_grad_()
    per_example_loss(f, Y, "mse").sum().backward()
    assert f.grad is not None
    assert torch.equal(f.grad, LOGITS - F.one_hot(Y, 3).double())


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_leading_dims_are_batches_of_their_own(loss: str, smoothing: float) -> None:
    """(K, B, C) logits with (K, B) labels: slice k equals the loss of batch k alone."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 16, 10, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (4, 3, 16), generator=gen)
    per = per_example_loss(logits, y, loss, smoothing)
    mean, total = mean_loss(logits, y, loss, smoothing), sum_loss(logits, y, loss, smoothing)
    assert per.shape == (4, 3, 16) and mean.shape == (4, 3) and total.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            alone = per_example_loss(logits[i, j], y[i, j], loss, smoothing)
            assert torch.allclose(per[i, j], alone, rtol=1e-14, atol=0)
            m = mean_loss(logits[i, j], y[i, j], loss, smoothing)
            assert torch.allclose(mean[i, j], m, rtol=1e-13, atol=0)
            assert torch.allclose(total[i, j], sum_loss(logits[i, j], y[i, j], loss, smoothing))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_on_one_batch_is_torchs_bit_for_bit(smoothing: float) -> None:
    """The trainer's training loss (mean) and test loss (sum) are exactly the values and
    gradients of torch's fused cross-entropy, as before this module existed."""
    gen = torch.Generator().manual_seed(1)
    for n, c in ((128, 10), (999, 100)):
        logits = (3 * torch.randn(n, c, generator=gen)).requires_grad_()
        y = torch.randint(0, c, (n,), generator=gen)
        ref = F.cross_entropy(logits, y, label_smoothing=smoothing)
        got = mean_loss(logits, y, "cross-entropy", smoothing)
        assert torch.equal(got, ref)
        (g_ref,) = torch.autograd.grad(ref, logits)
        (g_got,) = torch.autograd.grad(got, logits)
        assert torch.equal(g_got, g_ref)
        total = F.cross_entropy(logits, y, reduction="sum")
        assert torch.equal(sum_loss(logits, y, "cross-entropy"), total)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(
        ValueError, match=r"loss must be one of \['cross-entropy', 'mse'\], not 'l1'"
    ):
        per_example_loss(LOGITS, Y, "l1")
    with pytest.raises(ValueError, match=r"need labels of shape \[2\] .* got \[3\]"):
        mean_loss(LOGITS, torch.tensor([0, 1, 2]), "mse")
    with pytest.raises(ValueError, match="need labels of shape"):
        sum_loss(LOGITS[0], Y[0], "cross-entropy")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got 1.0"):
        per_example_loss(LOGITS, Y, "mse", 1.0)
