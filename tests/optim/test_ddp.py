"""Two-process CPU DDP (gloo): per-replica and shared perturbations against a hand computation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from harness import Batch, free_port, join_gloo, leave_gloo, sam_step
from mup2 import SAM, Parametrization

LR, RHO, WORLD = 0.1, 0.2, 2
ROOT = Path(__file__).resolve().parents[2]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))


def _shard(rank: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(rank)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def _grads(model: nn.Module, rank: int) -> list[Tensor]:
    model.zero_grad()
    nn.functional.cross_entropy(model(_shard(rank)[0]), _shard(rank)[1]).backward()
    return [q.grad.detach().clone() for q in model.parameters()]  # type: ignore[union-attr]


def hand_step(sync: bool) -> list[Tensor]:
    """One SAM step with per-replica (or averaged) perturbation, then averaged second-pass grads."""
    model = _net()
    w = [q.detach().clone() for q in model.parameters()]
    first = [_grads(model, r) for r in range(WORLD)]
    if sync:
        mean = [sum(gs) / WORLD for gs in zip(*first, strict=True)]
        first = [mean] * WORLD
    second = []
    for r in range(WORLD):
        norm = torch.sqrt(sum((g * g).sum() for g in first[r]))
        with torch.no_grad():
            for q, w0, g in zip(model.parameters(), w, first[r], strict=True):
                q.copy_(w0 + RHO * g / norm)
        second.append(_grads(model, r))
    avg = [sum(gs) / WORLD for gs in zip(*second, strict=True)]
    return [w0 - LR * g for w0, g in zip(w, avg, strict=True)]


def _worker(rank: int, port: int, sync: bool, out: str) -> None:
    join_gloo(rank, port, WORLD)
    model = _net()
    ddp = DistributedDataParallel(model)
    p = Parametrization.infer(ddp, _net(), "mup-sgd")  # the module. prefix is normalized
    opt = SAM(p.param_groups(ddp, lr=LR), rho=RHO, model=ddp, sync_perturbation=sync)
    batch = _shard(rank)

    def loss_fn(b: Batch, net: nn.Module = ddp) -> Tensor:
        return nn.functional.cross_entropy(net(b[0]), b[1])

    sam_step(opt, loss_fn, batch)
    torch.save([q.detach() for q in model.parameters()], f"{out}.{rank}")
    # rho = 0: the base step alone, on reduced gradients even in the per-replica mode
    plain = DistributedDataParallel(_net())
    opt = SAM(p.param_groups(plain, lr=LR), rho=0.0, model=plain, sync_perturbation=sync)
    sam_step(opt, lambda b: loss_fn(b, plain), batch)
    torch.save([q.detach() for q in plain.parameters()], f"{out}.rho0.{rank}")
    # restore="swap": parameter storage alternates under DDP; three steps equal the copy's
    runs = []
    for restore in ("copy", "swap"):
        net = DistributedDataParallel(_net())
        groups = p.param_groups(net, lr=LR)
        o = SAM(groups, rho=RHO, model=net, sync_perturbation=sync, restore=restore)
        ptrs = [q.data_ptr() for q in net.parameters()]
        for _ in range(3):
            sam_step(o, lambda b, net=net: loss_fn(b, net), batch)
        moved = all(q.data_ptr() != a for q, a in zip(net.parameters(), ptrs, strict=True))
        runs.append(([q.detach() for q in net.parameters()], moved))
    torch.save(runs, f"{out}.swap.{rank}")
    leave_gloo()


@pytest.mark.parametrize("sync", [False, True])
def test_ddp_sam_matches_hand_computation(sync: bool, tmp_path: Path) -> None:
    out = str(tmp_path / "params")
    mp.spawn(_worker, args=(free_port(), sync, out), nprocs=WORLD, join=True)
    expected = hand_step(sync)
    results = [torch.load(f"{out}.{r}") for r in range(WORLD)]
    for a, b in zip(results[0], results[1], strict=True):
        assert torch.equal(a, b)  # replicas identical, bit for bit
    for got, want in zip(results[0], expected, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    model = _net()
    mean = [sum(gs) / WORLD for gs in zip(*(_grads(model, r) for r in range(WORLD)), strict=True)]
    sgd = [w0.detach() - LR * g for w0, g in zip(model.parameters(), mean, strict=True)]
    for r in range(WORLD):
        for got, want in zip(torch.load(f"{out}.rho0.{r}"), sgd, strict=True):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    for r in range(WORLD):
        (copied, copy_moved), (swapped, swap_moved) = torch.load(f"{out}.swap.{r}")
        assert swap_moved and not copy_moved
        assert all(torch.equal(a, b) for a, b in zip(copied, swapped, strict=True))
    per_replica = hand_step(False)
    differs = any(
        not torch.allclose(a, b) for a, b in zip(per_replica, hand_step(True), strict=True)
    )
    assert differs  # the two modes really are different computations


def test_ddp_example_runs_and_keeps_replicas_in_sync() -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}",
        str(ROOT / "examples" / "ddp_sam.py"), "--steps", "4", "--width", "128",
    ]  # fmt: skip
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[:3000]
    assert "replicas in sync" in proc.stdout
