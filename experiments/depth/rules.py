"""The coordinate check across depth for every SAM rule (``docs/math.md`` §9): the ResMLP at
width 128, depths 2 -> 32 against a base of 2, under CompleteP's branches with and without the
perturbation's depth factor, around SGD and AdamW. Writes
``docs/results/depth/coordcheck-rules.md`` and ``.json`` (the last step's records)::

    python experiments/depth/rules.py [--depths 2,4,8,16,32] [--seeds 2]

One row per (rule, base optimizer, setting): the range, over the blocks' layers (each folded
layer ``blocks.{#,first,last}.*``), of the update's and the effective perturbation's slope
against log2 depth relative to the layer's own activation, and the effective perturbation's
relative slope of the layers outside the blocks. At ``α = 1`` both should be flat; at ``α = 1/2``
(Depth-μP) a block's update moves its features by ``D^-1/2`` and its perturbation should follow.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mup2.coordcheck.depth import coord_check_depth, depth_factory, depth_records
from mup2.coordcheck.measure import CoordCheck
from mup2.optim.onepass import onepass_optimizer
from mup2.optim.rules import get_rule
from mup2.optim.sam import SAM

RULES = ("sam", "asam", "asam-layerwise", "sam-on", "msam", "rwp")
BASES: dict[str, dict[str, Any]] = {
    "SGD": {"base_optimizer": torch.optim.SGD, "lr": 0.1, "scheme": "mup-sgd"},
    "AdamW": {"base_optimizer": torch.optim.AdamW, "lr": 1e-3, "scheme": "mup-adam"},
}


def without_depth_factor(
    rule: str, base: type[torch.optim.Optimizer], rho: float, **base_kwargs: Any
) -> Callable[[list[dict[str, Any]]], SAM]:
    """``rule``'s optimizer whose perturbation ignores the groups' depth factor (CompleteP's
    branches and LR, μP²'s width-only perturbation)."""

    def make(groups: list[dict[str, Any]]) -> SAM:
        plain = [{k: v for k, v in g.items() if k != "depth_mult"} for g in groups]
        r = get_rule(rule)
        if r.one_pass:
            cls = onepass_optimizer(r)
            return cls(plain, base, rho=rho, scaling="mup2", restore="copy", **base_kwargs)
        return SAM(plain, base, rho=rho, rule=rule, scaling="mup2", **base_kwargs)

    return make


def ranges(res: CoordCheck) -> dict[str, Any]:
    """The relative slopes' ranges over the blocks' layers, and those outside the blocks."""

    def rel(layer: str, q: str) -> float:
        return res.slope(layer, q) - res.slope(layer, "activation")

    blocks = [lay.name for lay in res.layers if lay.name.startswith("blocks.")]
    out: dict[str, Any] = {}
    for q in ("update", "effective_perturbation"):
        vals = [v for v in (rel(n, q) for n in blocks) if not math.isnan(v)]
        out[q] = (min(vals), max(vals))
    out["outside"] = {
        lay.name: rel(lay.name, "effective_perturbation")
        for lay in res.layers
        if not lay.name.startswith("blocks.") and ":" not in lay.name
    }
    return out


def _span(lo: float, hi: float) -> str:
    return f"{lo:+.2f} … {hi:+.2f}"


def _slope(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:+.2f}"  # –: not perturbed (SAM-ON)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", default="2,4,8,16,32")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rho", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=Path("docs/results/depth"))
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    factory = depth_factory("resmlp", 128, in_features=32)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 32, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    t0 = time.time()
    rows, recs = [], []
    for rule in RULES:
        for base_name, base in BASES.items():
            momentum = {"momentum": 0.9} if get_rule(rule).reads_momentum else {}
            if base_name == "AdamW":
                momentum = {}
            common: dict[str, Any] = {
                "seeds": range(args.seeds),
                "steps": args.steps,
                "rho": args.rho,
                "lr": base["lr"],
                "scheme": base["scheme"],
            }
            opt = base["base_optimizer"]
            settings: list[tuple[str, dict[str, Any]]] = [
                (
                    "CompleteP, no depth factor",
                    {
                        "alpha": 1.0,
                        "optimizer": without_depth_factor(rule, opt, args.rho, **momentum),
                    },
                ),
                (
                    "depth-aware μP² (α=1)",
                    {"alpha": 1.0, "rule": rule, "base_optimizer": opt, "base_kwargs": momentum},
                ),
                (
                    "depth-aware μP² (α=1/2)",
                    {"alpha": 0.5, "rule": rule, "base_optimizer": opt, "base_kwargs": momentum},
                ),
            ]
            for label, kw in settings:
                res = coord_check_depth(factory, depths, x, y, **common, **kw)
                r = ranges(res)
                outside = ", ".join(f"{k} {_slope(v)}" for k, v in r["outside"].items())
                rows.append(
                    f"| {rule} | {base_name} | {label} | {_span(*r['update'])} | "
                    f"{_span(*r['effective_perturbation'])} | {outside} |"
                )
                recs += [  # the last step's, as the table
                    dict(rec, rule=rule) for rec in depth_records([(label, res)], step=-1)
                ]
                print(rows[-1], f"({time.time() - t0:.0f} s)", flush=True)
    head = (
        "# Coordinate check across depth, every SAM rule\n\n"
        f"Made by `python experiments/depth/rules.py --depths {args.depths} --seeds "
        f"{args.seeds}` ({time.time() - t0:.0f} s on the CPU): the ResMLP at width 128, depths "
        f"{depths} against a base of {depths[0]} blocks, one fixed batch of 32, {args.steps} "
        f"steps (ρ = {args.rho}; MSAM around SGD with momentum 0.9), SGD lr 0.1 (`mup-sgd`) or "
        f"AdamW lr 1e-3 (`mup-adam`), float64, seeds 0..{args.seeds - 1}. Slopes of log2 RMS "
        "against log2 depth at the last step, minus the layer's own activation slope; ranges "
        "over the blocks' folded layers (`blocks.{#,first,last}.{ln,fc1,fc2}`; SAM-ON perturbs "
        "only `ln`). At α = 1 both should be flat (|slope| ≤ 0.25); at α = 1/2 a block's "
        "update moves its features by D^-1/2 and the perturbation should follow it.\n\n"
        "| rule | base | setting | blocks' update | blocks' eff. pert. | outside the blocks, "
        "eff. pert. |\n|---|---|---|---|---|---|\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coordcheck-rules.md").write_text(head + "\n".join(rows) + "\n")
    (args.out / "coordcheck-rules.json").write_text(json.dumps(recs) + "\n")


if __name__ == "__main__":
    main()
