"""Where the ViT's depth check departs from the derivation (``docs/math.md`` §9): the gradient
of each block along the stack, and the residual stream it reads, as the model deepens.

The depth check's setting (``mup2 coordcheck --model vit --depths 2,4,8,16 --optimizer adamw``):
the ViT at width 64 against a base of 2 blocks, its fixed batch of 32, SAM (``rho`` 0.1, μP²
with the perturbation's depth factor) around AdamW (lr 1e-3, ``mup-adam``), float64. After
``--steps`` steps, at the unperturbed weights, for each depth (``L`` blocks, ``D = L/L0`` with
``L0`` the smallest depth, the base), the mean over seeds of:

- ``stream``: the RMS of the residual stream entering block ``l`` (the input of its ``ln1``);
- ``D·|g_l|``: the gradient norm of block ``l``'s parameters times ``D``. CompleteP's branch
  multiplier ``D^-1`` predicts ``|g_l| ∝ D^-1``, so this column should not change with depth;
  the depth factor ``D`` of the perturbation is derived from it. (Under width-only μP², which has
  no branch multiplier, ``|g_l|`` itself would stay level.)

Writes ``docs/results/depth/gradient-profile-vit.md``::

    python experiments/depth/gradient_profile.py [--depths 2,4,8,16] [--seeds 3] [--steps 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.functional import cross_entropy
from torch.nn.utils import get_total_norm

from mup2.coordcheck.depth import depth_batch, depth_factory
from mup2.optim.sam import SAM
from mup2.parametrization import Parametrization

SETTINGS = {"width-only μP²": None, "depth-aware μP² (α=1)": 1.0}


def profile(
    depth: int, alpha: float | None, seed: int, steps: int, base: nn.Module
) -> tuple[Tensor, Tensor]:
    """``(stream RMS (L,), |g_l| (L,))`` of the ViT of ``depth`` blocks after ``steps`` SAM
    steps (see the module docstring)."""
    torch.manual_seed(seed)
    model = depth_factory("vit", 64)(depth).double()
    p = Parametrization.infer(model, base, "mup-adam", alpha=alpha)
    p.init_(model, seed=seed)
    opt = SAM(p.param_groups(model, lr=1e-3), torch.optim.AdamW, rho=0.1, scaling="mup2")
    x, y = depth_batch("vit")
    x = x.double()
    blocks = list(model.blocks)  # type: ignore[arg-type]

    def closure() -> Tensor:
        opt.zero_grad()
        loss = cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    streams: list[Tensor] = []
    hooks = [
        b.register_forward_pre_hook(
            lambda _m, a: streams.append(a[0].detach().pow(2).mean().sqrt())
        )
        for b in blocks
    ]
    closure()
    for h in hooks:
        h.remove()
    grads = [
        float(get_total_norm([q.grad for q in b.parameters() if q.grad is not None]))
        for b in blocks
    ]
    return torch.stack(streams), torch.tensor(grads, dtype=torch.float64)


def _cells(v: Tensor, fmt: str) -> str:
    """The first three entries, the median of the rest but the last, and the last."""
    if len(v) <= 4:
        return " ".join(format(float(a), fmt) for a in v)
    head = " ".join(format(float(a), fmt) for a in v[:3])
    return f"{head} · {format(float(v[3:-1].median()), fmt)} · {format(float(v[-1]), fmt)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", default="2,4,8,16")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("docs/results/depth"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    depths = [int(d) for d in args.depths.split(",")]
    with torch.device("meta"):
        base = depth_factory("vit", 64)(depths[0])
    t0 = time.time()
    rows = []
    for label, alpha in SETTINGS.items():
        for d in depths:
            runs = [profile(d, alpha, s, args.steps, base) for s in range(args.seeds)]
            stream = torch.stack([r[0] for r in runs]).mean(0)
            grad = torch.stack([r[1] for r in runs]).mean(0) * (d / depths[0])
            rows.append(f"| {label} | {d} | {_cells(stream, '.2f')} | {_cells(grad, '.3f')} |")
            print(rows[-1], f"({time.time() - t0:.0f} s)", flush=True)
    head = (
        "# The ViT's gradient along the stack\n\n"
        f"Made by `python experiments/depth/gradient_profile.py --depths {args.depths} --seeds "
        f"{args.seeds} --steps {args.steps}` ({time.time() - t0:.0f} s on the CPU): the ViT at "
        f"width 64, its depth against a base of {depths[0]} blocks (`D = L/{depths[0]}`), the "
        "depth check's batch of 32, SAM (ρ = 0.1, μP²) around AdamW (lr 1e-3, `mup-adam`), "
        f"float64, after {args.steps} steps, the mean over seeds 0..{args.seeds - 1}. Per "
        "block, bottom to top (blocks 1-3 · the median of the blocks between · the last block): "
        "the RMS of the residual stream entering it, and `D·|g_l|`, its parameters' gradient "
        "norm times `D`, which CompleteP's branch multiplier `D^-1` predicts to stay level as "
        "the model deepens.\n\n"
        "| setting | depth | stream RMS | D·\\|g_l\\| |\n|---|---|---|---|\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gradient-profile-vit.md").write_text(head + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
