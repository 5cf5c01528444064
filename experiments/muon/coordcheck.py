"""The Muon coordinate check: under ``mup-muon`` and μP² perturbation scaling, every layer's
update and effective perturbation stay Θ(1) from width 64 to 1024 (``docs/math.md``, Muon).

A 4-layer ReLU MLP (two hidden matrices, which Muon trains; AdamW on the input layer, the readout
and the biases), one fixed batch, 3 SAM steps around :class:`mup2.optim.MuonAdamW`, seeds 0-1,
slopes of log2 RMS against log2 width at the last step. Controls: Muon with μP-Adam's hidden LR
(``1/m``: the hidden updates vanish) and with no width factor for Muon (hidden LR x 1: they grow),
and naive perturbation scaling (ρ fixed); the controls without biases, whose AdamW update
would otherwise add a Θ(1) term to each Linear's measured update. Writes
``docs/results/muon/coordcheck.md`` and ``coordcheck.json``::

    python experiments/muon/coordcheck.py [--widths 64,128,256,512,1024] [--out docs/results/muon]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from functools import partial
from pathlib import Path

import torch

from mup2.coordcheck import coord_check, format_slopes, records
from mup2.coordcheck.measure import CoordCheck
from mup2.models import MLP
from mup2.optim.muon import MuonAdamW
from mup2.parametrization.schemes import MUP_MUON, RoleRule
from mup2.roles import Power, Role


def _hidden_lr(power: Power, name: str) -> object:
    """``mup-muon`` with another LR rule for Muon's hidden matrices (a control)."""
    roles = dict(MUP_MUON.roles)
    roles[Role.HIDDEN] = RoleRule(init=roles[Role.HIDDEN].init, lr=power)
    return dataclasses.replace(MUP_MUON, name=name, roles=roles)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="64,128,256,512,1024")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--rho", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=Path("docs/results/muon"))
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 32, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    factory = partial(MLP, depth=4, in_features=32)
    plain = partial(MLP, depth=4, in_features=32, bias=False)  # the update is dW x alone
    runs = [
        ("mup-muon", MUP_MUON, "mup2", factory),
        ("mup-muon", MUP_MUON, "naive", factory),
        ("mup-muon, no biases", MUP_MUON, "mup2", plain),
        (
            "hidden LR x 1/m (μP-Adam's), no biases",
            _hidden_lr(Power(in_=-1.0), "h-1/m"),
            "mup2",
            plain,
        ),
        ("hidden LR x 1 (no width factor), no biases", _hidden_lr(Power(), "h-1"), "mup2", plain),
    ]
    results: list[tuple[str, CoordCheck]] = []
    t0 = time.time()
    for label, scheme, scaling, make in runs:
        res = coord_check(
            make,
            widths,
            x,
            y,
            scheme=scheme,  # type: ignore[arg-type]
            rule="sam",
            scaling=scaling,
            rho=args.rho,
            lr=args.lr,
            steps=args.steps,
            seeds=range(args.seeds),
            base_optimizer=MuonAdamW,
        )
        results.append((label, res))
        print(f"{label} / {scaling}: {time.time() - t0:.0f}s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Muon coordinate check (μP² around `mup2.optim.MuonAdamW`)",
        "",
        f"Made by `python experiments/muon/coordcheck.py` ({time.time() - t0:.0f} s on the CPU): "
        f"a 4-layer ReLU MLP (input 32, 10 classes), widths {widths} (base {widths[0]}), "
        f"one fixed batch of 32, {args.steps} SAM steps (rule `sam`, ρ = {args.rho}) around "
        f"MuonAdamW (base lr {args.lr}, momentum 0.95, Nesterov, "
        "`adjust_lr_fn='match_rms_adamw'`; AdamW betas (0.9, 0.999)), float64 "
        f"(Muon's Newton-Schulz runs in bf16), seeds 0..{args.seeds - 1}. Slope of log2 RMS "
        "against log2 width at the last step; Θ(1) means |slope| <= 0.25. `features.2`, "
        "`features.4` are the hidden matrices (Muon), `features.0` the input layer and `head` "
        "the readout (AdamW).",
        "",
        "| run | scaling | layer | role | activation | update | effective perturbation |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, res in results:
        for lay in res.layers:
            s = {
                q: res.slope(lay.name, q)
                for q in ("activation", "update", "effective_perturbation")
            }
            lines.append(
                f"| {label} | {res.scaling} | {lay.name} | {lay.role.value} | "
                + " | ".join(f"{v:+.2f}" for v in s.values())
                + " |"
            )
    lines += ["", "Full tables (`format_slopes`):", ""]
    for label, res in results:
        lines += [f"### {label}, {res.scaling}", "", "```", format_slopes([res]), "```", ""]
    (args.out / "coordcheck.md").write_text("\n".join(lines))
    recs = [dict(r, run=label) for label, res in results for r in records([res])]
    (args.out / "coordcheck.json").write_text(json.dumps(recs, indent=1) + "\n")
    print("\n".join(lines[:60]))


if __name__ == "__main__":
    main()
