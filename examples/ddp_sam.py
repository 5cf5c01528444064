"""SAM under DDP with per-replica perturbations (the original SAM's m-sharpness), on CPU with gloo.

Run: ``torchrun --nproc-per-node=2 --master-addr=127.0.0.1 examples/ddp_sam.py``
(set ``GLOO_SOCKET_IFNAME=lo`` if gloo picks another interface).

Each replica perturbs its weights with its *own* first-pass gradient: the first forward and
backward run under ``model.no_sync()``, so no all-reduce happens there. The second pass is an
ordinary DDP backward (gradients averaged), the weights are restored exactly (the default
``restore="copy"``, so rounding cannot make the replicas drift apart), and every replica takes
the same base step. Pass ``sync_perturbation=True``
to share one perturbation computed from the averaged gradient instead.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import mup2
from mup2.models import MLP


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--sync-perturbation", action="store_true")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts them)
    model = MLP(args.width, in_features=32, norm="batch")
    p = mup2.Parametrization.infer(model, MLP(MLP.BASE_WIDTH, in_features=32, norm="batch"))
    p.init_(model, seed=0)
    ddp = DistributedDataParallel(model)
    opt = mup2.SAM(
        p.param_groups(ddp, lr=0.1),
        torch.optim.SGD,
        rho=0.05,
        momentum=0.9,
        model=ddp,  # first pass under no_sync, second pass with frozen BatchNorm statistics
        sync_perturbation=args.sync_perturbation,
    )
    gen = torch.Generator().manual_seed(1000 + rank)  # each replica its own shard
    for step in range(args.steps):
        x = torch.randn(64, 32, generator=gen)
        y = (x[:, 0] > 0).long()

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(ddp(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        if rank == 0 and step % 5 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")  # type: ignore[union-attr]

    flat = torch.cat([q.detach().flatten() for q in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        same = all(torch.equal(gathered[0], g) for g in gathered[1:])
        print("replicas in sync" if same else "REPLICAS DIVERGED")
    dist.barrier()  # no rank may tear gloo down while another still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # torch 2.13 can abort in interpreter finalization after a gloo run ("terminate called
    # without an active exception", about 1 run in 20 here, after all work is done): leave the
    # way multiprocessing's workers do, without finalization.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
