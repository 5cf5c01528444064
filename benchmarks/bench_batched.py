"""Batched training against one run at a time: trials per hour, and model FLOP utilisation.

    .venv/bin/python benchmarks/bench_batched.py [--widths 32,64,128,256,512] [--bundle 16]
        [--device cpu|cuda] [--precision fp32|bf16] [--epochs 1] [--train-size 2048]
        [--serial 2] [--rounds 3] [--json F]

The Figure 1 MLP (``784-w-w-10``, ReLU), μP-SGD with momentum and μ²P SAM (``rho = 2^-4``),
batch 128, cosine schedule, on synthetic 28x28 images with 10 classes (the timing does not
depend on the pixels) and a 2000-image test set evaluated after every epoch. Per width, one
round times ``--serial`` separate :func:`mup2.train` runs and one :func:`mup2.batched.
train_batched` bundle of ``--bundle`` configurations (``auto``: :func:`mup2.batched.
auto_bundle_size`), each from model construction to its last evaluation; rounds alternate
which goes first. Reported: trials per hour each way (medians over rounds), their ratio (the
median of per-round ratios), and for the batched run the model FLOP rate over its training and
evaluation (from the built models to the last evaluation): ``6 * B * P`` FLOPs
per pass (``P``: weights of the three Linear layers; two passes per SAM step) plus ``2 * P`` per
evaluated image, against the H200's dense bf16 peak (790 TFLOP/s measured here, 989 nominal).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from typing import Any

import torch

from mup2.batched import BatchedRun, auto_bundle_size
from mup2.config import TrainConfig, parse_config
from mup2.train import train

PEAK_MEASURED, PEAK_NOMINAL = 790e12, 989e12


def _config(width: int, i: int, args: argparse.Namespace) -> TrainConfig:
    lrs = [2.0**-k for k in range(3, 9)]
    return parse_config(
        {
            "model": {"name": "mlp", "width": width, "base_width": 64},
            "data": {
                "name": "synthetic",
                "train_size": args.train_size,
                "test_size": 2000,
                "shape": [1, 28, 28],
                "label_noise": 0.4,
            },
            "optimizer": {"name": "sgd", "lr": lrs[i % len(lrs)], "momentum": 0.9},
            "sam": {"rho": 0.0625, "scaling": "mup2"},
            "schedule": {"name": "cosine"},
            "scheme": "mup-sgd",
            "epochs": args.epochs,
            "batch_size": 128,
            "eval_batch_size": 2000,
            "precision": args.precision,
            "seed": i,
            "device": args.device,
            "progress": False,
        }
    )


def _flops(cfg: TrainConfig, steps_per_epoch: int) -> float:
    w = cfg.model.width
    weights = 784 * w + w * w + w * 10
    per_epoch = steps_per_epoch * 2 * 6 * cfg.batch_size * weights + 2 * 2000 * weights
    return float(cfg.epochs * per_epoch)


def _timed(fn: Any, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _batched(configs: list[TrainConfig], device: torch.device, training: list[float]) -> None:
    """One bundle end to end (:func:`mup2.batched.train_batched`'s steps); appends the time of
    its training and evaluation alone (after the models are built) to ``training``."""
    cuda = [torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        run = BatchedRun(configs)
        training.append(_timed(lambda: run.run(None), device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="32,64,128,256,512")
    ap.add_argument("--bundle", default="16", help="K, or 'auto'")
    ap.add_argument("--max-bundle", type=int, default=256, help="the most K 'auto' picks")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-size", type=int, default=2048)
    ap.add_argument("--serial", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(
        f"{datetime.date.today()}  torch {torch.__version__}  device {args.device} ({gpu})  "
        f"precision {args.precision}  epochs {args.epochs}  train {args.train_size}"
    )
    train(_config(32, 0, args).model_copy(update={"epochs": 1}))  # warm-up: kernels, caches
    rows: dict[str, dict[str, float]] = {}
    print(
        "| width | K | serial trials/h | batched trials/h | ratio | batched TFLOP/s | MFU | "
        "peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for width in (int(w) for w in args.widths.split(",")):
        probe = _config(width, 0, args)
        k = (
            auto_bundle_size(probe, most=args.max_bundle)
            if args.bundle == "auto"
            else int(args.bundle)
        )
        configs = [_config(width, i, args) for i in range(k)]
        steps = args.train_size // 128
        serial: list[float] = []
        batched: list[float] = []
        ratios: list[float] = []
        training: list[float] = []
        for r in range(args.rounds):
            runs = [
                ("serial", lambda cs=configs[: args.serial]: [train(c) for c in cs]),
                ("batched", lambda cs=configs, out=training: _batched(cs, device, out)),
            ]
            if r % 2:
                runs.reverse()
            times = {name: _timed(fn, device) for name, fn in runs}
            serial.append(3600 * args.serial / times["serial"])
            batched.append(3600 * k / times["batched"])
            ratios.append(batched[-1] / serial[-1])
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        b = statistics.median(batched)
        rate = k * _flops(probe, steps) / statistics.median(training)
        rows[str(width)] = {
            "bundle": k,
            "serial_trials_per_hour": statistics.median(serial),
            "batched_trials_per_hour": b,
            "ratio": statistics.median(ratios),
            "batched_flops_per_s": rate,
            "mfu_measured_peak": rate / PEAK_MEASURED,
            "mfu_nominal_peak": rate / PEAK_NOMINAL,
            "peak_gib": peak,
        }
        row = rows[str(width)]
        print(
            f"| {width} | {k} | {row['serial_trials_per_hour']:.0f} | {b:.0f} | "
            f"{row['ratio']:.2f} | {rate / 1e12:.2f} | {row['mfu_measured_peak']:.1%} | "
            f"{peak:.1f} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": gpu, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
