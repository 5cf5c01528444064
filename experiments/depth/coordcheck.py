"""The coordinate check across depth (``docs/math.md`` §9): at a fixed width, each block's
activation, update and effective perturbation against log2 depth, under width-only μP² (the
shallower base matched, nothing scaled with depth), CompleteP with μP²'s width-only perturbation
(branches x D^-1 but no depth factor in the perturbation), and depth-aware μP² (CompleteP plus
the perturbation's D^(2α-1)). Writes ``docs/results/depth/coordcheck-<model>.md``, ``.json`` and
``.png`` (the blocks' means and the layers outside the blocks against depth, one column a
setting)::

    python experiments/depth/coordcheck.py [--model resmlp|vit|vit-mean] [--depths 2,4,8,16,32]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from mup2.coordcheck.depth import (
    DEPTH_MODELS,
    coord_check_depth,
    depth_batch,
    depth_factory,
    depth_records,
    format_depth_summary,
    plot_depth_checks,
)
from mup2.coordcheck.measure import CoordCheck
from mup2.optim.sam import SAM


def _without_depth_factor(base: type[torch.optim.Optimizer], **kw: Any) -> Any:
    """SAM whose perturbation ignores the groups' depth factor (CompleteP, width-only μP²)."""

    def make(groups: list[dict[str, Any]]) -> SAM:
        plain = [{k: v for k, v in g.items() if k != "depth_mult"} for g in groups]
        return SAM(plain, base, scaling="mup2", **kw)

    return make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resmlp", choices=list(DEPTH_MODELS))
    ap.add_argument("--depths", default="2,4,8,16,32")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rho", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=Path("docs/results/depth"))
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    width = args.width or (128 if args.model == "resmlp" else 64)
    extra = {"in_features": 32} if args.model == "resmlp" else {}
    factory = depth_factory(args.model, width, **extra)
    x, y = depth_batch(args.model)
    t0 = time.time()
    results: list[tuple[str, CoordCheck]] = []
    for opt, lr, scheme in (
        (torch.optim.SGD, 0.1, "mup-sgd"),
        (torch.optim.AdamW, 1e-3, "mup-adam"),
    ):
        name = opt.__name__
        common = {"seeds": range(args.seeds), "steps": args.steps, "lr": lr, "scheme": scheme}
        settings: list[tuple[str, dict[str, Any]]] = [
            (f"{name}: width-only μP²", {"alpha": None, "base_optimizer": opt}),
            (
                f"{name}: CompleteP, width-only perturbation",
                {"alpha": 1.0, "optimizer": _without_depth_factor(opt, rho=args.rho)},
            ),
            (f"{name}: depth-aware μP² (α=1)", {"alpha": 1.0, "base_optimizer": opt}),
        ]
        for label, kw in settings:
            res = coord_check_depth(factory, depths, x, y, rho=args.rho, **common, **kw)
            results.append((label, res))
            print(f"{label}: {time.time() - t0:.0f}s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    head = (
        f"# Coordinate check across depth: {args.model} at width {width}\n\n"
        f"Made by `python experiments/depth/coordcheck.py --model {args.model} --depths "
        f"{args.depths}` ({time.time() - t0:.0f} s on the CPU): depths {depths} against a base "
        f"of {depths[0]} blocks, one fixed batch of 32, {args.steps} SAM steps (rule `sam`, "
        f"ρ = {args.rho}), SGD lr 0.1 (`mup-sgd`) or AdamW lr 1e-3 (`mup-adam`), float64, seeds "
        f"0..{args.seeds - 1}. Slope of log2 RMS against log2 depth at the last step; `rel.`: "
        "minus the layer's own activation slope (a branch output carries the branch multiplier "
        "D^-α, which this removes); `P.#`: the mean over the blocks, `first`/`last`: block 0 and "
        "block L-1. Target (issue 23 §2): every block's update and effective perturbation flat "
        "(|rel. slope| <= 0.25) under depth-aware μP².\n\n"
    )
    (args.out / f"coordcheck-{args.model}.md").write_text(
        head + format_depth_summary(results) + "\n"
    )
    recs = depth_records(results)
    (args.out / f"coordcheck-{args.model}.json").write_text(json.dumps(recs, indent=1) + "\n")
    plot_depth_checks(results, args.out / f"coordcheck-{args.model}.png")
    print(format_depth_summary(results, markdown=False))


if __name__ == "__main__":
    main()
