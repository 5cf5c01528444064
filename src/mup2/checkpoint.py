"""Checkpoint files that know when they are damaged.

A checkpoint is a dict saved with ``torch.save`` plus the key ``sha256``: a SHA-256 over every
value in the dict (each tensor's dtype, shape and bytes; every other value's ``repr``), in order.
:func:`save_checkpoint` writes it to a temporary file, flushes it to disk and renames it over the
old one, so a reader sees the old or the new checkpoint, never a mix. :func:`load_checkpoint`
recomputes the checksum and raises :class:`CheckpointError` (naming the file and what to do) for
a file that is truncated, empty, not a checkpoint or changed in any byte of a tensor.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mup2.errors import UserError

__all__ = ["CHECKSUM_KEY", "CheckpointError", "checksum", "load_checkpoint", "save_checkpoint"]

CHECKSUM_KEY = "sha256"


class CheckpointError(UserError):
    """A checkpoint file that cannot be trusted: damaged, truncated or not a checkpoint."""


def checksum(state: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of ``state``'s keys and values, tensors by their bytes."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, Mapping):
        h.update(b"{")
        for k, v in value.items():
            _feed(h, k)
            _feed(h, v)
        h.update(b"}")
    elif isinstance(value, list | tuple):
        h.update(b"[" if isinstance(value, list) else b"(")
        for v in value:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> None:
    """Write ``state`` with its checksum to ``path`` atomically (no partial file is left behind,
    even when the disk is full)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            torch.save({**state, CHECKSUM_KEY: checksum(state)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, required: Iterable[str] = ()) -> dict[str, Any]:
    """The dict saved at ``path`` (on the CPU), its checksum verified and removed; ``required``
    keys must be present. Only a checkpoint whose ``format`` is below 2 (written before
    checksums) may lack the checksum; it loads unverified."""
    path = Path(path)
    redo = f"delete {path} to start the run over, or point the run at another directory"
    with path.open("rb") as f:  # a missing or unreadable file: the OSError names it
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # empty, truncated, a foreign format: the file is at fault
            first = (str(exc).strip().splitlines() or [""])[0][:120]
            reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            raise CheckpointError(f"{path}: not a readable checkpoint ({reason}); {redo}") from None
    missing = sorted(set(required) - set(state)) if isinstance(state, dict) else None
    if missing is None or missing:
        what = f"it lacks {missing}" if missing else f"it holds a {type(state).__name__}"
        raise CheckpointError(f"{path}: not a mup2 checkpoint ({what}); {redo}")
    saved = state.pop(CHECKSUM_KEY, None)
    legacy = saved is None and isinstance(state.get("format"), int) and state["format"] < 2
    if not legacy and saved != checksum(state):
        raise CheckpointError(
            f"{path}: the checkpoint is damaged (its contents do not match the checksum saved "
            f"with it); {redo}"
        )
    out: dict[str, Any] = state
    return out
