"""Coordinate-check results as text: the per-layer slope table, JSON records and Table 1 (which
layer groups each SAM rule perturbs effectively under each perturbation scaling)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from mup2.coordcheck.measure import (
    EFFECTIVE_SLOPE,
    GROUPS,
    CoordCheck,
    ModelFactory,
    Slope,
    coord_check,
)
from mup2.errors import check_iterable
from mup2.optim.rules import LIGHTSAM_RULES, ONEPASS_RULES, RULES, get_rule
from mup2.tables import format_table

__all__ = [
    "RULE_NAMES",
    "TABLE1_RULES",
    "TABLE1_SCALINGS",
    "format_slopes",
    "format_table1",
    "records",
    "table1",
]

TABLE1_RULES = ("sam", "sam-on", "asam", "asam-layerwise")
TABLE1_SCALINGS = ("naive", "global", "mup2")
RULE_NAMES = {name: get_rule(name).label for name in (*RULES, *LIGHTSAM_RULES, *ONEPASS_RULES)}
_SCALING_NAMES = {
    "naive": "naive",
    "global": "global",
    "mup2": "μP²",
    "mup2-coupled": "μP² coupled",
}


def _num(v: float) -> str:
    return f"{v:+.2f}" if math.isfinite(v) else "nan"


def records(results: Sequence[CoordCheck], step: int | None = None) -> list[dict[str, Any]]:
    """JSON-ready records, one per (result, step, layer, quantity); ``step=None``: every step.

    Keys: ``scheme``, ``rule``, ``scaling``, ``quantity``, ``layer``, ``role``, ``group``,
    ``module_type``, ``step``, ``slope`` (``None`` when undefined), ``verdict``, ``effective``,
    ``widths`` and ``values`` (RMS per width, mean over seeds).
    """
    return [s.to_dict() for r in results for s in r.slopes(step)]


def format_slopes(results: Sequence[CoordCheck], step: int = -1) -> str:
    """The terminal table: scaling, layer, role, quantity, slope, verdict and the RMS at the
    smallest and largest width, for ``step`` (default: the last measured step)."""
    cols = ("rule", "scaling", "layer", "role", "quantity", "slope", "verdict", "first", "last")
    rows: list[tuple[str, ...]] = []
    for r in results:
        for s in r.slopes(step):
            rows.append(
                (
                    s.rule,
                    s.scaling,
                    s.layer,
                    s.group,
                    s.quantity,
                    _num(s.slope),
                    s.verdict,
                    f"{s.values[0]:.3g}",
                    f"{s.values[-1]:.3g}",
                )
            )
    head = ""
    if results:
        r0 = results[0]
        head = (
            f"scheme {r0.scheme}, widths {list(r0.widths)}, seeds {list(r0.seeds)}, "
            f"step {step % r0.steps + 1} of {r0.steps}; slope of log2 RMS vs log2 width\n"
        )
    return head + format_table(rows, cols, underline=True)


def table1(
    factory: ModelFactory,
    widths: Sequence[int],
    inputs: Tensor,
    targets: Tensor,
    *,
    rules: Sequence[str] = TABLE1_RULES,
    scalings: Sequence[str] = TABLE1_SCALINGS,
    **kwargs: Any,
) -> list[CoordCheck]:
    """Run :func:`mup2.coordcheck.coord_check` for every rule and scaling (``kwargs`` are passed
    on); format the results with :func:`format_table1`. SAM-ON needs normalization layers."""
    widths = tuple(check_iterable("widths", widths))  # read by every run, so read once here
    kwargs = {name: check_iterable(name, value) for name, value in kwargs.items()}
    return [
        coord_check(factory, widths, inputs, targets, rule=rule, scaling=scaling, **kwargs)
        for rule in rules
        for scaling in scalings
    ]


def _cell(slopes: Sequence[Slope]) -> str:
    if not slopes:
        return "–"
    if all(all(v == 0.0 for v in s.values) for s in slopes):
        return "not perturbed"
    eff = [s.effective for s in slopes]
    word = "yes" if all(eff) else "no" if not any(eff) else "partly"
    if any(s.effective and s.slope > -EFFECTIVE_SLOPE for s in slopes):
        word += ", grows"
    return f"{word} ({', '.join(_num(s.slope) for s in slopes)})"


def format_table1(
    results: Sequence[CoordCheck], quantity: str = "effective_perturbation", step: int = -1
) -> str:
    """Table 1 as markdown: one row per (rule, scaling), one column per layer group; a cell says
    whether every layer of the group is effectively perturbed (slope > -0.25 and finite), with
    each layer's slope; ``grows``: some slope exceeds +0.25 (the perturbation blows up with
    width); ``not perturbed``: the rule leaves the group untouched."""
    measured = {  # groups with a value for this quantity (attention logits have no effective one)
        s.group
        for r in results
        for s in r.slopes(step)
        if s.quantity == quantity and any(math.isfinite(v) for v in s.values)
    }
    groups = [g for g in GROUPS if g in measured]
    rows: list[list[str]] = []
    for r in results:
        by_group: dict[str, list[Slope]] = {g: [] for g in groups}
        for s in r.slopes(step):
            if s.quantity == quantity and s.group in by_group:
                by_group[s.group].append(s)
        name = RULE_NAMES.get(r.rule, r.rule)
        scaling = _SCALING_NAMES.get(r.scaling, r.scaling)
        rows.append([name, scaling, *(_cell(by_group[g]) for g in groups)])
    return format_table(rows, ["rule", "scaling", *groups], markdown=True)
