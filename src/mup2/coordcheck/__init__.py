"""Coordinate checks: does every layer move, and how much, as the model widens (§5 of
``docs/math.md``).

Example::

    x, y = torch.randn(32, 32), torch.randint(0, 10, (32,))
    r = coord_check(partial(MLP, in_features=32), [64, 128, 256, 512], x, y, scaling="mup2")
    print(format_slopes([r]))
    r.slope("features.2", "effective_perturbation")  # ~ 0 under μP²

``mup2 coordcheck`` is the command; ``docs/coordcheck.md`` explains the quantities.
"""

from mup2.coordcheck.measure import (
    EFFECTIVE_SLOPE,
    GROUPS,
    QUANTITIES,
    CoordCheck,
    Layer,
    LossFn,
    ModelFactory,
    Slope,
    coord_check,
    fit_slope,
    verdict,
)
from mup2.coordcheck.plot import plot_coord_checks
from mup2.coordcheck.table import (
    RULE_NAMES,
    TABLE1_RULES,
    TABLE1_SCALINGS,
    format_slopes,
    format_table1,
    records,
    table1,
)

__all__ = [
    "EFFECTIVE_SLOPE",
    "GROUPS",
    "QUANTITIES",
    "RULE_NAMES",
    "TABLE1_RULES",
    "TABLE1_SCALINGS",
    "CoordCheck",
    "Layer",
    "LossFn",
    "ModelFactory",
    "Slope",
    "coord_check",
    "fit_slope",
    "format_slopes",
    "format_table1",
    "plot_coord_checks",
    "records",
    "table1",
    "verdict",
]
