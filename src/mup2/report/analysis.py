"""From finished runs to Figure 1's numbers: per-cell statistics over seeds, the optimum
``(η*, ρ*)`` per parametrization and width, the region near it, and the transfer verdict
(``docs/math.md`` §7), for the sweep's metric and direction (:class:`~mup2.report.metric.Metric`:
the best cell is the highest or the lowest; tolerances are absolute for an accuracy, relative
otherwise)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mup2.report.load import ReportError, Run, Sweep
from mup2.report.metric import Metric

__all__ = [
    "Analysis",
    "Cell",
    "Grid",
    "Optimum",
    "Transfer",
    "analyze",
    "difference",
    "t95",
]

_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t95(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom (``df >= 1``)."""
    if df < 1:
        raise ValueError(f"t95 needs df >= 1, got {df}")
    return _T95[df - 1] if df <= len(_T95) else 1.96 + 2.5 / df  # within 0.002 beyond 30


@dataclass(frozen=True)
class Cell:
    """One grid point ``(width, η, ρ)`` of a parametrization: its finished seeds' values of the
    sweep's metric."""

    width: int
    lr: float
    rho: float
    values: tuple[float, ...]
    """The finished seeds' final values of the metric, by seed (a diverged run counts as
    :attr:`Metric.diverged <mup2.report.metric.Metric.diverged>`: 0 for an accuracy, else the
    worst value, ``∓inf``)."""
    unstable_runs: int
    planned: int
    """Distinct seeds of this cell's grid trials in any state (the seeds asked for)."""
    unstable: bool
    """Mean past the threshold (or not finite), or at least half of the seeds unstable."""

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def missing(self) -> bool:
        """No finished seed yet."""
        return not self.values

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (``nan`` with fewer than two)."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.values) / (self.n - 1))

    @property
    def spread(self) -> float:
        """Half-width of the band drawn and reported: the 95% t-interval of the mean with three
        or more seeds, one standard deviation with two, 0 with one."""
        if self.n >= 3:
            return t95(self.n - 1) * self.std / math.sqrt(self.n)
        return self.std if self.n == 2 else 0.0

    @property
    def spread_kind(self) -> str:
        return "95% CI" if self.n >= 3 else "±1 sd" if self.n == 2 else "one seed"


def difference(a: Cell, b: Cell) -> tuple[float, float]:
    """``mean(a) - mean(b)`` and the half-width of its 95% Welch t-interval (``nan`` unless both
    cells have two or more seeds)."""
    diff = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return diff, math.nan
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    if va + vb == 0.0:
        return diff, 0.0
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))  # Welch-Satterthwaite
    return diff, t95(max(1, math.floor(df))) * math.sqrt(va + vb)


@dataclass(frozen=True)
class Grid:
    """All cells of one parametrization; axes are the values any of its trials asked for."""

    parametrization: str
    widths: tuple[int, ...]
    lrs: tuple[float, ...]
    rhos: tuple[float, ...]
    """Ascending; ``0.0`` (the base optimizer) first when the grid has it."""
    cells: Mapping[tuple[int, float, float], Cell] = field(repr=False)
    base_from: tuple[str, ...] = ()
    """The parametrizations of the same scheme whose ρ = 0 runs this one shares (it has none of
    its own); empty when it has its own or none are found."""

    def cell(self, width: int, lr: float, rho: float) -> Cell | None:
        return self.cells.get((width, lr, rho))

    @property
    def sam_rhos(self) -> tuple[float, ...]:
        return tuple(r for r in self.rhos if r > 0)

    @property
    def has_base(self) -> bool:
        """Whether any ρ = 0 run has finished."""
        return any(c.rho == 0 and not c.missing for c in self.cells.values())

    def missing(self, width: int | None = None) -> int:
        """Planned cells (of ``width``, or of all widths) with no finished seed."""
        return sum(c.missing for c in self.cells.values() if width in (None, c.width))

    def pending_seeds(self) -> int:
        """Planned seeds not finished, over all cells."""
        return sum(c.planned - c.n for c in self.cells.values() if c.planned > c.n)


@dataclass(frozen=True)
class Optimum:
    """The best cell of one width: over ρ > 0 (SAM) when any finished, else over ρ = 0; over the
    stable cells among those when there are any."""

    parametrization: str
    cell: Cell
    base: Cell | None
    """The base optimizer (ρ = 0) at the same η, when it finished and the optimum is a SAM cell."""
    region: tuple[Cell, ...]
    """Finished cells of this width (any ρ, the ρ = 0 row included) within ``within`` of the
    optimum's mean (:meth:`Metric.near <mup2.report.metric.Metric.near>`)."""
    best_base: Cell | None = None
    """The best stable ρ = 0 cell of this width (the base optimizer at its own best η)."""
    edges: tuple[str, ...] = ()
    """Where the optimum sits on the grid's boundary: ``"lowest η"``, ``"highest η"``,
    ``"lowest ρ > 0"``, ``"highest ρ"``; an optimum there may lie outside the grid."""

    @property
    def width(self) -> int:
        return self.cell.width

    @property
    def lr(self) -> float:
        return self.cell.lr

    @property
    def rho(self) -> float:
        return self.cell.rho

    @property
    def value(self) -> float:
        """The optimum's mean value of the metric."""
        return self.cell.mean


Verdict = Literal["holds", "fails", "n/a"]


@dataclass(frozen=True)
class Transfer:
    """Whether ``(η*, ρ*)`` transfers across the widths of one parametrization (§7 of
    ``docs/math.md``).

    Holds when, over all widths with an optimum, ``η*`` and ``ρ*`` each stay within ``max_steps``
    grid steps (largest minus smallest grid index) and the optimum's value at the largest width
    is no worse than that at the smallest by more than ``tolerance`` (absolute for an accuracy:
    points; otherwise relative to the smallest width's value: ``0.01`` is 1%). ``n/a`` with fewer
    than two widths, or when some width has no stable cell.
    """

    parametrization: str
    verdict: Verdict
    widths: tuple[int, ...]
    lr_steps: int
    rho_steps: int
    change: float
    """The metric at the optimum, largest width minus smallest (``nan`` with one width)."""
    reason: str
    provisional: bool
    """Some planned cells that could be an optimum have not finished (any cell, or only those
    with ρ > 0 once every width's optimum is over ρ > 0): the verdict may change."""
    transferred: float = math.nan
    """The metric at the largest width of the smallest width's optimum ``(η*, ρ*)``, the mean
    of its finished seeds: what tuning at the smallest width gives at the largest (``nan``
    when that cell has not finished, or with one width). Beside the largest width's own
    optimum it says what the moves of ``η*`` and ``ρ*`` cost, which matters on a flat ridge
    where the optimum moves but the metric hardly does."""


@dataclass(frozen=True)
class Analysis:
    """Everything the report shows, for the options it was computed with (:func:`analyze`)."""

    sweep: Sweep
    unstable_below: float | None
    """Runs of a maximized metric below this count as unstable (``None``: no threshold)."""
    within: float
    max_steps: int
    tolerance: float
    grids: Mapping[str, Grid]
    optima: Mapping[tuple[str, int], Optimum]
    transfers: Mapping[str, Transfer]
    unstable_above: float | None = None
    """Runs of a minimized metric above this count as unstable (``None``: no threshold)."""

    @property
    def metric(self) -> Metric:
        """The sweep's objective metric and direction."""
        return self.sweep.metric

    @property
    def threshold(self) -> float | None:
        """The unstable threshold on the metric's bad side (below or above)."""
        return self.unstable_below if self.metric.maximize else self.unstable_above

    def optimum(self, parametrization: str, width: int) -> Optimum | None:
        return self.optima.get((parametrization, width))

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted({w for g in self.grids.values() for w in g.widths}))

    def unstable_runs(self, parametrization: str, width: int | None = None) -> tuple[int, int]:
        """(unstable, finished) run counts of a parametrization (and width)."""
        g = self.grids[parametrization]
        cs = [c for c in g.cells.values() if width in (None, c.width)]
        return sum(c.unstable_runs for c in cs), sum(c.n for c in cs)


def _runs(sweep: Sweep, p: str) -> tuple[list[Run], tuple[str, ...]]:
    """The grid runs of ``p``; without ρ = 0 runs of its own, those of the parametrizations of
    the same scheme (the sweep runs the base optimizer once per scheme) at the widths where
    ``p`` has runs (a parametrization run on one width only, e.g. on the ρ slice, is not
    given optima at the others)."""
    own = [r for r in sweep.runs if r.grid and r.parametrization == p]
    scheme = sweep.schemes.get(p)
    if scheme is None or any(r.rho == 0 for r in own):
        return own, ()
    peers = [q for q, sch in sweep.schemes.items() if sch == scheme and q != p]
    widths = {r.width for r in own}
    shared = [
        r
        for r in sweep.runs
        if r.grid and r.rho == 0 and r.parametrization in peers and r.width in widths
    ]
    found = tuple(q for q in peers if any(r.parametrization == q for r in shared))
    return own + shared, found


def _unstable(r: Run, m: Metric, threshold: float | None) -> bool:
    """Diverged, no finite value, or past ``threshold``."""
    v = m.score(r.value)
    return r.status == "unstable" or not math.isfinite(v) or m.worse(v, threshold)


def _grid(
    p: str, runs: list[Run], m: Metric, threshold: float | None, base_from: tuple[str, ...] = ()
) -> Grid:
    seeds: dict[tuple[int, float, float], set[int]] = {}
    done: dict[tuple[int, float, float], dict[int, Run]] = {}
    for r in sorted(runs, key=lambda r: r.number):
        assert r.width is not None and r.lr is not None and r.rho is not None
        assert r.seed is not None
        key = (r.width, r.lr, r.rho)
        seeds.setdefault(key, set()).add(r.seed)
        if r.done:  # a seed finished twice (a rerun) counts once: the latest
            done.setdefault(key, {})[r.seed] = r
    cells: dict[tuple[int, float, float], Cell] = {}
    for key, planned in seeds.items():
        finished = [r for _, r in sorted(done.get(key, {}).items())]
        vals = tuple(m.score(r.value) for r in finished)
        bad = sum(_unstable(r, m, threshold) for r in finished)
        mean = sum(vals) / len(vals) if vals else math.nan
        past = not math.isfinite(mean) or m.worse(mean, threshold)
        unstable = bool(vals) and (past or 2 * bad >= len(vals))
        cells[key] = Cell(*key, vals, bad, len(planned), unstable)
    return Grid(
        parametrization=p,
        widths=tuple(sorted({k[0] for k in cells})),
        lrs=tuple(sorted({k[1] for k in cells})),
        rhos=tuple(sorted({k[2] for k in cells})),
        cells=cells,
        base_from=base_from,
    )


def _optimum(g: Grid, width: int, within: float, m: Metric) -> Optimum | None:
    done = [c for c in g.cells.values() if c.width == width and not c.missing]
    pool = [c for c in done if c.rho > 0] or done
    pool = [c for c in pool if not c.unstable] or pool  # all unstable: the best of them
    if not pool:
        return None
    best = _best(sorted(pool, key=lambda c: (c.lr, c.rho)), m)
    base = g.cell(width, best.lr, 0.0) if best.rho > 0 else None
    region = tuple(c for c in done if m.near(c.mean, best.mean, within))
    bases = [c for c in done if c.rho == 0]
    bases = [c for c in bases if not c.unstable] or bases
    best_base = _best(sorted(bases, key=lambda c: c.lr), m) if bases else None
    return Optimum(
        g.parametrization,
        best,
        None if base is None or base.missing else base,
        region,
        best_base,
        _edges(g, best),
    )


def _best(cells: list[Cell], m: Metric) -> Cell:
    """The best mean (the first on ties)."""
    return max(cells, key=lambda c: c.mean) if m.maximize else min(cells, key=lambda c: c.mean)


def _edges(g: Grid, c: Cell) -> tuple[str, ...]:
    lrs = sorted({k[1] for k in g.cells if k[0] == c.width})
    rhos = sorted({k[2] for k in g.cells if k[0] == c.width and k[2] > 0})
    out = []
    if len(lrs) > 1 and c.lr == lrs[0]:
        out.append("lowest η")
    if len(lrs) > 1 and c.lr == lrs[-1]:
        out.append("highest η")
    if c.rho > 0 and len(rhos) > 1 and c.rho == rhos[0]:
        out.append("lowest ρ > 0")
    if c.rho > 0 and len(rhos) > 1 and c.rho == rhos[-1]:
        out.append("highest ρ")
    return tuple(out)


def _transfer(
    g: Grid, optima: list[Optimum], max_steps: int, tolerance: float, m: Metric, axis: str
) -> Transfer:
    ws = tuple(o.width for o in optima)
    # An unfinished cell makes the verdict provisional only if it could be an optimum: once
    # every width's optimum is over ρ > 0, a missing ρ = 0 cell (the base optimizer) cannot.
    sam = bool(optima) and all(o.rho > 0 for o in optima)
    provisional = any(c.missing and (c.rho > 0 or not sam) for c in g.cells.values())
    if len(optima) < 2:
        why = f"one {axis}" if optima else "no finished runs"
        return Transfer(g.parametrization, "n/a", ws, 0, 0, math.nan, why, provisional)
    bad = [o.width for o in optima if o.cell.unstable]
    if bad:
        why = f"no stable cell at {axis} {', '.join(map(str, bad))}"
        return Transfer(g.parametrization, "n/a", ws, 0, 0, math.nan, why, provisional)
    li = [g.lrs.index(o.lr) for o in optima]
    rhos = g.sam_rhos if all(o.rho > 0 for o in optima) else g.rhos
    ri = [rhos.index(o.rho) if o.rho in rhos else 0 for o in optima]
    lr_steps, rho_steps = max(li) - min(li), max(ri) - min(ri)
    first = optima[0].value
    change = optima[-1].value - first
    fails = []
    if lr_steps > max_steps:
        fails.append(f"η* moves {lr_steps} grid steps")
    if rho_steps > max_steps:
        fails.append(f"ρ* moves {rho_steps} grid steps")
    if m.percent and change < -tolerance:
        fails.append(f"accuracy at the optimum drops {-100 * change:.2f} points")
    elif not m.percent and not m.near(optima[-1].value, first, tolerance):
        rel = abs(change / first) if first else math.inf
        fails.append(
            f"{m.name} at the optimum worsens by {abs(change):.4g} ({100 * rel:.2f}%), more "
            f"than {m.fmt_tolerance(tolerance)}"
        )
    if fails:
        reason = "; ".join(fails)
    elif m.percent:
        reason = (
            f"η* moves {lr_steps}, ρ* {rho_steps} grid step(s); accuracy {100 * change:+.2f} points"
        )
    else:
        reason = (
            f"η* moves {lr_steps}, ρ* {rho_steps} grid step(s); "
            f"{m.name} {m.fmt_change(change, first)}"
        )
    verdict: Verdict = "fails" if fails else "holds"
    there = g.cell(optima[-1].width, optima[0].lr, optima[0].rho)
    transferred = there.mean if there is not None else math.nan
    return Transfer(
        g.parametrization, verdict, ws, lr_steps, rho_steps, change, reason, provisional,
        transferred,
    )  # fmt: skip


def _check_threshold(m: Metric, below: float | None, above: float | None) -> None:
    """A threshold on the metric's bad side, and for an accuracy a fraction."""
    right, given = ("below", below) if m.maximize else ("above", above)
    wrong = "above" if m.maximize else "below"
    if (above if m.maximize else below) is not None:
        raise ReportError(
            f"the sweep {m.direction}s {m.name}: a run is unstable {right} a threshold, not "
            f"{wrong} it; give --unstable-{right} (unstable_{right}=), not --unstable-{wrong}"
        )
    if m.percent and given is not None and not 0.0 <= given <= 1.0:
        raise ReportError(
            f"unstable_{right} {given:g} is not in [0, 1]: {m.name} is a fraction "
            "(0.3 is 30%); give --unstable-" + right + " between 0 and 1"
        )


def analyze(
    sweep: Sweep,
    unstable_below: float | None = None,
    within: float | None = None,
    max_steps: int = 1,
    tolerance: float | None = None,
    *,
    unstable_above: float | None = None,
) -> Analysis:
    """Cells, optima and transfer verdicts of every parametrization of ``sweep``, for its metric
    (:attr:`Sweep.metric <mup2.report.load.Sweep.metric>`) and direction.

    ``unstable_below`` (a maximized metric) or ``unstable_above`` (a minimized one): runs past
    it, or diverged, are unstable; by default 0.30 for the built-in test accuracy, no threshold
    for other metrics (only diverged runs). ``within``: the outlined region's distance to the
    optimum; ``max_steps`` and ``tolerance``: the transfer criterion (:class:`Transfer`).
    ``within`` and ``tolerance`` are absolute for an accuracy (default 0.01 and 0.005: 1 and
    0.5 points) and relative to the optimum's value otherwise (default 0.01 and 0.01: 1%).

    Raises :class:`~mup2.report.load.ReportError` for a threshold on the metric's good side
    (``unstable_below`` for a minimized metric, ``unstable_above`` for a maximized one), or
    outside [0, 1] for an accuracy.
    """
    m = sweep.metric
    _check_threshold(m, unstable_below, unstable_above)
    if m.maximize and unstable_below is None:
        unstable_below = m.unstable_default
    if not m.maximize and unstable_above is None:
        unstable_above = m.unstable_default
    threshold = unstable_below if m.maximize else unstable_above
    if within is None:
        within = 0.01
    if tolerance is None:
        tolerance = 0.005 if m.percent else 0.01
    grids: dict[str, Grid] = {}
    for p in sweep.parametrizations:
        runs, shared = _runs(sweep, p)
        grids[p] = _grid(p, runs, m, threshold, shared)
    optima: dict[tuple[str, int], Optimum] = {}
    transfers: dict[str, Transfer] = {}
    for p, g in grids.items():
        found = [o for w in g.widths if (o := _optimum(g, w, within, m)) is not None]
        optima.update({(p, o.width): o for o in found})
        transfers[p] = _transfer(g, found, max_steps, tolerance, m, sweep.axis)
    return Analysis(
        sweep,
        unstable_below,
        within,
        max_steps,
        tolerance,
        grids,
        optima,
        transfers,
        unstable_above,
    )
