"""``mup2 report``: Figure 1 of the paper and the transfer verdicts, from a sweep's storage alone,
for whatever metric and direction the sweep declared (:class:`Metric`).

Example::

    files = make_report("sqlite:///runs/sweep.db", "mlp-fmnist", Path("report"))
    files.summary  # report/summary.md

``docs/report.md`` describes the figures and the transfer criterion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mup2.report.analysis import (
    Analysis,
    Cell,
    Grid,
    Optimum,
    Transfer,
    analyze,
    difference,
    t95,
)
from mup2.report.figures import (
    cmap_name,
    plot_curves,
    plot_figure1,
    plot_rho_slice,
    plot_transfer,
    slug,
)
from mup2.report.load import (
    BUILTIN_METRICS,
    GRID_KEYS,
    ReportError,
    Run,
    StudyNotFoundError,
    Sweep,
    load_sweep,
)
from mup2.report.metric import TEST_ACCURACY, Metric, sweep_metric
from mup2.report.summary import (
    OPTIMA_COLUMNS,
    TRIAL_COLUMNS,
    optima_columns,
    trial_columns,
    write_optima_csv,
    write_summary,
    write_trials_csv,
)

__all__ = [
    "BUILTIN_METRICS",
    "GRID_KEYS",
    "OPTIMA_COLUMNS",
    "TEST_ACCURACY",
    "TRIAL_COLUMNS",
    "Analysis",
    "Cell",
    "Grid",
    "Metric",
    "Optimum",
    "ReportError",
    "ReportFiles",
    "Run",
    "StudyNotFoundError",
    "Sweep",
    "Transfer",
    "analyze",
    "cmap_name",
    "difference",
    "load_sweep",
    "make_report",
    "optima_columns",
    "plot_curves",
    "plot_figure1",
    "plot_rho_slice",
    "plot_transfer",
    "sweep_metric",
    "t95",
    "trial_columns",
    "write_optima_csv",
    "write_summary",
    "write_trials_csv",
]


@dataclass(frozen=True)
class ReportFiles:
    """The files :func:`make_report` wrote, and the analysis they show."""

    figure1: Path
    """All parametrizations (rows) × widths (columns)."""
    figure1_each: tuple[Path, ...]
    """One Figure 1 per parametrization, in the sweep's order."""
    rho_slice: Path
    transfer: Path
    summary: Path
    trials_csv: Path
    optima_csv: Path
    analysis: Analysis
    curves: Path | None = None
    """The learning curves at the optima (:func:`plot_curves`), when drawn."""

    @property
    def figures(self) -> tuple[Path, ...]:
        """The figures, in the summary's order."""
        each = (self.figure1, *self.figure1_each, self.rho_slice, self.transfer)
        return each if self.curves is None else (*each, self.curves)

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file written: figures, then tables, then the summary."""
        return (
            *self.figures,
            self.trials_csv,
            self.optima_csv,
            self.summary,
        )


def make_report(
    storage: str,
    study: str,
    out_dir: Path,
    unstable_below: float | None = None,
    *,
    unstable_above: float | None = None,
    curves: bool | None = None,
) -> ReportFiles:
    """Read ``study`` from ``storage`` and write the figures, ``summary.md``, ``trials.csv`` and
    ``optima.csv`` into ``out_dir``, for the sweep's metric and direction (:class:`Metric`).

    ``unstable_below`` (a maximized metric) or ``unstable_above`` (a minimized one): see
    :func:`analyze` (default: 0.30 for the built-in test accuracy, none for other metrics).
    ``curves``: also draw ``curves.png`` (:func:`plot_curves`); by default for a sweep around a
    user's function only.

    Raises :class:`StudyNotFoundError` for an unknown study and :class:`ReportError` when the
    storage cannot be opened, holds no grid trial, or the threshold is on the metric's good side.
    """
    sweep = load_sweep(storage, study)
    if not sweep.parametrizations:
        raise ReportError(
            f"study {study!r} has no trial with the grid parameters {', '.join(GRID_KEYS)}"
        )
    a = analyze(sweep, unstable_below=unstable_below, unstable_above=unstable_above)
    out = Path(out_dir)
    fig1 = plot_figure1(a, out / "figure1.png")
    each = tuple(
        plot_figure1(a, out / f"figure1-{slug(p)}.png", [p]) for p in sweep.parametrizations
    )
    rho = plot_rho_slice(a, out / "rho-slice.png")
    tr = plot_transfer(a, out / "transfer.png")
    draw = sweep.objective is not None if curves is None else curves
    cu = plot_curves(a, out / "curves.png") if draw else None
    trials = write_trials_csv(sweep, out / "trials.csv")
    optima = write_optima_csv(a, out / "optima.csv")
    figures = [fig1, *each, rho, tr] + ([cu] if cu is not None else [])
    summary = write_summary(a, out / "summary.md", figures, [trials, optima])
    return ReportFiles(fig1, each, rho, tr, summary, trials, optima, a, cu)
