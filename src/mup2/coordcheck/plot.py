"""Log-log plots of coordinate checks: one row per quantity, one column per result (e.g. naive /
global / μP² side by side), one line per layer. Uses matplotlib's Agg backend (no display)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from mup2.coordcheck.measure import QUANTITIES, CoordCheck

__all__ = ["plot_coord_checks"]


def plot_coord_checks(
    results: Sequence[CoordCheck],
    path: str | Path,
    step: int = -1,
    quantities: Sequence[str] = QUANTITIES,
    axis: Literal["width", "depth"] = "width",
    titles: Sequence[str] | None = None,
) -> Path:
    """Write a PNG (or any format matplotlib infers from ``path``) and return its path.

    Each panel plots RMS against width (or ``axis``: ``"depth"`` for
    :func:`~mup2.coordcheck.depth.coord_check_depth`'s results) on log2 axes; the legend gives
    each layer's fitted slope. Zero values (a tensor the rule does not perturb) are left out of
    the log axes. One column per result, titled by ``titles`` (default: scheme, rule,
    scaling)."""
    if axis not in ("width", "depth"):
        raise ValueError(f"axis must be 'width' or 'depth', got {axis!r}")
    if titles is not None and len(titles) != len(results):
        raise ValueError(f"{len(titles)} titles for {len(results)} results")
    if not results:
        raise ValueError("nothing to plot: results is empty")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nrows, ncols = len(quantities), len(results)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False, sharex=True
    )
    for j, r in enumerate(results):
        for i, q in enumerate(quantities):
            ax = axes[i][j]
            drawn = False
            for lay in r.layers:
                vals = r.values[(step % r.steps, lay.name, q)]
                pts = [
                    (w, v)
                    for w, v in zip(r.widths, vals, strict=True)
                    if v > 0 and math.isfinite(v)
                ]
                if not pts:
                    continue
                slope = r.slope(lay.name, q, step)
                # A layer's width group says nothing at a fixed width: across depth, name alone.
                name = lay.name if axis == "depth" else f"{lay.name} ({lay.group})"
                label = f"{name} {slope:+.2f}" if math.isfinite(slope) else name
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=label)
                drawn = True
            ax.set_xscale("log", base=2)
            if drawn:
                ax.set_yscale("log", base=2)
                ax.legend(fontsize=6, loc="best")
            else:
                ax.text(0.5, 0.5, "not perturbed", ha="center", va="center", transform=ax.transAxes)
            if i == 0:
                title = titles[j] if titles is not None else f"{r.scheme} · {r.rule} · {r.scaling}"
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{q.replace('_', ' ')} RMS", fontsize=8)
            if i == nrows - 1:
                ax.set_xlabel(axis, fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
