"""``mup2.optim.contexts``: BatchNorm statistics frozen for SAM's second pass, and gradient
synchronization switched off (DDP) or left alone (plain modules, ``enabled=True``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mup2.optim.contexts import frozen_bn_stats, gradient_sync, no_sync

from nets import ConvNet

BN = nn.modules.batchnorm._BatchNorm


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def _batch_norm_reference(x: torch.Tensor, bn: BN) -> torch.Tensor:
    """Normalization with the batch's own (biased) statistics, in float64, by hand."""
    dims = [d for d in range(x.dim()) if d != 1]
    shape = [1, -1] + [1] * (x.dim() - 2)
    xd = x.double()
    mean = xd.mean(dims, keepdim=True)
    var = (xd - mean).pow(2).mean(dims, keepdim=True)
    assert bn.weight is not None and bn.bias is not None
    w, b = bn.weight.double().view(shape), bn.bias.double().view(shape)
    return (xd - mean) / torch.sqrt(var + bn.eps) * w + b


@pytest.mark.parametrize("shape", [(16, 6), (8, 6, 5), (8, 4, 3, 3)], ids=["1d", "1d-seq", "2d"])
def test_frozen_bn_stats_normalizes_with_the_batch_and_keeps_the_buffers(
    shape: tuple[int, ...],
) -> None:
    torch.manual_seed(0)
    bn: BN = nn.BatchNorm2d(shape[1]) if len(shape) == 4 else nn.BatchNorm1d(shape[1])
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    bn.train()
    bn(torch.randn(shape) * 3 + 1)  # running statistics away from their initial values
    before = _buffers(bn)
    assert int(before["num_batches_tracked"]) == 1
    x = torch.randn(shape) * 2 - 0.5
    with frozen_bn_stats(bn):
        y = bn(x)
        bn(x + 1.0)  # a second pass: still nothing recorded
    after = _buffers(bn)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    ref = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    assert torch.equal(y, ref)
    torch.testing.assert_close(y.double(), _batch_norm_reference(x, bn), rtol=1e-5, atol=1e-5)
    # afterwards the layer records statistics again, with its momentum
    assert bn.track_running_stats
    bn(x)
    assert int(bn.num_batches_tracked) == 2  # type: ignore[arg-type]
    dims = [d for d in range(x.dim()) if d != 1]
    m = bn.momentum
    assert m is not None
    torch.testing.assert_close(
        bn.running_mean, (1 - m) * before["running_mean"] + m * x.mean(dims), rtol=1e-5, atol=1e-6
    )
    n = x.numel() // x.shape[1]
    unbiased = x.var(dims, unbiased=False) * n / (n - 1)
    torch.testing.assert_close(
        bn.running_var, (1 - m) * before["running_var"] + m * unbiased, rtol=1e-5, atol=1e-6
    )


def test_frozen_bn_stats_gradients_are_those_of_batch_norm() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(5).double()
    x = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    with frozen_bn_stats(bn):
        torch.autograd.backward(bn(x).pow(3).sum())
    assert x.grad is not None and bn.weight.grad is not None
    got = (x.grad.clone(), bn.weight.grad.clone())
    x2 = x.detach().clone().requires_grad_()
    w = bn.weight.detach().clone().requires_grad_()
    b = bn.bias.detach().clone().requires_grad_()
    torch.autograd.backward(
        F.batch_norm(x2, None, None, w, b, training=True, eps=bn.eps).pow(3).sum()
    )
    assert x2.grad is not None and w.grad is not None
    assert torch.equal(got[0], x2.grad) and torch.equal(got[1], w.grad)


def test_frozen_bn_stats_in_a_model_and_when_the_block_raises() -> None:
    torch.manual_seed(0)
    model = ConvNet(4).train()
    model(torch.randn(2, 3, 5, 5))
    before = _buffers(model)
    with pytest.raises(RuntimeError, match=r"^boom$"), frozen_bn_stats(model):
        torch.autograd.backward(model(torch.randn(2, 3, 5, 5)).sum())
        assert not model.bn0.track_running_stats and not model.bn1.track_running_stats
        raise RuntimeError("boom")
    assert model.bn0.track_running_stats and model.bn1.track_running_stats
    after = _buffers(model)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_frozen_bn_stats_leaves_other_layers_as_they_were() -> None:
    torch.manual_seed(0)
    untracked = nn.BatchNorm1d(3, track_running_stats=False)
    tracked = nn.BatchNorm1d(3)
    model = nn.Sequential(nn.Linear(4, 3), untracked, tracked, nn.LayerNorm(3))
    with frozen_bn_stats(model):
        model(torch.randn(6, 4))
    assert not untracked.track_running_stats  # not switched on by the block
    assert tracked.track_running_stats and int(tracked.num_batches_tracked) == 0  # type: ignore[arg-type]
    # eval mode inside the block: the running statistics are used, as outside it
    assert tracked.running_mean is not None and tracked.running_var is not None
    tracked.running_mean.fill_(0.5)
    tracked.running_var.fill_(4.0)
    model.eval()
    x = torch.randn(6, 4)
    outside = model(x)
    with frozen_bn_stats(model):
        inside = model(x)
    assert torch.equal(inside, outside)


def _grads_twice(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    torch.autograd.backward(model(x).sum())
    torch.autograd.backward(model(x).sum())
    weight = next(model.parameters()).grad
    assert weight is not None
    return weight.clone()


def test_no_sync_and_gradient_sync_on_a_plain_module_are_no_ops() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    torch.autograd.backward(model(x).sum())
    assert model.weight.grad is not None
    once = model.weight.grad.clone()
    plain = _grads_twice(model, x)
    torch.testing.assert_close(plain, 2 * once, rtol=0, atol=0)
    makers: list[Callable[[], AbstractContextManager[None]]] = [
        lambda: no_sync(model),
        lambda: gradient_sync(model, False),
        lambda: gradient_sync(model, True),
        lambda: gradient_sync(None, False),
    ]
    for make in makers:
        ctx = make()
        assert isinstance(ctx, nullcontext)
        with ctx:
            inside = _grads_twice(model, x)
        assert torch.equal(inside, plain)


@pytest.fixture
def one_process_group(tmp_path: Path) -> Iterator[None]:
    """A 1-process gloo group in this process (rendezvous through a file: no sockets)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    init = f"file://{tmp_path / 'rendezvous'}"
    dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("one_process_group")
def test_gradient_sync_switches_ddp_synchronization_off_only_when_disabled() -> None:
    torch.manual_seed(0)
    ddp = nn.parallel.DistributedDataParallel(nn.Linear(4, 2))
    assert isinstance(gradient_sync(ddp, True), nullcontext)
    assert ddp.require_backward_grad_sync
    with gradient_sync(ddp, False):
        assert not ddp.require_backward_grad_sync
        torch.autograd.backward(ddp(torch.randn(3, 4)).sum())
    assert ddp.require_backward_grad_sync
    with no_sync(ddp):
        assert not ddp.require_backward_grad_sync
    assert ddp.require_backward_grad_sync
