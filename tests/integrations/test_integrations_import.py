"""``import mup2`` imports no framework (transformers, lightning, accelerate) and none of the
slow distributed modules (DTensor, FSDP, DCP): they load only with the modules that need them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "transformers",
    "lightning",
    "accelerate",
    "mup2.integrations",
    "mup2.optim.dcp",
    "torch.distributed.tensor",
    "torch.distributed.fsdp",
    "torch.distributed.checkpoint",
)


def test_import_mup2_imports_no_framework() -> None:
    code = f"import sys, mup2; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
