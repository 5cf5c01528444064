"""The report's tables: ``summary.md`` (optima, base optimizer, unstable runs, transfer verdicts)
and the CSVs of all trials and of the optima, with columns named after the sweep's metric."""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mup2.report.analysis import Analysis, Optimum, Transfer, difference
from mup2.report.load import Sweep
from mup2.report.metric import TEST_ACCURACY, Metric
from mup2.sweep.grid import GRID_KEYS
from mup2.tables import format_table

__all__ = [
    "OPTIMA_COLUMNS",
    "TRIAL_COLUMNS",
    "optima_columns",
    "trial_columns",
    "write_optima_csv",
    "write_summary",
    "write_trials_csv",
]

TRIAL_COLUMNS = (
    "number",
    "state",
    *GRID_KEYS,
    "status",
    "test_accuracy",
    "test_loss",
    "seconds",
)
"""The columns of a built-in sweep's ``trials.csv`` (:func:`trial_columns`)."""
OPTIMA_COLUMNS = (
    "parametrization",
    "width",
    "lr",
    "rho",
    "accuracy",
    "spread",
    "spread_kind",
    "seeds",
    "base_accuracy",
    "best_base_lr",
    "best_base_accuracy",
    "gain",
    "gain_ci",
    "edges",
    "unstable_runs",
    "finished_runs",
    "unfinished_cells",
)
"""The columns of a built-in sweep's ``optima.csv`` (:func:`optima_columns`)."""


def trial_columns(sweep: Sweep) -> tuple[str, ...]:
    """``trials.csv``'s columns: number, state, the grid point, status, the final metrics
    (:attr:`Sweep.final_metrics <mup2.report.load.Sweep.final_metrics>`, the objective first),
    seconds."""
    return ("number", "state", *GRID_KEYS, "status", *sweep.final_metrics, "seconds")


def optima_columns(metric: Metric) -> tuple[str, ...]:
    """``optima.csv``'s columns: :data:`OPTIMA_COLUMNS` with ``accuracy`` named after the metric
    (``val_loss``, ``base_val_loss``, ``best_base_val_loss``) unless it is the built-in test
    accuracy."""
    col = metric.column
    return tuple(c.replace("accuracy", col) for c in OPTIMA_COLUMNS)


def _cell(x: object) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def _write(path: Path, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows([[_cell(x) for x in row] for row in rows])
    return path


def write_trials_csv(sweep: Sweep, path: Path) -> Path:
    """One row per trial of the study, whatever its state (:func:`trial_columns`)."""
    columns = trial_columns(sweep)
    names = set(sweep.final_metrics)
    rows = [[r.final.get(c) if c in names else getattr(r, c) for c in columns] for r in sweep.runs]
    return _write(path, columns, rows)


def write_optima_csv(a: Analysis, path: Path) -> Path:
    """One row per parametrization and width with an optimum (:func:`optima_columns`)."""
    rows: list[list[object]] = []
    for p in a.sweep.parametrizations:
        for w in a.grids[p].widths:
            o = a.optimum(p, w)
            if o is None:
                continue
            bad, done = a.unstable_runs(p, w)
            c = o.cell
            base = o.base.mean if o.base is not None else None
            bb = o.best_base
            gain, ci = _gain(o)
            rows.append(
                [
                    p,
                    w,
                    o.lr,
                    o.rho,
                    c.mean,
                    c.spread,
                    c.spread_kind,
                    c.n,
                    base,
                    bb.lr if bb is not None else None,
                    bb.mean if bb is not None else None,
                    gain,
                    ci,
                    ";".join(o.edges),
                    bad,
                    done,
                    a.grids[p].missing(w),
                ]
            )
    return _write(path, optima_columns(a.metric), rows)


def _gain(o: Optimum) -> tuple[float | None, float | None]:
    """SAM's optimum minus the base optimizer's (each at its own best η), with the 95% Welch
    half-width; ``None`` when the optimum is not a SAM cell or no base run finished."""
    if o.best_base is None or o.rho == 0:
        return None, None
    return difference(o.cell, o.best_base)


def _pow2(x: float) -> str:
    if x == 0:
        return "0"
    k = math.log2(x)
    return f"2^{round(k)}" if abs(k - round(k)) < 1e-6 else f"{x:.4g}"


def _seeds(n: int) -> str:
    return "1 planned seed is" if n == 1 else f"{n} planned seeds are"


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def _verdict(t: Transfer) -> str:
    v = {"holds": "**holds**", "fails": "**fails**", "n/a": "n/a"}[t.verdict]
    return f"{v} (provisional)" if t.provisional and t.verdict != "n/a" else v


def _counts(sweep: Sweep) -> str:
    states = Counter(r.state for r in sweep.runs if r.grid)
    other = sum(not r.grid for r in sweep.runs)
    pending = states["RUNNING"] + states["WAITING"]
    parts = [
        f"{len(sweep.runs)} trials",
        f"{len(sweep.done)} finished grid runs",
        f"{states['FAIL']} failed",
        f"{pending} pending (running or waiting)",
    ]
    if states["PRUNED"]:
        parts.append(f"{states['PRUNED']} pruned")
    if other:
        parts.append(f"{other} without the grid parameters (ignored)")
    return ", ".join(parts)


def write_summary(a: Analysis, path: Path, figures: Sequence[Path], tables: Sequence[Path]) -> Path:
    """Write ``summary.md``: counts, the transfer table, per-parametrization optima, the list of
    figures and tables (file names relative to ``path``'s directory)."""
    s = a.sweep
    lines = [
        f"# Sweep report: {s.name or s.study}",
        "",
        f"Study `{s.study}` in `{s.storage}`: {_counts(s)}.",
        "",
        *_objective(a),
        _definitions(a),
        "",
        "## Transfer",
        "",
        _transfer_table(a),
        "",
        _criterion(a),
        "",
        f"## Optima per parametrization and {s.axis}",
    ]
    for p in s.parametrizations:
        g = a.grids[p]
        lines += [
            "",
            f"### {p}",
            "",
            _optima_table(a, p),
        ]
        bad, done = a.unstable_runs(p)
        lines += ["", f"Unstable runs: {bad} of {done} finished."]
        if g.base_from:
            scheme = s.schemes.get(p)
            lines.append(
                f"ρ = 0 runs shared with {', '.join(g.base_from)} (same scheme, {scheme}): "
                "counted here too."
            )
        if not g.has_base:
            lines.append("No ρ = 0 runs: no base-optimizer comparison and no dashed line.")
        if g.missing():
            lines.append(
                f"Unfinished: {g.missing()} of {len(g.cells)} cells have no finished run yet "
                f"(grey in the heatmaps); {_seeds(g.pending_seeds())} not finished."
            )
        if len(g.widths) == 1:
            lines.append(f"A single {s.axis}: no transfer verdict.")
    lines += ["", "## Figures", ""]
    lines += [f"- [`{f.name}`]({f.name}): {_describe(f.name, a)}" for f in figures]
    lines += ["", "## Tables", ""]
    lines += [f"- [`{f.name}`]({f.name}): {_describe(f.name, a)}" for f in tables]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


_OPTIMUM = (
    "The optimum (η*, ρ*) of a {axis} is the stable cell with the best mean over ρ > 0 (over "
    "ρ = 0 if no SAM run finished; over unstable cells if no stable one); *base* is the base "
    "optimizer (ρ = 0) at the same η, *best base* the base optimizer at its own best η, and "
    "*SAM − best base* SAM's gain with the 95% Welch interval of the difference. *Edge*: the "
    "optimum lies on the grid's boundary, so the true optimum may lie outside it."
)
_SPREAD = "± is the 95% t-interval of the mean with 3 or more seeds, one standard deviation with 2."


def _objective(a: Analysis) -> list[str]:
    """A user sweep's objective, version and metric, as a paragraph (none for a built-in one)."""
    s, m = a.sweep, a.metric
    if s.objective is None:
        return []
    version = f" (version `{s.version}`)" if s.version is not None else ""
    return [f"Objective `{s.objective}`{version}: {m.direction}s `{m.name}`.", ""]


def _definitions(a: Analysis) -> str:
    """The paragraph that says what the numbers are."""
    m = a.metric
    optimum = _OPTIMUM.format(axis=a.sweep.axis)
    if m == TEST_ACCURACY:
        below = f"{100 * a.unstable_below:g}%" if a.unstable_below is not None else "no"
        return (
            f"Accuracy is the final test accuracy in percent, the mean over seeds; {_SPREAD} A run "
            f"is *unstable* when it diverged or ends below {below} test accuracy; a cell (η, ρ) "
            f"is unstable when its mean is below that or half of its seeds are. {optimum}"
        )
    unit = " in percent" if m.percent else ""
    past = "below" if m.maximize else "above"
    t = a.threshold
    limit = f" or ends {past} {m.fmt(t)}{'%' if m.percent else ''}" if t is not None else ""
    best = "highest" if m.maximize else "lowest"
    gain = " (negative: SAM is better)" if not m.maximize else ""
    return (
        f"`{m.name}` is the sweep's objective metric{unit} ({m.better_word}), the final value "
        f"the function returned, the mean over seeds; {_SPREAD} A run is *unstable* when it "
        f"diverged (it counts as {m.diverged:g}){limit}; a cell (η, ρ) is unstable when its mean "
        f"is {'not finite' if t is None else past + ' that or not finite'} or half of its seeds "
        f"are unstable. The best mean is the {best}. {optimum} SAM − best base is in the "
        f"metric's units{gain}."
    )


def _criterion(a: Analysis) -> str:
    """The paragraph that states the transfer criterion."""
    m, w = a.metric, a.sweep.axis
    head = (
        f"Criterion (`docs/math.md` §7): transfer holds when, across all {w}s with a finished "
        f"optimum, η* and ρ* each stay within {_steps(a.max_steps)} of the log2-spaced grid "
        "(largest minus smallest grid index) and "
    )
    tail = (
        "*Provisional*: some planned cells that could hold the optimum have not finished yet "
        f"(unfinished ρ = 0 cells cannot, once SAM's optima are in). n/a: fewer than two {w}s, or "
        f"a {w} without a stable cell."
    )
    if m.percent:
        what = "accuracy" if m == TEST_ACCURACY else m.name
        return (
            f"{head}the {what} at the optimum of the largest {w} is at least that of the "
            f"smallest {w} minus {m.fmt_tolerance(a.tolerance)}. {tail}"
        )
    bound = "at least" if m.maximize else "at most"
    sign = "minus" if m.maximize else "plus"
    return (
        f"{head}`{m.name}` at the optimum of the largest {w} is {bound} that of the smallest "
        f"{w} {sign} {m.fmt_tolerance(a.tolerance)} of its magnitude (a relative tolerance: "
        f"the metric's scale is the sweep's own). {tail}"
    )


def _transfer_table(a: Analysis) -> str:
    """The transfer verdict of every parametrization, as markdown."""
    header = (
        "parametrization",
        f"{a.sweep.axis}s",
        "η* moves",
        "ρ* moves",
        f"{a.metric.column}, largest − smallest {a.sweep.axis}",
        f"smallest's (η*, ρ*) at the largest {a.sweep.axis}, − its optimum",
        "transfer",
        "why",
    )
    rows: list[list[str]] = []
    m = a.metric
    for p in a.sweep.parametrizations:
        t = a.transfers[p]
        ws = ", ".join(map(str, t.widths)) or "–"
        multi = len(t.widths) > 1 and t.verdict != "n/a"
        first = a.optima[p, t.widths[0]].value if multi else math.nan
        change = m.fmt_change(t.change, first) if multi else "–"
        last = a.optima[p, t.widths[-1]].value if multi else math.nan
        cost = m.fmt_change(t.transferred - last, last) if not math.isnan(t.transferred) else "–"
        lr_s, rho_s = (_steps(t.lr_steps), _steps(t.rho_steps)) if multi else ("–", "–")
        rows.append([p, ws, lr_s, rho_s, change, cost, _verdict(t), t.reason])
    return format_table(rows, header, markdown=True)


def _optima_table(a: Analysis, p: str) -> str:
    """The optimum of every width of parametrization ``p``, as markdown."""
    header = (
        a.sweep.axis,
        "η*",
        "ρ*",
        a.metric.column,
        "edge",
        "base (ρ = 0, same η)",
        "best base (η)",
        "SAM − best base",
        "unstable runs",
        "unfinished cells",
    )
    g = a.grids[p]
    m = a.metric
    rows: list[list[str]] = []
    for w in g.widths:
        o = a.optimum(p, w)
        bad, done = a.unstable_runs(p, w)
        runs, todo = f"{bad}/{done}", str(g.missing(w))
        if o is None:
            rows.append([str(w), "–", "–", "no finished run", "–", "–", "–", "–", runs, todo])
            continue
        c = o.cell
        acc = f"{m.fmt(c.mean)} ± {m.fmt(c.spread)} ({c.n} seeds, {c.spread_kind})"
        if c.n == 1:
            acc = f"{m.fmt(c.mean)} (one seed)"
        base = f"{m.fmt(o.base.mean)}" if o.base is not None else "–"
        bb = o.best_base
        best = f"{m.fmt(bb.mean)} ({_pow2(bb.lr)})" if bb is not None else "–"
        g_, ci = _gain(o)
        finite = g_ is not None and math.isfinite(g_)
        gain = m.fmt(g_, signed=True) if g_ is not None and finite else "–"
        if finite and ci is not None and math.isfinite(ci):
            gain += f" ± {m.fmt(ci)}"
        edge = ", ".join(o.edges) or "–"
        rows.append([str(w), _pow2(o.lr), _pow2(o.rho), acc, edge, base, best, gain, runs, todo])
    return format_table(rows, header, markdown=True)


def _describe(name: str, a: Analysis) -> str:
    m, w = a.metric, a.sweep.axis
    if name == "figure1.png":
        return (
            f"Figure 1: {m.label} over (log2 η, log2 ρ), rows parametrizations, columns "
            f"{w}s; star the optimum, outline the cells within {m.fmt_tolerance(a.within)} "
            "of it, hatched unstable, grey unfinished, ρ = 0 (base optimizer) the bottom row"
        )
    if name.startswith("figure1-"):
        return f"Figure 1 for {name.removeprefix('figure1-').removesuffix('.png')} alone"
    return {
        "rho-slice.png": f"{m.column} against ρ at each parametrization's optimal η, largest "
        f"{w}, mean ± 2 sd over seeds; dashed: the base optimizer at the same η",
        "transfer.png": f"η*, ρ* and the {m.column} at the optimum against {w}",
        "curves.png": f"{m.name} against {a.sweep.curve_axis} at each {w}'s optimum, mean "
        "over its seeds, one panel per parametrization",
        "trials.csv": "every trial of the study, whatever its state",
        "optima.csv": f"the optimum of every parametrization and {w}"
        + ("" if w == "width" else " (its column `width`)"),
    }.get(name, "")
