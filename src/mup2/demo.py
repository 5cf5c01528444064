"""``mup2 demo``: the coordinate check of a small MLP, then a small Fashion-MNIST sweep and its
report (the paper's Figure 1 in miniature, in the full study's regime), then what that study
found."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path

import torch

from mup2.config import FashionMNISTData, TrainConfig
from mup2.coordcheck import coord_check, format_slopes, plot_coord_checks
from mup2.data import resolve_fashion_mnist_dir
from mup2.models import MLP
from mup2.report import ReportFiles, make_report
from mup2.sweep import SweepConfig, load_sweep_config, run_sweep

__all__ = ["STUDY", "demo_config", "run_demo"]

#: What the full study behind the demo found (``docs/results.md`` §7, ``experiments/figure1/``).
STUDY = """\
The full study (experiments/figure1/, docs/results.md section 7): the same regime at widths
32 -> 512, 1847 runs, 3 seeds per cell and 8 on the rho slice at width 512.
  muP^2:      eta* = 2^-5 at every width, rho* moves one step (2^-4 -> 2^-3): transfers;
              SAM - SGD grows from +0.86 +- 0.41 (width 32) to +1.24 +- 0.11 points (512).
  muP-global: eta* moves 2 steps and rho* 3 (up to 2^-1): does not transfer.
  muP-naive:  rho* moves 2 steps, eta* 1: does not transfer; the smallest gain at 512 (+1.10).
  SP-naive:   transfers at this scale too (16x around base 64), the paper's SP drift not yet
              reached; its base optimizer's eta* has begun to move (2^-6 -> 2^-7 at 512)."""


def demo_config() -> SweepConfig:
    """The demo sweep (``src/mup2/demo.toml``)."""
    with resources.as_file(resources.files("mup2") / "demo.toml") as path:
        return load_sweep_config(path)


def run_demo(
    out: Path, workers: int | None = None, say: Callable[[str], object] = print
) -> ReportFiles:
    """Run the demo into ``out``: ``coordcheck.png``/``.txt``, the sweep store and ``report/``.

    Resumable: running it again continues the sweep where it stopped. Fashion-MNIST must be
    installed (the error says how); it is checked before anything runs.
    """
    log = say
    cfg = demo_config()
    assert isinstance(cfg.train, TrainConfig)  # the demo trains with mup2's own loop
    data = cfg.train.data
    resolve_fashion_mnist_dir(data.root if isinstance(data, FashionMNISTData) else None)
    out.mkdir(parents=True, exist_ok=True)

    log("1/3 coordinate check: 3-layer MLP, μP with SGD, widths 64..1024 (naive, global, μP²)")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 64, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    checks = [
        coord_check(
            partial(MLP, depth=3, in_features=64),
            [64, 128, 256, 512, 1024],
            x,
            y,
            scaling=scaling,
            steps=2,
            seeds=(0, 1),
        )
        for scaling in ("naive", "global", "mup2")
    ]
    table = format_slopes(checks)
    (out / "coordcheck.txt").write_text(table + "\n")
    plot_coord_checks(checks, out / "coordcheck.png")
    log(table)

    log(f"2/3 sweep: {cfg.name}, Fashion-MNIST MLP, widths {cfg.grid.widths}")
    storage, state = run_sweep(cfg, out, workers=workers, say=lambda line: log(f"    {line}"))
    log(
        f"    {state.complete}/{state.total} runs finished, {state.unstable} unstable, "
        f"{state.failed} failed; store {storage}"
    )
    log("3/3 report")
    files = make_report(storage, cfg.name, out / "report", cfg.unstable_below)
    log(f"figures and summary in {files.summary.parent}:")
    for path in files.paths:
        log(f"    {path}")
    log(STUDY)
    return files
