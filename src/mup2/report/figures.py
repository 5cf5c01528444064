"""The report's figures (matplotlib, Agg backend): Figure 1's heatmaps, the slice over ρ at the
optimal η, the optima against width and the learning curves at the optima, for the sweep's
metric: a minimized one (a loss) gets a reversed colour scale, so that the best cells are the
brightest either way."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mup2.report.analysis import Analysis, Cell, Grid, Optimum
from mup2.report.metric import Metric

__all__ = [
    "COLORS",
    "cmap_name",
    "plot_curves",
    "plot_figure1",
    "plot_rho_slice",
    "plot_transfer",
    "slug",
]

COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999")
"""Okabe–Ito colours, one per parametrization in the sweep's order."""

_UNSTABLE: dict[str, Any] = {
    "facecolor": "#cfcfcf",
    "hatch": "////",
    "edgecolor": "#8a8a8a",
    "linewidth": 0,
}
_MISSING = "#f2f2f2"
_SPAN = 0.30
_SPAN_RELATIVE = 0.5  # a metric other than an accuracy: at most 50% of the best's magnitude
_RC: Any = {  # matplotlib types rc keys as a Literal
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "hatch.linewidth": 0.6,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.04,
}


def slug(name: str) -> str:
    """``name`` made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "unnamed"


@contextmanager
def _pyplot() -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(_RC):
        yield plt


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _log2_label(x: float) -> str:
    k = math.log2(x)
    return f"{round(k)}" if abs(k - round(k)) < 1e-6 else f"{k:.1f}"


def _pow2(x: float) -> str:
    k = math.log2(x)
    return f"$2^{{{round(k)}}}$" if abs(k - round(k)) < 1e-6 else f"{x:.3g}"


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0)


def _format_axis(axis: Any, m: Metric) -> None:
    """Percent ticks for an accuracy; matplotlib's own otherwise."""
    if m.percent:
        axis.set_major_formatter(_percent())


def _title(m: Metric) -> str:
    return m.label[:1].upper() + m.label[1:]


def cmap_name(m: Metric) -> str:
    """Figure 1's colour map: viridis (bright is high) for a maximized metric, reversed for a
    minimized one, so that bright is best either way."""
    return "viridis" if m.maximize else "viridis_r"


def _color(a: Analysis, p: str) -> str:
    return COLORS[a.sweep.parametrizations.index(p) % len(COLORS)]


def _norm(a: Analysis) -> Any:
    """One colour scale for every panel: the stable cells' range, at most ``_SPAN`` wide (an
    accuracy) or ``_SPAN_RELATIVE`` of the best's magnitude (another metric) from the best;
    worse cells take the worst colour, and their numbers still show."""
    from matplotlib.colors import Normalize

    m = a.metric
    means = [
        c.mean
        for g in a.grids.values()
        for c in g.cells.values()
        if not c.missing and not c.unstable
    ]
    if m.percent:
        lo, hi = (min(means), max(means)) if means else (a.unstable_below or 0.0, 1.0)
        lo = max(lo, hi - _SPAN)
        if hi - lo < 1e-3:
            lo, hi = lo - 0.005, hi + 0.005
        return Normalize(vmin=lo, vmax=hi)
    lo, hi = (min(means), max(means)) if means else (0.0, 1.0)
    span = _SPAN_RELATIVE * abs(hi if m.maximize else lo)
    if span > 0:
        lo, hi = (max(lo, hi - span), hi) if m.maximize else (lo, min(hi, lo + span))
    if hi - lo <= 1e-9 * max(1.0, abs(hi)):
        pad = 0.005 * max(1.0, abs(hi))
        lo, hi = lo - pad, hi + pad
    return Normalize(vmin=lo, vmax=hi)


def _clipped(a: Analysis, ps: Sequence[str], norm: Any) -> bool:
    """Whether a stable cell lies past the colour scale's worse end."""
    m = a.metric
    return any(
        (c.mean < norm.vmin if m.maximize else c.mean > norm.vmax)
        for p in ps
        for c in a.grids[p].cells.values()
        if not c.missing and not c.unstable
    )


def _outline(region: set[tuple[int, int]]) -> list[list[tuple[float, float]]]:
    """The edges between cells in ``region`` (as (x, y) indices) and cells outside it."""
    segs = []
    for i, j in region:
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            if (i + di, j + dj) in region:
                continue
            if di:
                x = i + di / 2
                segs.append([(x, j - 0.5), (x, j + 0.5)])
            else:
                y = j + dj / 2
                segs.append([(i - 0.5, y), (i + 0.5, y)])
    return segs


def _cell_value(
    ax: Any, m: Metric, i: int, j: int, value: float, is_best: bool, **style: Any
) -> None:
    """A cell's value (an accuracy in percent), lifted above the optimum's star."""
    y = j - 0.2 if is_best else j
    text = f"{100 * value:.1f}" if m.percent else f"{value:.3g}"
    ax.text(i, y, text, ha="center", va="center", fontsize=5.5, **style)


def _heatmap(ax: Any, a: Analysis, g: Grid, width: int, norm: Any, cmap: Any) -> None:
    import numpy as np
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    nx, ny = len(g.lrs), len(g.rhos)
    z = np.full((ny, nx), np.nan)
    cells: dict[tuple[int, int], Cell] = {}
    for i, lr in enumerate(g.lrs):
        for j, rho in enumerate(g.rhos):
            c = g.cell(width, lr, rho)
            if c is None:
                continue
            cells[i, j] = c
            if not c.missing and not c.unstable:
                z[j, i] = c.mean
    ax.set_facecolor("white")  # cells this width never planned
    ext = (-0.5, nx - 0.5, -0.5, ny - 0.5)
    ax.imshow(
        z, origin="lower", cmap=cmap, norm=norm, extent=ext, aspect="auto", interpolation="nearest"
    )
    annotate = nx <= 8 and ny <= 8
    m = a.metric
    o = a.optimum(g.parametrization, width)
    best = (g.lrs.index(o.lr), g.rhos.index(o.rho)) if o is not None else None
    for (i, j), c in cells.items():
        if c.missing:
            ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, facecolor=_MISSING, linewidth=0))
        elif c.unstable:
            ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, **_UNSTABLE))
            shown = c.mean > 0 if m.percent else math.isfinite(c.mean)
            if annotate and shown:  # diverged everywhere (0), or any seed (±inf): blank
                bbox = {"facecolor": "#cfcfcf", "edgecolor": "none", "pad": 0.6}
                _cell_value(ax, m, i, j, c.mean, (i, j) == best, color="#444444", bbox=bbox)
        elif annotate:
            r, gr, b, _ = cmap(norm(c.mean))
            dark = 0.299 * r + 0.587 * gr + 0.114 * b < 0.5
            _cell_value(
                ax,
                m,
                i,
                j,
                c.mean,
                (i, j) == best,
                color="white" if dark else "black",
                fontweight="bold" if (i, j) == best else "normal",
            )
    if g.rhos[0] == 0 and ny > 1:
        ax.axhline(0.5, color="white", lw=2.5)
    if o is not None and best is not None:
        idx = {(g.lrs.index(c.lr), g.rhos.index(c.rho)) for c in o.region}
        ax.add_collection(LineCollection(_outline(idx), colors="black", linewidths=1.4))
        y = best[1] + 0.2 if annotate else best[1]
        ax.plot(
            best[0],
            y,
            marker="*",
            ms=9 if annotate else 11,
            mfc="white",
            mec="black",
            mew=0.8,
            ls="none",
        )
    step = max(1, math.ceil(nx / 8))
    ax.set_xticks(range(0, nx, step), [_log2_label(v) for v in g.lrs[::step]])
    ystep = max(1, math.ceil(ny / 8))
    ax.set_yticks(
        range(0, ny, ystep),
        ["0 (base)" if v == 0 else _log2_label(v) for v in g.rhos[::ystep]],
    )
    ax.set_xlim(ext[:2])
    ax.set_ylim(ext[2:])
    ax.tick_params(length=2, pad=1.5)


def _legend_handles(a: Analysis, ps: Sequence[str]) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    m = a.metric
    cells = [c for p in ps for c in a.grids[p].cells.values()]
    handles = [
        Line2D(
            [], [], marker="*", ms=10, mfc="white", mec="black", ls="none", label="optimum (η*, ρ*)"
        ),
        Patch(
            facecolor="none",
            edgecolor="black",
            linewidth=1.4,
            label=f"within {m.fmt_tolerance(a.within)} of the optimum",
        ),
    ]
    if any(c.unstable for c in cells):
        handles.append(Patch(**_UNSTABLE, label=f"unstable ({_past(a)}diverged)"))
    if any(c.missing for c in cells):
        handles.append(
            Patch(facecolor=_MISSING, edgecolor="#bbbbbb", linewidth=0.5, label="not finished")
        )
    return handles


def _past(a: Analysis) -> str:
    """``< 30% or `` / ``> 2.5 or ``: the unstable threshold for a legend, empty without one."""
    m, t = a.metric, a.threshold
    if t is None:
        return ""
    value = f"{100 * t:g}%" if m.percent else f"{t:.4g}"
    return f"{'<' if m.maximize else '>'} {value} or "


def plot_figure1(a: Analysis, path: Path, parametrizations: Sequence[str] | None = None) -> Path:
    """Heatmaps of the metric's mean over (log2 η, log2 ρ): one row per parametrization, one
    column per width, one colour scale for all panels (reversed for a minimized metric: the
    best cells are bright either way)."""
    ps = list(parametrizations or a.sweep.parametrizations)
    widths = sorted({w for p in ps for w in a.grids[p].widths})
    if not ps or not widths:
        raise ValueError("nothing to plot: no grid trials")
    with _pyplot() as plt:
        m = a.metric
        cmap = plt.get_cmap(cmap_name(m)).copy()
        norm = _norm(a)
        nr, nc = len(ps), len(widths)
        fig, axes = plt.subplots(
            nr,
            nc,
            figsize=(0.6 + 2.05 * nc, 0.9 + 1.85 * nr),
            squeeze=False,
            layout="constrained",
        )
        for r, p in enumerate(ps):
            g = a.grids[p]
            for c, w in enumerate(widths):
                ax = axes[r][c]
                if w not in g.widths:
                    ax.axis("off")
                    ax.text(
                        0.5,
                        0.5,
                        f"{p}\n{a.sweep.axis} {w}: not run",
                        ha="center",
                        va="center",
                        transform=ax.transAxes,
                        color="#777777",
                    )
                    continue
                _heatmap(ax, a, g, w, norm, cmap)
                ax.set_title(f"{a.sweep.axis} {w}", pad=3)
                if c == 0 or widths[c - 1] not in g.widths:
                    ax.set_ylabel(f"{p}\nlog$_2$ ρ" if nr > 1 else "log$_2$ ρ")
                if r == nr - 1 or any(w not in a.grids[q].widths for q in ps[r + 1 :]):
                    ax.set_xlabel("log$_2$ η")
        from matplotlib.cm import ScalarMappable

        clipped = _clipped(a, ps, norm)
        cb = fig.colorbar(
            ScalarMappable(norm=norm, cmap=cmap),
            extend=("min" if m.maximize else "max") if clipped else "neither",
            ax=axes,
            shrink=0.9 if nr == 1 else 0.75,
            aspect=25,
            pad=0.015,
        )
        cb.set_label(f"{m.label}, mean over seeds")
        _format_axis(cb.ax.yaxis, m)
        cb.ax.tick_params(labelsize=7)
        handles = _legend_handles(a, ps)
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
        title = a.sweep.name or a.sweep.study
        which = f"{ps[0]}, " if nr == 1 else ""
        fig.suptitle(f"{_title(m)} over (η, ρ): {which}{title}", fontsize=10)
        return _save(fig, path)


def _slice_point(o: Optimum, g: Grid) -> list[Cell]:
    cells = (g.cell(o.width, o.lr, r) for r in g.sam_rhos)
    return [c for c in cells if c is not None and not c.missing]


def _two_sd(c: Cell) -> float:
    """Twice the standard deviation over seeds (0 with one seed)."""
    return 2 * c.std if c.n >= 2 else 0.0


def plot_rho_slice(a: Analysis, path: Path) -> Path:
    """The metric against ρ at each parametrization's optimal η at its largest width: mean and
    ± 2 standard deviations over seeds (the paper's band), the base optimizer (ρ = 0, same η)
    dashed in the same colour. Points past the axis (unstable) show as triangles on its edge."""
    from matplotlib.lines import Line2D

    m, t = a.metric, a.threshold
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(5.6, 3.4), layout="constrained")
        ax.spines[["top", "right"]].set_visible(False)
        series = []
        for p in a.sweep.parametrizations:
            g = a.grids[p]
            found = [o for w in g.widths if (o := a.optimum(p, w)) is not None]
            if found and (cells := _slice_point(found[-1], g)):
                series.append((p, found[-1], cells))
        kinds = {"mean ± 2 sd" for _, _, cs in series for c in cs if c.n >= 2}
        stable = [
            v
            for _, o, cs in series
            for c in cs
            if math.isfinite(c.mean) and not m.worse(c.mean, t)
            for v in (c.mean - _two_sd(c), c.mean + _two_sd(c))
            if math.isfinite(v)
        ] + [o.base.mean for _, o, _ in series if o.base is not None and math.isfinite(o.base.mean)]
        lo, hi = (min(stable), max(stable)) if stable else (0.0, 1.0)
        if m.percent:
            pad = 0.08 * (hi - lo) + 0.004 + max(0.0, 0.02 - (hi - lo)) / 2
            lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
        else:
            pad = 0.08 * (hi - lo) or 0.05 * abs(hi) or 0.5
            lo, hi = lo - pad, hi + pad
        widths = {o.width for _, o, _ in series}
        for p, o, cs in series:
            col = _color(a, p)
            x = [c.rho for c in cs]
            y = [c.mean for c in cs]
            s = [_two_sd(c) for c in cs]
            where = f", {a.sweep.axis} {o.width}" if len(widths) > 1 else ""
            label = f"{p} (η* = {_pow2(o.lr)}{where})"
            ax.plot(x, y, marker="o", ms=3.5, lw=1.5, color=col, label=label)
            ax.fill_between(
                x,
                [m - e for m, e in zip(y, s, strict=True)],
                [m + e for m, e in zip(y, s, strict=True)],
                color=col,
                alpha=0.18,
                lw=0,
            )
            low = [(xi, lo) for xi, yi in zip(x, y, strict=True) if yi < lo]
            if low:
                ax.plot(
                    *zip(*low, strict=True), marker="v", ms=5, color=col, ls="none", clip_on=False
                )
            high = [(xi, hi) for xi, yi in zip(x, y, strict=True) if yi > hi]
            if high:
                ax.plot(
                    *zip(*high, strict=True), marker="^", ms=5, color=col, ls="none", clip_on=False
                )
            if o.base is not None:
                ax.axhline(o.base.mean, color=col, ls="--", lw=1.1, alpha=0.9)
        ax.set_xscale("log", base=2)
        rhos = sorted({c.rho for _, _, cs in series for c in cs})
        if rhos:
            step = max(1, math.ceil(len(rhos) / 9))
            ax.set_xticks(rhos[::step], [_pow2(r) for r in rhos[::step]])
            ax.minorticks_off()
        ax.set_ylim(lo, hi)
        if t is not None and m.maximize and lo < t:
            ax.axhspan(lo, t, color="#dddddd", alpha=0.6, lw=0, zorder=0)
        if t is not None and not m.maximize and hi > t:
            ax.axhspan(t, hi, color="#dddddd", alpha=0.6, lw=0, zorder=0)
        ax.set_xlabel("perturbation radius ρ (log$_2$ scale)")
        ax.set_ylabel(m.label)
        _format_axis(ax.yaxis, m)
        ax.grid(alpha=0.25, lw=0.5)
        handles, _ = ax.get_legend_handles_labels()
        if any(o.base is not None for _, o, _ in series):
            handles.append(
                Line2D(
                    [], [], color="#555555", ls="--", lw=1.1, label="base optimizer (ρ = 0), same η"
                )
            )
        else:
            ax.text(
                0.99,
                0.02,
                "no ρ = 0 runs: no base-optimizer lines",
                ha="right",
                va="bottom",
                transform=ax.transAxes,
                fontsize=7,
                color="#666666",
            )
        band = " / ".join(sorted(kinds)) if kinds else "none (one seed)"
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            title=f"band over seeds: {band}",
            title_fontsize=7,
        )
        top = sorted(widths)[-1] if len(widths) == 1 else "largest"
        ax.set_title(f"Slice at the optimal η, {a.sweep.axis} {top}")
        if not series:
            ax.text(
                0.5, 0.5, "no finished SAM runs", ha="center", va="center", transform=ax.transAxes
            )
        return _save(fig, path)


def plot_transfer(a: Analysis, path: Path) -> Path:
    """Optimal η, optimal ρ and the metric at the optimum against width, one line per
    parametrization (slightly offset sideways so that equal optima stay visible)."""
    m = a.metric
    with _pyplot() as plt:
        fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.0), layout="constrained")
        ps = a.sweep.parametrizations
        widths = a.widths
        for k, p in enumerate(ps):
            found = [o for w in a.grids[p].widths if (o := a.optimum(p, w)) is not None]
            if not found:
                continue
            col = _color(a, p)
            shift = 2 ** (0.045 * (k - (len(ps) - 1) / 2))
            x = [o.width * shift for o in found]
            t = a.transfers[p]
            label = f"{p} (transfer {t.verdict})"
            kw = {"color": col, "marker": "o", "ms": 4, "lw": 1.5}
            axes[0].plot(x, [o.lr for o in found], label=label, **kw)
            sam = [(xi, o.rho) for xi, o in zip(x, found, strict=True) if o.rho > 0]
            if sam:
                axes[1].plot(*zip(*sam, strict=True), **kw)
            axes[2].errorbar(
                x, [o.value for o in found], yerr=[o.cell.spread for o in found], capsize=2, **kw
            )
        lrs = sorted({v for g in a.grids.values() for v in g.lrs})
        rhos = sorted({v for g in a.grids.values() for v in g.sam_rhos})
        for ax, vals, name in ((axes[0], lrs, "optimal η*"), (axes[1], rhos, "optimal ρ*")):
            ax.set_yscale("log", base=2)
            if vals:
                step = max(1, math.ceil(len(vals) / 9))
                ax.set_yticks(vals[::step], [_pow2(v) for v in vals[::step]])
                ax.set_ylim(vals[0] / 2**0.5, vals[-1] * 2**0.5)
            ax.minorticks_off()
            ax.set_ylabel(name)
        axes[2].set_ylabel(f"{m.label} at the optimum")
        _format_axis(axes[2].yaxis, m)
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xticks(widths, [str(w) for w in widths])
            ax.minorticks_off()
            if widths:
                ax.set_xlim(widths[0] / 2**0.4, widths[-1] * 2**0.4)
            ax.set_xlabel(a.sweep.axis)
            ax.grid(alpha=0.25, lw=0.5)
            ax.spines[["top", "right"]].set_visible(False)
        kinds = {o.cell.spread_kind for o in a.optima.values() if o.cell.n >= 2}
        bars = " / ".join(sorted(kinds)) if kinds else "none (one seed)"
        axes[2].text(
            0.03,
            0.97,
            f"bars over seeds: {bars}",
            ha="left",
            va="top",
            transform=axes[2].transAxes,
            fontsize=6.5,
            color="#666666",
        )
        fig.legend(loc="outside lower center", ncol=min(len(ps), 5))
        fig.suptitle(f"Optima against width: {a.sweep.name or a.sweep.study}", fontsize=10)
        return _save(fig, path)


def _mean_curve(cell_runs: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The mean over seeds at the steps every seed reported (a single seed's curve as it is)."""
    common = set.intersection(*(set(x for x, _ in c) for c in cell_runs)) if cell_runs else set()
    by_step = [dict(c) for c in cell_runs]
    return [(x, sum(d[x] for d in by_step) / len(by_step)) for x in sorted(common)]


def plot_curves(a: Analysis, path: Path) -> Path:
    """The metric against step (or epoch) at the optimum of each width, the mean over the
    optimum's seeds at the steps all of them reported: one panel per parametrization, one line
    per width (darker is wider). From each trial's reports (:attr:`Run.curve
    <mup2.report.load.Run.curve>`); a width whose optimum has no reports is left out."""
    m = a.metric
    ps = a.sweep.parametrizations
    runs = [r for r in a.sweep.done if r.curve]
    with _pyplot() as plt:
        cmap = plt.get_cmap("viridis")
        fig, axes = plt.subplots(
            1, len(ps), figsize=(0.4 + 3.2 * len(ps), 3.0), squeeze=False, layout="constrained"
        )
        widths = a.widths
        drawn = False
        for ax, p in zip(axes[0], ps, strict=True):
            for w in a.grids[p].widths:
                o = a.optimum(p, w)
                if o is None:
                    continue
                cell = [
                    r.curve
                    for r in runs
                    if (r.parametrization, r.width, r.lr, r.rho) == (p, w, o.lr, o.rho)
                ]
                curve = _mean_curve(cell)
                if not curve:
                    continue
                k = widths.index(w) / max(1, len(widths) - 1)
                ax.plot(
                    *zip(*curve, strict=True),
                    color=cmap(0.85 - 0.75 * k),
                    lw=1.4,
                    label=f"{a.sweep.axis} {w} (η* = {_pow2(o.lr)}, "
                    f"ρ* = {_pow2(o.rho) if o.rho else 0})",
                )
                drawn = True
            ax.set_title(p)
            ax.set_xlabel(a.sweep.curve_axis)
            ax.set_ylabel(m.label)
            _format_axis(ax.yaxis, m)
            ax.grid(alpha=0.25, lw=0.5)
            ax.spines[["top", "right"]].set_visible(False)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best")
        if not drawn:
            axes[0][0].text(
                0.5,
                0.5,
                "no reported curves",
                ha="center",
                va="center",
                transform=axes[0][0].transAxes,
            )
        title = a.sweep.name or a.sweep.study
        fig.suptitle(f"{_title(m)} at each width's optimum: {title}", fontsize=10)
        return _save(fig, path)
