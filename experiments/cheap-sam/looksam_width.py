"""LookSAM's correction across width: on a step between SAM steps, per weight matrix, the size of
``alpha (||g|| / ||g_v||) g_v`` relative to the plain gradient ``g``, under μP (``mup-sgd``) with
μP² SAM, for widths 64 to 1024 (3 seeds each) and the log-log slope over width.

    PYTHONPATH=src python experiments/cheap-sam/looksam_width.py

Result (2026-12-05, CPU, float32; a 64 -> w -> w -> 10 ReLU MLP, one SAM step then one step
between): global LookSAM's ratio grows slowly with width (slopes +0.17, +0.16, +0.13 for the
input, hidden and readout matrices: 0.85 -> 1.36, 0.83 -> 1.32, 0.46 -> 0.64); ``layerwise``
LookSAM's is ``alpha`` for every tensor at every width, by construction.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mup2 import SAM, Parametrization
from mup2.optim.looksam import reuse_

WIDTHS, SEEDS, ALPHA = (64, 128, 256, 512, 1024), range(3), 0.7


def mlp(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


def ratios(
    width: int, seed: int, layerwise: bool, x: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    model = mlp(width)
    p = Parametrization.infer(model, mlp(64), "mup-sgd")
    p.init_(model, seed=seed)
    opt = SAM(p.param_groups(model, lr=0.1), rho=0.1, momentum=0.9, every=2,
              between="looksam", alpha=ALPHA, layerwise=layerwise)  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)  # a SAM step: stores g_v
    closure()  # the next step's one gradient
    params = list(model.parameters())
    plain = [q.grad.clone() for q in params]
    reuse_([q.grad for q in params], [opt.state[q]["looksam_gv"] for q in params], ALPHA,
           layerwise)  # fmt: skip
    names = [n for n, _ in model.named_parameters()]
    return {
        n: float((q.grad - g).norm() / g.norm())
        for n, q, g in zip(names, params, plain, strict=True)
        if q.ndim == 2
    }


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 64, generator=g), torch.randint(0, 10, (128,), generator=g)
    for layerwise in (False, True):
        mean = {}
        for w in WIDTHS:
            runs = [ratios(w, s, layerwise, x, y) for s in SEEDS]
            mean[w] = {n: sum(r[n] for r in runs) / len(runs) for n in runs[0]}
        names = list(mean[WIDTHS[0]])
        print(("layerwise" if layerwise else "global") + " LookSAM: width " + " ".join(names))
        for w in WIDTHS:
            print(f"  {w:5d} " + " ".join(f"{mean[w][n]:.3f}" for n in names))
        fits = [slope(list(WIDTHS), [mean[w][n] for w in WIDTHS]) for n in names]
        print("  slope " + " ".join(f"{s:+.2f}" for s in fits))


if __name__ == "__main__":
    main()
