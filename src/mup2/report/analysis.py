"""From finished runs to Figure 1's numbers: per-cell statistics over seeds, the optimum
``(η*, ρ*)`` per parametrization and width, the region within 1% of it, and the transfer verdict
(``docs/math.md`` §7)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mup2.report.load import Run, Sweep

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
    """One grid point ``(width, η, ρ)`` of a parametrization: its finished seeds' accuracies."""

    width: int
    lr: float
    rho: float
    accuracies: tuple[float, ...]
    """The finished seeds' final test accuracies (diverged runs count as their value, 0)."""
    unstable_runs: int
    planned: int
    """Distinct seeds of this cell's grid trials in any state (the seeds asked for)."""
    unstable: bool
    """Mean below the threshold, or at least half of the seeds unstable."""

    @property
    def n(self) -> int:
        return len(self.accuracies)

    @property
    def missing(self) -> bool:
        """No finished seed yet."""
        return not self.accuracies

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / self.n if self.accuracies else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (``nan`` with fewer than two)."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.accuracies) / (self.n - 1))

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
    optimum's mean accuracy."""
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
    def accuracy(self) -> float:
        return self.cell.mean


Verdict = Literal["holds", "fails", "n/a"]


@dataclass(frozen=True)
class Transfer:
    """Whether ``(η*, ρ*)`` transfers across the widths of one parametrization (§7 of
    ``docs/math.md``).

    Holds when, over all widths with an optimum, ``η*`` and ``ρ*`` each stay within ``max_steps``
    grid steps (largest minus smallest grid index) and the optimum's accuracy at the largest
    width is at least that at the smallest minus ``tolerance``. ``n/a`` with fewer than two
    widths, or when some width has no stable cell.
    """

    parametrization: str
    verdict: Verdict
    widths: tuple[int, ...]
    lr_steps: int
    rho_steps: int
    accuracy_change: float
    """Accuracy at the optimum, largest width minus smallest (``nan`` with one width)."""
    reason: str
    provisional: bool
    """Some planned cells have not finished: the verdict may change."""


@dataclass(frozen=True)
class Analysis:
    sweep: Sweep
    unstable_below: float
    within: float
    max_steps: int
    tolerance: float
    grids: Mapping[str, Grid]
    optima: Mapping[tuple[str, int], Optimum]
    transfers: Mapping[str, Transfer]

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


def _grid(p: str, runs: list[Run], below: float, base_from: tuple[str, ...] = ()) -> Grid:
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
        accs = tuple(r.accuracy for r in finished)
        bad = sum(r.unstable(below) for r in finished)
        mean = sum(accs) / len(accs) if accs else math.nan
        unstable = bool(accs) and (mean < below or 2 * bad >= len(accs))
        cells[key] = Cell(*key, accs, bad, len(planned), unstable)
    return Grid(
        parametrization=p,
        widths=tuple(sorted({k[0] for k in cells})),
        lrs=tuple(sorted({k[1] for k in cells})),
        rhos=tuple(sorted({k[2] for k in cells})),
        cells=cells,
        base_from=base_from,
    )


def _optimum(g: Grid, width: int, within: float) -> Optimum | None:
    done = [c for c in g.cells.values() if c.width == width and not c.missing]
    pool = [c for c in done if c.rho > 0] or done
    pool = [c for c in pool if not c.unstable] or pool  # all unstable: the best of them
    if not pool:
        return None
    best = max(sorted(pool, key=lambda c: (c.lr, c.rho)), key=lambda c: c.mean)  # first on ties
    base = g.cell(width, best.lr, 0.0) if best.rho > 0 else None
    region = tuple(c for c in done if c.mean >= best.mean - within)
    bases = [c for c in done if c.rho == 0]
    bases = [c for c in bases if not c.unstable] or bases
    best_base = max(sorted(bases, key=lambda c: c.lr), key=lambda c: c.mean) if bases else None
    return Optimum(
        g.parametrization,
        best,
        None if base is None or base.missing else base,
        region,
        best_base,
        _edges(g, best),
    )


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


def _transfer(g: Grid, optima: list[Optimum], max_steps: int, tolerance: float) -> Transfer:
    ws = tuple(o.width for o in optima)
    provisional = g.missing() > 0
    if len(optima) < 2:
        why = "one width" if optima else "no finished runs"
        return Transfer(g.parametrization, "n/a", ws, 0, 0, math.nan, why, provisional)
    bad = [o.width for o in optima if o.cell.unstable]
    if bad:
        why = f"no stable cell at width {', '.join(map(str, bad))}"
        return Transfer(g.parametrization, "n/a", ws, 0, 0, math.nan, why, provisional)
    li = [g.lrs.index(o.lr) for o in optima]
    rhos = g.sam_rhos if all(o.rho > 0 for o in optima) else g.rhos
    ri = [rhos.index(o.rho) if o.rho in rhos else 0 for o in optima]
    lr_steps, rho_steps = max(li) - min(li), max(ri) - min(ri)
    change = optima[-1].accuracy - optima[0].accuracy
    fails = []
    if lr_steps > max_steps:
        fails.append(f"η* moves {lr_steps} grid steps")
    if rho_steps > max_steps:
        fails.append(f"ρ* moves {rho_steps} grid steps")
    if change < -tolerance:
        fails.append(f"accuracy at the optimum drops {-100 * change:.2f} points")
    if fails:
        reason = "; ".join(fails)
    else:
        reason = (
            f"η* moves {lr_steps}, ρ* {rho_steps} grid step(s); accuracy {100 * change:+.2f} points"
        )
    verdict: Verdict = "fails" if fails else "holds"
    return Transfer(
        g.parametrization, verdict, ws, lr_steps, rho_steps, change, reason, provisional
    )


def analyze(
    sweep: Sweep,
    unstable_below: float = 0.30,
    within: float = 0.01,
    max_steps: int = 1,
    tolerance: float = 0.005,
) -> Analysis:
    """Cells, optima and transfer verdicts of every parametrization of ``sweep``.

    ``unstable_below``: runs under this accuracy (or diverged) are unstable; ``within``: the
    outlined region's distance to the optimum (absolute accuracy); ``max_steps`` and
    ``tolerance``: the transfer criterion (:class:`Transfer`).
    """
    grids: dict[str, Grid] = {}
    for p in sweep.parametrizations:
        runs, shared = _runs(sweep, p)
        grids[p] = _grid(p, runs, unstable_below, shared)
    optima: dict[tuple[str, int], Optimum] = {}
    transfers: dict[str, Transfer] = {}
    for p, g in grids.items():
        found = [o for w in g.widths if (o := _optimum(g, w, within)) is not None]
        optima.update({(p, o.width): o for o in found})
        transfers[p] = _transfer(g, found, max_steps, tolerance)
    return Analysis(sweep, unstable_below, within, max_steps, tolerance, grids, optima, transfers)
