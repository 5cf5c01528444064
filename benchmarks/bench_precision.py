"""Mixed precision: one μP² SAM step of the Figure 1 MLP in fp32 against bf16 autocast.

    .venv/bin/python benchmarks/bench_precision.py [--widths 256,1024] [--rounds 15] [--json F]

Model ``784-w-w-10`` (ReLU), batch 128, SGD with momentum, ``rho = 0.05``, the step exactly as
``mup2 train`` takes it (autocast around the forward, fp32 weights). The precisions run
interleaved round-robin on one torch thread, timed with the thread's CPU time (other processes
on a shared machine do not count); each sample is ``--steps`` steps, and the median over rounds is
reported with the ratio fp32 / bf16 (> 1: bf16 is faster). Whether bf16 pays depends on the CPU:
the script prints torch's CPU capability (bf16 GEMMs are fast with AVX-512 BF16 or AMX, and slow
emulated ones with only AVX2). On CUDA (``--device cuda``) fp16 with a GradScaler is added.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import Tensor, nn

import mup2
from mup2.models import MLP
from mup2.precision import autocast, grad_scaler


def _step_fn(width: int, precision: str, device: torch.device) -> tuple[object, int]:
    torch.manual_seed(0)
    model = MLP(width=width).to(device)
    with torch.device("meta"):
        base = MLP(width=64)
    p = mup2.Parametrization.infer(model, base, "mup-sgd")
    p.init_(model, seed=0)
    opt = mup2.SAM(p.param_groups(model, lr=0.05), torch.optim.SGD, rho=0.05, momentum=0.9)
    x = torch.randn(128, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    scaler = grad_scaler(precision, device)

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast(precision, device):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        (loss if scaler is None else scaler.scale(loss)).backward()
        return loss

    def step() -> None:
        opt.step(closure, scaler=scaler)
        if scaler is not None:
            scaler.update()

    return step, sum(t.numel() for t in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="256,1024")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    clock = time.thread_time if device.type == "cpu" else time.perf_counter
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    out: dict[str, dict[str, float]] = {}
    print(
        "| width | params | " + " | ".join(f"{p} ms/step" for p in precisions) + " | fp32 / bf16 |"
    )
    print("|---|---|" + "---|" * len(precisions) + "---|")
    for width in (int(w) for w in args.widths.split(",")):
        fns = {p: _step_fn(width, p, device) for p in precisions}
        samples: dict[str, list[float]] = {p: [] for p in precisions}
        for fn, _ in fns.values():
            fn()  # warm-up
        for r in range(args.rounds):
            order = precisions[r % len(precisions) :] + precisions[: r % len(precisions)]
            for prec in order:
                fn = fns[prec][0]
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = clock()
                for _ in range(args.steps):
                    fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                samples[prec].append((clock() - t0) / args.steps * 1e3)
        med = {p: statistics.median(s) for p, s in samples.items()}
        out[str(width)] = {**med, "ratio_fp32_over_bf16": med["fp32"] / med["bf16"]}
        cols = " | ".join(f"{med[p]:.2f}" for p in precisions)
        n = fns["fp32"][1]
        print(f"| {width} | {n} | {cols} | {med['fp32'] / med['bf16']:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
