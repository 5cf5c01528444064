"""Where the ViT's depth check departs from the derivation (``docs/math.md`` §9): the gradient
of each block along the stack, and the residual stream it reads, as the model deepens.

The depth check's setting (``mup2 coordcheck --model vit --depths 2,4,8,16 --optimizer adamw``):
the ViT at width 64 against a base of 2 blocks, its fixed batch of 32, SAM (``rho`` 0.1, μP²
with the perturbation's depth factor) around AdamW (lr 1e-3, ``mup-adam``), float64. After
``--steps`` steps, at the unperturbed weights, for each readout of :data:`MODELS` (``vit``: the
cls token, drawn at ``TOKEN_STD`` = 0.02; the same with the cls token drawn at std 0.5;
``vit-mean``: the mean of the patch tokens) and depth (``L`` blocks, ``D = L/L0`` with ``L0``
the smallest depth, the base), the mean over seeds of:

- ``stream``: the RMS of the residual stream entering block ``l`` (the input of its ``ln1``);
- ``cls row``: the RMS of the cls token's row of that stream (``vit`` only);
- ``D·|g_l|``: the gradient norm of block ``l``'s parameters times ``D``. CompleteP's branch
  multiplier ``D^-1`` predicts ``|g_l| ∝ D^-1``, so this column should not change with depth;
  the depth factor ``D`` of the perturbation is derived from it. (Under width-only μP², which has
  no branch multiplier, ``|g_l|`` itself would stay level.)

Writes ``docs/results/depth/gradient-profile-vit.md``::

    python experiments/depth/gradient_profile.py [--depths 2,4,8,16] [--seeds 3] [--steps 10]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.functional import cross_entropy
from torch.nn.utils import get_total_norm

from mup2.coordcheck.depth import depth_batch, depth_factory
from mup2.optim.sam import SAM
from mup2.parametrization import Parametrization

SETTINGS = {"width-only μP²": None, "depth-aware μP² (α=1)": 1.0}
#: The readouts compared: label -> (model of DEPTH_MODELS, the cls token's init std; None: the
#: model's own, TOKEN_STD). The middle one changes only the cls token's scale.
MODELS: dict[str, tuple[str, float | None]] = {
    "vit": ("vit", None),
    "vit, cls_token std 0.5": ("vit", 0.5),
    "vit-mean": ("vit-mean", None),
}


def profile(
    model_name: str,
    depth: int,
    alpha: float | None,
    seed: int,
    steps: int,
    base_depth: int,
    cls_std: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(stream RMS (L,), cls row RMS (L,), |g_l| (L,))`` of the ViT ``model_name`` (a key of
    :data:`~mup2.coordcheck.depth.DEPTH_MODELS`) of ``depth`` blocks, against its base of
    ``base_depth`` blocks, after ``steps`` SAM steps (see the module docstring); the cls row's
    entries are NaN without a cls token. ``cls_std``: the cls token drawn again, after the μP
    init, from ``N(0, cls_std²)`` (the same seed)."""
    with torch.device("meta"):
        base = depth_factory(model_name, 64)(base_depth)
    torch.manual_seed(seed)
    model = depth_factory(model_name, 64)(depth).double()
    p = Parametrization.infer(model, base, "mup-adam", alpha=alpha)
    p.init_(model, seed=seed)
    if cls_std is not None:
        with torch.no_grad():
            model.cls_token.normal_(std=cls_std)  # type: ignore[operator]
    opt = SAM(p.param_groups(model, lr=1e-3), torch.optim.AdamW, rho=0.1, scaling="mup2")
    x, y = depth_batch(model_name)
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
        b.register_forward_pre_hook(lambda _m, a: streams.append(a[0].detach())) for b in blocks
    ]
    closure()
    for h in hooks:
        h.remove()
    grads = [
        float(get_total_norm([q.grad for q in b.parameters() if q.grad is not None]))
        for b in blocks
    ]

    def rms(t: Tensor) -> Tensor:
        return t.pow(2).mean().sqrt()

    cls = [rms(h[:, 0]) if model.pool == "cls" else torch.tensor(math.nan) for h in streams]
    return (
        torch.stack([rms(h) for h in streams]),
        torch.stack(cls).double(),
        torch.tensor(grads, dtype=torch.float64),
    )


def _cells(v: Tensor, fmt: str) -> str:
    """The first three entries, the median of the rest but the last, and the last."""
    if bool(v.isnan().all()):
        return "–"
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
    t0 = time.time()
    rows = []
    for name, (model_name, cls_std) in MODELS.items():
        for label, alpha in SETTINGS.items():
            for d in depths:
                runs = [
                    profile(model_name, d, alpha, s, args.steps, depths[0], cls_std)
                    for s in range(args.seeds)
                ]
                stream, cls, grad = (torch.stack(r).mean(0) for r in zip(*runs, strict=True))
                cells = (
                    _cells(stream, ".2f"),
                    _cells(cls, ".3f"),
                    _cells(grad * d / depths[0], ".3f"),
                )
                rows.append(f"| {name} | {label} | {d} | {' | '.join(cells)} |")
                print(rows[-1], f"({time.time() - t0:.0f} s)", flush=True)
    head = (
        "# The ViT's gradient along the stack\n\n"
        f"Made by `python experiments/depth/gradient_profile.py --depths {args.depths} --seeds "
        f"{args.seeds} --steps {args.steps}` ({time.time() - t0:.0f} s on the CPU): the ViT at "
        f"width 64, its depth against a base of {depths[0]} blocks (`D = L/{depths[0]}`), the "
        "depth check's batch of 32, SAM (ρ = 0.1, μP²) around AdamW (lr 1e-3, `mup-adam`), "
        f"float64, after {args.steps} steps, the mean over seeds 0..{args.seeds - 1}. Per "
        "block, bottom to top (blocks 1-3 · the median of the blocks between · the last block): "
        "the RMS of the residual stream entering it, the RMS of the cls token's row of it "
        "(`vit`, read by the cls token, drawn at std 0.02 or, in the second model, 0.5; "
        "`vit-mean`, read by the mean of the patch tokens, has none), and `D·|g_l|`, its "
        "parameters' gradient norm times `D`, which CompleteP's "
        "branch multiplier `D^-1` predicts to stay level as the model deepens.\n\n"
        "| model | setting | depth | stream RMS | cls row RMS | D·\\|g_l\\| |\n"
        "|---|---|---|---|---|---|\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gradient-profile-vit.md").write_text(head + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
