"""examples/hf_gpt_sweep.py: the byte-level GPT-2 under SAMTrainer sweeps a tiny grid, its loss
minimized; a corpus with another sha256 is refused."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from example_sweeps import load_example, sweep_example

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

TINY = {
    "train_kb": 2,
    "val_kb": 1,
    "corpus_sha256": "",
    "seq": 16,
    "batch": 4,
    "steps": 4,
    "warmup": 1,
    "evals": 2,
    "n_layer": 1,
    "n_head": 2,
    "base_width": 16,
}


@pytest.mark.slow
def test_hf_gpt_example_sweeps(tmp_path: Path) -> None:
    grid = {
        "parametrizations": ["mup2"],
        "widths": [16, 32],
        "lr": [0.003],
        "rho": [0.0, 0.03],
        "seeds": [0],
    }
    trials = sweep_example(
        tmp_path,
        "hf_gpt_sweep.py",
        grid=grid,
        metric="val_loss",
        direction="minimize",
        optimizer="adamw",
        settings=TINY,
    )
    assert len(trials) == 4
    for t in trials:
        assert 0.0 < t.value < math.log(256) + 0.5  # nats per byte, about uniform at the start
        assert sorted(t.intermediate_values) == [2, 4]  # evaluations every steps/evals steps
        assert set(t.user_attrs["final"]) == {"val_loss", "train_loss"}


def test_hf_gpt_example_refuses_another_corpus() -> None:
    example = load_example("hf_gpt_sweep.py")
    point = SimpleNamespace(settings={**TINY, "corpus_sha256": "0" * 64})
    with pytest.raises(RuntimeError, match="another Python version"):
        example.objective(point, None)
