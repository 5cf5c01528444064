"""Helpers shared by the SAM-step and multi-process tests: a float64 test net, one SAM step on a
batch (closure or accumulated), and joining and leaving a 2-process gloo group on localhost."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

import mup2

Batch = tuple[Tensor, Tensor]


def tanh_net(width: int = 16) -> nn.Module:
    """``5 -> width -> width -> 3`` Tanh MLP in float64, seeded (the readout's 3 rows shard
    unevenly over 2 ranks)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(5, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 3)
    )
    return net.double()


def split(batch: Batch, n: int) -> list[Batch]:
    """``batch`` as ``n`` equal micro-batches."""
    return list(zip(batch[0].chunk(n), batch[1].chunk(n), strict=True))


def sam_step(
    opt: mup2.SAM, loss_fn: Callable[[Batch], Tensor], batch: Batch, micro: int | None = None
) -> None:
    """One step on ``batch``: ``opt.step(closure)``, or with ``micro`` micro-batches
    :meth:`mup2.SAM.step_accumulate`."""
    if micro is not None:
        opt.step_accumulate(loss_fn, split(batch, micro))
        return

    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_fn(batch)
        loss.backward()
        return loss

    opt.step(closure)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def join_gloo(rank: int, port: int, world: int) -> None:
    """Join a ``world``-process gloo group on 127.0.0.1 with one torch thread per process."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def leave_gloo() -> NoReturn:
    """End a spawned gloo worker: wait for every rank, tear the group down, exit at once.

    torch 2.13 can abort in interpreter finalization after a gloo run ("terminate called without
    an active exception", SIGABRT, after all work is done), and spawned processes finalize, so a
    worker leaves without it (as ``examples/ddp_sam.py`` does)."""
    dist.barrier()  # no rank may tear gloo down while another still talks to it
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def rank0_results(worker: Callable[[int, int, str], None], tmp: Path, world: int) -> Any:
    """Run ``worker(rank, port, out)`` in ``world`` spawned processes; what rank 0 saved (with
    ``torch.save``) to ``out``, a file in the directory ``tmp``."""
    out = str(tmp / "results.pt")
    mp.spawn(worker, args=(free_port(), out), nprocs=world, join=True)
    return torch.load(out)
