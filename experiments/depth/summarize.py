"""Figure 1 across depth from the depth study's store (``depth.db`` here): the report of
``mup2 report`` (heatmaps, ρ slice, optima against depth, transfer verdicts, CSVs) with depth as
the scaling axis, one row per variant.

Each config is one study at one depth (``README.md`` here); this reads them all, keeps width 128,
puts each run's depth where the report reads the scaling axis (``Run.width``, with
``Sweep.axis = "depth"``) and names it by variant:

- ``width-only``: ``depth-d2`` and ``depth-widthonly-d*`` (μP²);
- ``depth-aware``: ``depth-d2`` and ``depth-aware-d*`` (μP²);
- ``completep-naive``: ``depth-d2`` and ``depth-aware-d*`` (``mup-naive``, with μP²'s ρ = 0
  runs, the same base optimizer).

The joint check (width 64 at depth 4 against width 256 at depth 16, depth-aware) is reported
with width as the axis. Unfinished points show as unfinished (grey), verdicts as provisional.

    .venv/bin/python experiments/depth/summarize.py   # docs/results/depth/study/, .../joint/
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

import optuna

from mup2.report import (
    Run,
    Sweep,
    analyze,
    load_sweep,
    plot_figure1,
    plot_rho_slice,
    plot_transfer,
    slug,
    write_optima_csv,
    write_summary,
    write_trials_csv,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STORE = f"sqlite:///{HERE / 'depth.db'}"
WIDTH = 128
BASE = "depth-d2"  # the base depth: both μP² variants' (and CompleteP-naive's) depth 2
#: variant -> (its studies beside the base: PREFIX + depth, parametrization of its ρ > 0 runs)
VARIANTS = {
    "width-only": ("depth-widthonly-d", "mup2"),
    "depth-aware": ("depth-aware-d", "mup2"),
    "completep-naive": ("depth-aware-d", "mup-naive"),
}
JOINT = {"depth-aware-d4": 64, "depth-aware-d16": 256}


def _depth(study: str) -> int:
    m = re.search(r"-d(\d+)$", study)
    if m is None:
        raise ValueError(f"study {study!r} names no depth (…-dN)")
    return int(m.group(1))


def _report(sweep: Sweep, out: Path) -> None:
    """``mup2 report``'s files for an assembled sweep (:func:`mup2.report.make_report`'s body)."""
    a = analyze(sweep)
    fig1 = plot_figure1(a, out / "figure1.png")
    each = [plot_figure1(a, out / f"figure1-{slug(p)}.png", [p]) for p in sweep.parametrizations]
    figures = [fig1, *each, plot_rho_slice(a, out / "rho-slice.png")]
    figures.append(plot_transfer(a, out / "transfer.png"))
    tables = [write_trials_csv(sweep, out / "trials.csv"), write_optima_csv(a, out / "optima.csv")]
    summary = write_summary(a, out / "summary.md", figures, tables)
    for p, t in a.transfers.items():
        print(f"{out.name}: {p}: {t.verdict} ({t.reason})")
    print(f"wrote {summary}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "depth")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(STORE))
    sweeps = {n: load_sweep(STORE, n) for n in names}
    runs: list[Run] = []
    for variant, (prefix, par) in VARIANTS.items():
        for name, s in sweeps.items():
            if name != BASE and not re.fullmatch(rf"{prefix}\d+", name):
                continue
            depth = _depth(name)
            runs += [
                replace(r, parametrization=variant, width=depth)
                for r in s.runs
                if r.grid and r.width == WIDTH and (r.parametrization == par or r.rho == 0)
            ]
    variants = tuple(v for v in VARIANTS if any(r.parametrization == v for r in runs))
    study = Sweep(
        study="depth (the studies depth-*)",
        storage=STORE.replace(str(ROOT) + "/", ""),
        runs=tuple(runs),
        parametrizations=variants,
        name=f"Depth transfer: ResMLP width {WIDTH}, R1, base depth 2",
        axis="depth",
    )
    if runs:
        _report(study, args.out / "study")
    joint = [
        replace(r, parametrization="depth-aware")
        for name, width in JOINT.items()
        if name in sweeps
        for r in sweeps[name].runs
        if r.grid and r.width == width and r.parametrization == "mup2"
    ]
    if joint:
        _report(
            replace(
                study,
                study="depth-aware-d4 (width 64), depth-aware-d16 (width 256)",
                runs=tuple(joint),
                parametrizations=("depth-aware",),
                name="Joint check: width 64 → 256 with depth 4 → 16, depth-aware μP²",
                axis="width",
            ),
            args.out / "joint",
        )


if __name__ == "__main__":
    main()
