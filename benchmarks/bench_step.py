"""The SAM step against its floor (issue 11): a 32-layer width-128 MLP, batch 64, one thread.

Floor: two forward/backward passes plus one foreach SGD step (momentum 0.9). Reported, from
interleaved rounds measured side by side in one run (medians over rounds of paired ratios):
``step/floor`` (a whole SAM step over the floor's in the same round) and ``overhead ratio`` (a
SAM's optimizer-side overhead over the floor's step, divided by pytorch-optimizer's). mup2's base
SGD is given ``foreach=True`` like the floor's; pytorch-optimizer's SAM uses its defaults. mup2 runs
with its default ``restore="copy"`` (parameter storage never moves) and with ``restore="swap"``
(the restore exchanges storage with the buffer instead of copying back: one pass fewer). Also
timed: ``minimal sam``, the least any SAM with an exact restore in place does per step (one
multi-tensor norm, save, perturb and copy back: four calls over the tensors, then the base
step), written here for reference and checked to compute mup2's weights.

Each round runs every contestant once, in rotated order, so a round's samples share the
machine's state; many short rounds make the paired medians stable on a noisy (shared) CPU.
Run ``.venv/bin/python benchmarks/bench_step.py [--rounds 201]``.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import pytorch_optimizer
import torch
from torch import nn

from bench_sam import (
    BASELINE,
    LR,
    MOMENTUM,
    RHO,
    Contestant,
    Runner,
    Workload,
    _mup2_sam,
    deep_mlp,
    medians,
    time_rounds,
)


def _floor(m: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM, foreach=True)


class MinimalSAM:
    """SAM (one global norm, exact restore) in the fewest multi-tensor calls, around foreach SGD."""

    def __init__(self, params: list[nn.Parameter], rho: float, **sgd: Any) -> None:
        self.params, self.rho = params, rho
        self.base = torch.optim.SGD(params, foreach=True, **sgd)
        self.bufs = [torch.empty_like(p) for p in params]

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        grads = [p.grad for p in self.params]
        k = self.rho / torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        torch._foreach_copy_(self.bufs, self.params)
        torch._foreach_addcmul_(self.params, grads, [k] * len(grads))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self) -> None:
        torch._foreach_copy_(self.params, self.bufs)
        self.base.step()

    def zero_grad(self) -> None:
        self.base.zero_grad()


def _minimal(m: nn.Module) -> Any:
    return MinimalSAM(list(m.parameters()), RHO, lr=LR, momentum=MOMENTUM)


def _pto(m: nn.Module) -> torch.optim.Optimizer:
    return pytorch_optimizer.SAM(m.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)


CONTESTANTS = [
    Contestant(BASELINE, _floor, sam=False),
    Contestant("mup2 sam", _mup2_sam(foreach=True)),
    Contestant("mup2 sam, restore=swap", _mup2_sam(foreach=True, restore="swap")),
    Contestant("mup2 sam, base for-loop", _mup2_sam()),
    Contestant("pto sam", _pto),
    Contestant("minimal sam", _minimal),
]
SAMS = ("mup2 sam", "mup2 sam, restore=swap", "mup2 sam, base for-loop", "minimal sam")


def check_same_weights(w: Workload, steps: int = 3) -> float:
    """The largest weight difference of the minimal SAM and of mup2's swap restore from mup2's
    default SAM (float64) after a few steps, relative to the weights' movement; it must be at
    rounding level."""
    build = w.build
    w64 = Workload(w.name, lambda: build().double(), w.x.double(), w.y)
    torch.manual_seed(0)
    state = w64.build().state_dict()
    names = ("mup2 sam", "minimal sam", "mup2 sam, restore=swap")
    runs = [Runner(c, w64, state) for c in CONTESTANTS if c.name in names]
    w0 = [p.detach().clone() for p in runs[0].params]
    for r in runs:
        for _ in range(steps):
            r.step()
    with torch.no_grad():
        moved = max(float((p - q).abs().max()) for p, q in zip(runs[0].params, w0, strict=True))
        diff = max(
            float((p - q).abs().max())
            for r in runs[1:]
            for p, q in zip(runs[0].params, r.params, strict=True)
        )
    if not diff <= 1e-10 * moved:
        raise AssertionError(f"a SAM differs from mup2 sam by {diff:.1e} (moved {moved:.1e})")
    return diff / moved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=201)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    w = Workload(
        "deep-mlp: 32 Linear(128), batch 64",
        lambda: deep_mlp(32, 128),
        torch.randn(64, 128, generator=gen),
        torch.randint(0, 10, (64,), generator=gen),
    )
    same = check_same_weights(w)
    torch.manual_seed(0)
    state = w.build().state_dict()
    runners = {c.name: Runner(c, w, state) for c in CONTESTANTS}
    steps = time_rounds(runners, lambda r: r.step, args.rounds, 1)
    step, _ = medians(steps)
    per_floor = {  # paired: a round's samples share the machine's state
        n: statistics.median(a / f for a, f in zip(s, steps[BASELINE], strict=True))
        for n, s in steps.items()
    }
    for r in runners.values():
        r.opt.zero_grad()
        r.backward()
    samples = time_rounds(runners, lambda r: r.optimizer_side, args.rounds, 4)
    opt, opt_over = medians(samples)
    print(f"== {w.name}; median of {args.rounds} interleaved rounds (thread CPU time)")
    print(f"   {'':<26} {'step ms':>8} {'step/floor':>10} {'opt-side ms':>11} {'+ms':>7}")
    for name in runners:
        print(
            f"   {name:<26} {step[name]:>8.2f} {per_floor[name]:>10.3f} "
            f"{opt[name]:>11.3f} {opt_over[name]:>7.3f}"
        )
    base = samples[BASELINE]
    print(f"   (all SAMs compute mup2's weights: relative difference {same:.0e}, float64)")
    for name in SAMS:
        ratios = [
            (a - f) / (b - f)
            for a, b, f in zip(samples[name], samples["pto sam"], base, strict=True)
        ]
        print(f"   overhead ratio {name} / pto sam: {statistics.median(ratios):.3f}")
    over = [
        (a - f) / (b - f)
        for a, b, f in zip(samples["mup2 sam"], samples["minimal sam"], base, strict=True)
    ]
    print(f"   overhead ratio mup2 sam / minimal sam: {statistics.median(over):.3f}")


if __name__ == "__main__":
    main()
