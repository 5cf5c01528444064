"""A 2-process FSDP2 SAM step against a 2-process FSDP2 SGD step of the same model (gloo, CPU).

Each rank: ``fully_shard`` per Linear plus the root, one thread, a fixed batch. The SGD step is
one forward/backward plus ``SGD.step`` (foreach); the SAM step is :meth:`mup2.SAM.step` (two
forward/backward passes, the perturbation with its one ``all_reduce``). Also reported: the
floor, two forward/backward passes plus the SGD step. Interleaved rounds, median wall time of
rank 0. Run ``.venv/bin/python benchmarks/bench_fsdp.py [--width 256 --depth 8 --rounds 7]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.distributed.fsdp import fully_shard

import mup2


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model(width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m)
    fully_shard(model)
    return model


def _worker(rank: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(args.batch, args.width, generator=g), torch.randint(0, 10, (args.batch,))
    runs: dict[str, Callable[[], None]] = {}
    for name in ("sgd", "floor", "sam"):
        model = _model(args.width, args.depth)
        if name == "sam":
            opt: torch.optim.Optimizer = mup2.SAM(
                model.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9,
                foreach=True, model=model,
            )  # fmt: skip
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)

        def closure(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        def step(
            name: str = name, opt: torch.optim.Optimizer = opt, c: Callable[[], Tensor] = closure
        ) -> None:
            if name == "sam":
                opt.step(c)
                return
            c()
            if name == "floor":
                c()
            opt.step()

        runs[name] = step
    times: dict[str, list[float]] = {n: [] for n in runs}
    for r in range(args.rounds + 1):
        for name, step in runs.items():
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(args.iters):
                step()
            dist.barrier()
            if r:  # the first round warms up
                times[name].append((time.perf_counter() - t0) / args.iters * 1e3)
    if rank == 0:
        ms = {n: statistics.median(t) for n, t in times.items()}
        print(f"FSDP2, 2 processes, {args.depth + 1} Linear({args.width}), batch {args.batch}/rank")
        for n in ms:
            print(f"  {n:<6} {ms[n]:8.2f} ms")
        print(f"  SAM step / SGD step {ms['sam'] / ms['sgd']:.3f}")
        print(f"  SAM step / floor (2 fwd/bwd + SGD) {ms['sam'] / ms['floor']:.3f}")
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    mp.spawn(_worker, args=(_port(), args), nprocs=2, join=True)


if __name__ == "__main__":
    main()
