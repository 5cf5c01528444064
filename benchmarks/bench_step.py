"""The SAM step against its floor (issue 11): a 32-layer width-128 MLP, batch 64, one thread.

Floor: two forward/backward passes plus one foreach SGD step (momentum 0.9). Reported, from
interleaved rounds measured side by side in one run (median of paired differences):
``step/floor`` (a whole mup2 SAM step over the floor) and ``overhead ratio`` (mup2's
optimizer-side overhead over the floor's step, divided by pytorch-optimizer's). mup2's base SGD
is given ``foreach=True`` like the floor's; pytorch-optimizer's SAM uses its defaults.

Run ``.venv/bin/python benchmarks/bench_step.py [--rounds 15]``.
"""

from __future__ import annotations

import argparse
import statistics

import pytorch_optimizer
import torch
from torch import nn

import mup2
from bench_sam import (
    BASELINE,
    LR,
    MOMENTUM,
    RHO,
    Contestant,
    Runner,
    Workload,
    deep_mlp,
    medians,
    time_rounds,
)


def _floor(m: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM, foreach=True)


def _mup2(m: nn.Module) -> torch.optim.Optimizer:
    return mup2.SAM(
        m.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM, foreach=True
    )


def _mup2_loop(m: nn.Module) -> torch.optim.Optimizer:
    return mup2.SAM(m.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)


def _pto(m: nn.Module) -> torch.optim.Optimizer:
    return pytorch_optimizer.SAM(m.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)


CONTESTANTS = [
    Contestant(BASELINE, _floor, sam=False),
    Contestant("mup2 sam", _mup2),
    Contestant("mup2 sam, base for-loop", _mup2_loop),
    Contestant("pto sam", _pto),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    w = Workload(
        "deep-mlp: 32 Linear(128), batch 64",
        lambda: deep_mlp(32, 128),
        torch.randn(64, 128, generator=gen),
        torch.randint(0, 10, (64,), generator=gen),
    )
    torch.manual_seed(0)
    state = w.build().state_dict()
    runners = {c.name: Runner(c, w, state) for c in CONTESTANTS}
    step, _ = medians(time_rounds(runners, lambda r: r.step, args.rounds, 4))
    for r in runners.values():
        r.opt.zero_grad()
        r.backward()
    samples = time_rounds(runners, lambda r: r.optimizer_side, args.rounds, 20)
    opt, opt_over = medians(samples)
    print(f"== {w.name}; median of {args.rounds} interleaved rounds (thread CPU time)")
    print(f"   {'':<26} {'step ms':>8} {'step/floor':>10} {'opt-side ms':>11} {'+ms':>7}")
    for name in runners:
        print(
            f"   {name:<26} {step[name]:>8.2f} {step[name] / step[BASELINE]:>10.3f} "
            f"{opt[name]:>11.3f} {opt_over[name]:>7.3f}"
        )
    base = samples[BASELINE]
    for name in ("mup2 sam", "mup2 sam, base for-loop"):
        ratios = [
            (a - f) / (b - f)
            for a, b, f in zip(samples[name], samples["pto sam"], base, strict=True)
        ]
        print(f"   overhead ratio {name} / pto sam: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
