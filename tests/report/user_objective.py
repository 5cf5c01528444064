"""A user's objective for the report's end-to-end test (``mup2.sweep.run`` imports it by its
file path): a validation loss over (η, ρ) with μP²'s optimum fixed across width and sp-naive's
η* moving two grid steps per doubling; sp-naive diverges (NaN) at the widest width's largest η."""

from __future__ import annotations

import math

from mup2.sweep import Point, Reporter


def transfer(point: Point, report: Reporter) -> dict[str, float]:
    """``val_loss`` (minimized): 2 − 0.1·log2(width/32) + 0.1·x² + 0.02·r² (ρ > 0) or + 0.05
    (ρ = 0), with x = log2(η/η*) and r = log2(ρ/0.05); η* = 0.1 for mup2 and 0.1·(32/width)² for
    sp-naive; + 0.001·seed. Three reports on the way (``step`` 0, 1, 2)."""
    lr_star = 0.1 if point.parametrization == "mup2" else 0.1 * (32 / point.width) ** 2
    if point.parametrization == "sp-naive" and point.width == 64 and point.lr == 0.2:
        return {"val_loss": math.nan}
    x = math.log2(point.lr / lr_star)
    sam = 0.02 * math.log2(point.rho / 0.05) ** 2 if point.rho > 0 else 0.05
    loss = 2.0 - 0.1 * math.log2(point.width / 32) + 0.1 * x * x + sam + 0.001 * point.seed
    for step in range(3):
        report(loss + 0.5 * (2 - step), step)
        report.log(step=step, train_loss=loss - 0.1)
    return {"val_loss": loss, "val_perplexity": math.exp(loss)}
