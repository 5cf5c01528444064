"""examples/accelerate_sam.py: trains a few steps (with and without gradient accumulation) and
resumes from accelerate's saved state bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "accelerate_sam.py"


def _run(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--width", "64", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("accum", ["1", "2"])
def test_accelerate_example_trains_and_resumes(accum: str, tmp_path: Path) -> None:
    state, full, resumed = tmp_path / "state", tmp_path / "full.pt", tmp_path / "resumed.pt"
    common = ["--steps", "6", "--save-at", "3", "--accum", accum]
    _run(*common, "--state", str(state), "--out", str(full))
    _run(*common, "--resume", str(state), "--out", str(resumed))
    a, b = torch.load(full), torch.load(resumed)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
