"""User objectives for the tests of user sweeps (imported by the workers by entry point, as
``objectives:NAME`` or ``tests/sweep/objectives.py:NAME``). Each is CPU-fast and deterministic."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from mup2.sweep import Diverged, Point, Reporter

NOT_A_FUNCTION = 3


def bowl(point: Point, report: Reporter) -> dict[str, float]:
    """A loss bowl in (log2 lr, rho) whose floor sits at lr = 0.1, rho = 0.05 at every width:
    three reported steps, then the loss and an accuracy-like score."""
    x = math.log2(point.lr / 0.1)
    loss = x * x + 100 * (point.rho - 0.05) ** 2 + 1 / point.width + 0.001 * point.seed
    for step in range(3):
        report(loss * (3 - step), step)
        report.log(step=step, grad_norm=1.0 / (step + 1))
    return {"loss": loss, "accuracy": 1 / (1 + loss), "width": float(point.width)}


def value(point: Point, report: Reporter) -> float:
    """One number: the sweep's metric under its default name."""
    return point.lr * point.width + point.rho


def diverging(point: Point, report: Reporter) -> float:
    """Diverges at lr >= 1 in the three ways: lr = 1 returns nan, lr = 2 reports inf, lr = 4
    raises Diverged; otherwise 1 / lr."""
    if point.lr == 1.0:
        return math.nan
    if point.lr == 2.0:
        report(0.5, 0)
        report(math.inf, 1)
        raise AssertionError("report(inf) must stop the run")
    if point.lr == 4.0:
        raise Diverged("the loss blew up at step 7")
    return 1 / point.lr


def slow(point: Point, report: Reporter) -> float:
    """Sleeps ``settings['seconds']`` (default 1) in steps of 0.05 s, reporting each; for kills,
    interruptions and several workers."""
    seconds = float(point.settings.get("seconds", 1.0))
    steps = max(1, round(seconds / 0.05))
    for step in range(steps):
        time.sleep(0.05)
        report(point.lr * step, step)
    return point.lr + point.rho


def broken(point: Point, report: Reporter) -> float:
    """Fails (not a divergence): the trial fails with this message."""
    raise RuntimeError("broken on purpose")


def one_argument(point: Point) -> float:
    """A wrong signature: a sweep calls objective(point, report)."""
    return 0.0


def mlp(point: Point, report: Reporter) -> dict[str, float]:
    """A small μP² MLP on a synthetic task, trained with the point's helpers: parametrize (μP
    init), SAM at (lr, rho) with the point's scaling; returns the final train loss."""
    steps = int(point.settings.get("steps", 5))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=gen), torch.randint(0, 3, (64,), generator=gen)

    def net(width: int) -> nn.Module:
        return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 3))

    model = net(point.width)
    with torch.device("meta"):
        base = net(16)
    p = point.parametrize(model, base)
    opt = point.sam(model, p, momentum=0.9)
    loss = torch.tensor(0.0)
    for step in range(steps):

        def closure() -> torch.Tensor:
            opt.zero_grad()
            out = nn.functional.cross_entropy(model(x), y)
            out.backward()
            return out

        loss = opt.step(closure)
        report(float(loss), step)
    return {"loss": float(loss)}


def settings_echo(point: Point, report: Reporter) -> dict[str, Any]:
    """Returns a setting and the point's scheme facts as numbers (for the settings test)."""
    return {
        "value": float(point.settings["k"]),
        "sp": float(point.scheme == "sp"),
        "adam": float(point.scheme == "mup-adam"),
    }
