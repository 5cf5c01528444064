"""``mup2 report``: Figure 1 of the paper and the transfer verdicts, from a sweep's storage alone.

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
from mup2.report.figures import plot_figure1, plot_rho_slice, plot_transfer, slug
from mup2.report.load import (
    GRID_KEYS,
    ReportError,
    Run,
    StudyNotFoundError,
    Sweep,
    load_sweep,
)
from mup2.report.summary import (
    OPTIMA_COLUMNS,
    TRIAL_COLUMNS,
    write_optima_csv,
    write_summary,
    write_trials_csv,
)

__all__ = [
    "GRID_KEYS",
    "OPTIMA_COLUMNS",
    "TRIAL_COLUMNS",
    "Analysis",
    "Cell",
    "Grid",
    "Optimum",
    "ReportError",
    "ReportFiles",
    "Run",
    "StudyNotFoundError",
    "Sweep",
    "Transfer",
    "analyze",
    "difference",
    "load_sweep",
    "make_report",
    "plot_figure1",
    "plot_rho_slice",
    "plot_transfer",
    "t95",
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

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file written: figures, then tables, then the summary."""
        return (
            self.figure1,
            *self.figure1_each,
            self.rho_slice,
            self.transfer,
            self.trials_csv,
            self.optima_csv,
            self.summary,
        )


def make_report(
    storage: str, study: str, out_dir: Path, unstable_below: float = 0.30
) -> ReportFiles:
    """Read ``study`` from ``storage`` and write the figures, ``summary.md``, ``trials.csv`` and
    ``optima.csv`` into ``out_dir``.

    Raises :class:`StudyNotFoundError` for an unknown study and :class:`ReportError` when the
    storage cannot be opened or holds no grid trial.
    """
    sweep = load_sweep(storage, study)
    if not sweep.parametrizations:
        raise ReportError(
            f"study {study!r} has no trial with the grid parameters {', '.join(GRID_KEYS)}"
        )
    a = analyze(sweep, unstable_below=unstable_below)
    out = Path(out_dir)
    fig1 = plot_figure1(a, out / "figure1.png")
    each = tuple(
        plot_figure1(a, out / f"figure1-{slug(p)}.png", [p]) for p in sweep.parametrizations
    )
    rho = plot_rho_slice(a, out / "rho-slice.png")
    tr = plot_transfer(a, out / "transfer.png")
    trials = write_trials_csv(sweep, out / "trials.csv")
    optima = write_optima_csv(a, out / "optima.csv")
    summary = write_summary(a, out / "summary.md", [fig1, *each, rho, tr], [trials, optima])
    return ReportFiles(fig1, each, rho, tr, summary, trials, optima, a)
