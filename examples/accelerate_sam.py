"""mup2.SAM with Hugging Face accelerate: devices, DDP and checkpoints from accelerate, both SAM
passes from mup2.

Run: ``python examples/accelerate_sam.py --steps 20`` (one process) or
``accelerate launch --num_processes 2 --cpu examples/accelerate_sam.py`` (DDP; on CPU set
``GLOO_SOCKET_IFNAME=lo`` and ``MASTER_ADDR=127.0.0.1``). ``--save-at K --state DIR`` saves the
whole state (model, SAM with its base optimizer, RNG) after step K with
``accelerator.save_state``; ``--resume DIR`` continues from there. ``--accum N`` splits each
batch into N micro-batches (:meth:`mup2.SAM.step_accumulate`, gradient sync in the last only).

SAM is stepped through the optimizer inside accelerate's wrapper (``opt.optimizer``):
``AcceleratedOptimizer.step(closure)`` returns nothing, and the accumulated step is SAM's own.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import mup2
from mup2.models import MLP


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--save-at", type=int, default=0)
    parser.add_argument("--state", default="")
    parser.add_argument("--resume", default="")
    parser.add_argument("--out", default="", help="save the final weights here (rank 0)")
    args = parser.parse_args()

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = MLP(args.width, in_features=16)
    with torch.device("meta"):
        base = MLP(MLP.BASE_WIDTH, in_features=16)
    p = mup2.Parametrization.infer(model, base)
    p.init_(model, seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 16, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    loader = DataLoader(data, batch_size=32, shuffle=False)
    sam = mup2.SAM(p.param_groups(model, lr=0.1), torch.optim.SGD, rho=0.05, momentum=0.9)
    model, opt, loader = accelerator.prepare(model, sam, loader)
    sam.model = model  # the prepared (DDP) model: first pass under no_sync, BatchNorm frozen
    start = 0
    if args.resume:
        accelerator.load_state(args.resume)
        start = args.save_at
    batches = [b for _ in range(args.steps // len(loader) + 1) for b in loader]

    def loss_fn(batch: tuple[Tensor, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    for step in range(start, args.steps):
        batch = batches[step]
        if args.accum > 1:
            micro = list(zip(*(t.chunk(args.accum) for t in batch), strict=True))
            loss = sam.step_accumulate(loss_fn, micro)
        else:

            def closure(batch: tuple[Tensor, Tensor] = batch) -> Tensor:
                opt.zero_grad()
                loss = loss_fn(batch)
                accelerator.backward(loss)
                return loss

            loss = sam.step(closure)  # type: ignore[assignment]
        if accelerator.is_main_process and step % 5 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")
        if args.save_at and step + 1 == args.save_at and args.state:
            accelerator.save_state(args.state)
    if args.out and accelerator.is_main_process:
        torch.save([q.detach() for q in accelerator.unwrap_model(model).parameters()], args.out)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as in examples/ddp_sam.py: no interpreter finalization after gloo
