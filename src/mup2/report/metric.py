"""The number a sweep optimizes and which way is better: what the report ranks, colours and
compares by.

A built-in sweep (``mup2 sweep`` on a :class:`~mup2.config.TrainConfig`) maximizes the final test
accuracy (:data:`TEST_ACCURACY`). A sweep around a user's function declares its objective metric
and direction in its config (``sweep["train"]["metric"]`` and ``["direction"]``):
:func:`sweep_metric` reads them. An accuracy-like metric (a name ending in ``accuracy`` or
``acc``, maximized, every value in [0, 1]) is shown in percent with absolute tolerances, as the
built-in one; any other metric (a loss, a perplexity, a score) is shown as it is, and the
report's tolerances are relative to the optimum's value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["DIRECTIONS", "TEST_ACCURACY", "Direction", "Metric", "sweep_metric"]

Direction = Literal["maximize", "minimize"]
DIRECTIONS: tuple[Direction, ...] = ("maximize", "minimize")
_ACCURACY = re.compile(r"(^|_)acc(uracy)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Metric:
    """A sweep's objective metric.

    ``percent``: an accuracy in [0, 1], shown in percent; the region and transfer tolerances are
    then absolute (``0.01`` is one point), and a diverged run counts as 0. Otherwise values are
    shown as they are, the tolerances are relative to the optimum's magnitude (``0.01`` is 1%),
    and a diverged run counts as the worst value (``-inf`` maximizing, ``+inf`` minimizing).
    """

    name: str
    """The metric's name as the objective returned it: ``test_accuracy``, ``val_loss``."""
    direction: Direction
    percent: bool = False
    unstable_default: float | None = None
    """The threshold past which a run counts as unstable when the caller gives none (0.30 for
    the built-in accuracy; ``None``: only diverged runs are unstable)."""

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {self.direction!r}")

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def sign(self) -> int:
        """``+1`` when higher is better, ``-1`` when lower is."""
        return 1 if self.maximize else -1

    @property
    def label(self) -> str:
        """The name for prose and axes: ``test accuracy``, ``val loss``."""
        return self.name.replace("_", " ")

    @property
    def column(self) -> str:
        """The optima table's column: ``accuracy`` for the built-in test accuracy, else the
        metric's name."""
        return "accuracy" if self == TEST_ACCURACY else self.name

    @property
    def diverged(self) -> float:
        """What a diverged run (no finite value) counts as."""
        if self.percent:
            return 0.0
        return -math.inf if self.maximize else math.inf

    @property
    def better_word(self) -> str:
        return "higher is better" if self.maximize else "lower is better"

    def score(self, value: float | None) -> float:
        """``value``, or :attr:`diverged` when it is missing or not finite."""
        return value if value is not None and math.isfinite(value) else self.diverged

    def worse(self, value: float, threshold: float | None) -> bool:
        """Whether ``value`` lies past ``threshold`` on the bad side (never with no threshold)."""
        if threshold is None:
            return False
        return value < threshold if self.maximize else value > threshold

    def slack(self, reference: float, tolerance: float) -> float:
        """``tolerance`` in the metric's units: as it is for a percent metric, times
        ``|reference|`` otherwise."""
        return tolerance if self.percent else tolerance * abs(reference)

    def near(self, value: float, best: float, tolerance: float) -> bool:
        """Whether ``value`` is at most :meth:`slack` worse than ``best``."""
        d = self.slack(best, tolerance)
        return value >= best - d if self.maximize else value <= best + d

    def fmt(self, x: float, digits: int = 2, signed: bool = False) -> str:
        """A value for tables: percent with ``digits`` decimals, else 4 significant digits;
        with its sign when ``signed``."""
        plus = "+" if signed else ""
        return f"{100 * x:{plus}.{digits}f}" if self.percent else f"{x:{plus}.4g}"

    def fmt_change(self, change: float, reference: float) -> str:
        """A change of the metric: ``+1.00 points``, or ``-0.0123 (-1.05%)`` relative to
        ``reference``."""
        if self.percent:
            return f"{100 * change:+.2f} points"
        rel = change / abs(reference) if reference else math.nan
        return f"{change:+.4g} ({100 * rel:+.2f}%)"

    def fmt_tolerance(self, tolerance: float) -> str:
        """``0.5 points`` or ``1%`` (of the optimum's value)."""
        if self.percent:
            return f"{100 * tolerance:g} point" + ("" if 100 * tolerance == 1 else "s")
        return f"{100 * tolerance:g}%"


TEST_ACCURACY = Metric("test_accuracy", "maximize", percent=True, unstable_default=0.30)
"""The built-in sweeps' objective: the final test accuracy."""


def sweep_metric(
    config: Mapping[str, Any], study_direction: str | None, values: Iterable[float | None]
) -> Metric:
    """The metric of a study from its ``sweep`` user attribute, its direction (Optuna's
    ``StudyDirection`` name, ``MAXIMIZE`` or ``MINIMIZE``) and its trials' values.

    A config whose ``train`` section names an ``objective`` (a sweep around a user's function)
    gives ``train.metric`` and ``train.direction``; a built-in sweep's (or no config) gives
    :data:`TEST_ACCURACY` when the study maximizes, a metric named ``value`` when it minimizes.
    """
    train = config.get("train")
    train = train if isinstance(train, Mapping) else {}
    study_dir = str(study_direction).lower() if study_direction else None
    if "objective" not in train:
        if study_dir == "minimize":
            return Metric("value", "minimize")
        return TEST_ACCURACY
    name = str(train.get("metric") or "value")
    direction = str(train.get("direction") or study_dir or "maximize").lower()
    if direction not in DIRECTIONS:
        direction = study_dir if study_dir in DIRECTIONS else "maximize"
    finite = [v for v in values if v is not None and math.isfinite(v)]
    percent = (
        direction == "maximize"
        and bool(_ACCURACY.search(name))
        and all(0.0 <= v <= 1.0 for v in finite)
    )
    return Metric(name, "maximize" if direction == "maximize" else "minimize", percent)
