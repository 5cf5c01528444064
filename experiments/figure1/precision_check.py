"""Does bf16 autocast change what the Figure 1 study measures? One cell of its grid, 3 seeds.

    .venv/bin/python experiments/figure1/precision_check.py [--width 64] [--lr 2^-5] [--rho 2^-3]

Trains the study's MLP (``mlp.toml``'s training config) at one (width, η, ρ) under μP² SAM in
fp32 and in bf16, seeds 0-2, and writes ``precision.md`` beside this file: final test accuracy
per seed, mean ± sd per precision, and seconds per run (bf16 pays only on CPUs with native bf16
GEMMs; the script says which CPU it ran on).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from mup2.sweep import GridPoint, load_sweep_config, trial_config
from mup2.train import load_data, train

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2.0**-5)
    ap.add_argument("--rho", type=float, default=2.0**-3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "precision.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sweep = load_sweep_config(HERE / "mlp.toml")
    data = None
    rows: dict[str, list[tuple[float, float]]] = {"fp32": [], "bf16": []}
    for seed in range(args.seeds):
        for precision in rows:
            point = GridPoint("mup2", args.width, args.lr, args.rho, seed)
            cfg = trial_config(sweep, point).model_copy(update={"precision": precision})
            data = data or load_data(cfg.data)
            t0 = time.perf_counter()
            result = train(cfg, data=data)
            acc = result.test_accuracy if result.test_accuracy is not None else 0.0
            rows[precision].append((acc, time.perf_counter() - t0))
            print(f"seed {seed} {precision}: {100 * acc:.2f}%", flush=True)
    lines = [
        f"μP² SAM, width {args.width}, η = {args.lr:g}, ρ = {args.rho:g}, the study's training "
        f"config; torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}.",
        "",
        "| precision | "
        + " | ".join(f"seed {s}" for s in range(args.seeds))
        + " | mean ± sd | s / run |",
        "|---|" + "---|" * (args.seeds + 2),
    ]
    for precision, res in rows.items():
        accs = [100 * a for a, _ in res]
        lines.append(
            f"| {precision} | "
            + " | ".join(f"{a:.2f}" for a in accs)
            + f" | {statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f} "
            f"| {statistics.mean(s for _, s in res):.1f} |"
        )
    diffs = [100 * (b[0] - a[0]) for a, b in zip(rows["fp32"], rows["bf16"], strict=True)]
    lines += ["", f"bf16 − fp32 per seed: {', '.join(f'{d:+.2f}' for d in diffs)} points."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
