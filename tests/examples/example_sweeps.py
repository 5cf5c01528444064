"""Run an example's objective through the real sweep API (:func:`mup2.sweep.run`) on a tiny grid
in an SQLite store under ``tmp_path``, and check what the store holds."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
import pytest

import mup2.sweep

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(file: str) -> ModuleType:
    """``examples/FILE`` imported as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{Path(file).stem}", EXAMPLES / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_example(tmp_path: Path, file: str, **keys: Any) -> list[optuna.trial.FrozenTrial]:
    """Sweep ``examples/FILE``'s ``objective`` with ``keys`` (``grid``, ``metric``, ...) and return
    the study's trials, each checked: complete, ``status`` ``ok``, a finite value equal to its
    metric, and a reported curve."""
    result = mup2.sweep.run(
        f"{EXAMPLES / file}:objective",
        name="example",
        storage=f"sqlite:///{tmp_path / 'example.db'}",
        run_dir=tmp_path,
        version="test",
        progress=False,
        say=None,
        **keys,
    )
    assert result.state.finished
    trials = result.study().trials
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs
        assert t.user_attrs["status"] == "ok", t.user_attrs
        assert t.value is not None and math.isfinite(t.value)
        assert t.value == pytest.approx(t.user_attrs["final"][keys.get("metric", "value")])
        assert t.intermediate_values, "the objective reports its curve"
    return trials
