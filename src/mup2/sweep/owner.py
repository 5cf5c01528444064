"""Which process runs a trial, whether it still lives, and queueing a dead one's trial again.

A worker records itself on every trial it claims (:func:`me`, in the trial's system attribute
:data:`OWNER`): host name, a key of this machine's boot and PID namespace, its PID and the PID's
start time. Another process on the same machine and namespace can then tell for certain that the
owner is gone (no such PID, a zombie, or the PID reused by a later process) and requeue the
trial at once instead of waiting for its heartbeat to go stale. Owners elsewhere are never
judged: their trials wait for the heartbeat. :func:`requeue` enqueues a failed trial's grid
point again, without its owner.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["OWNER", "is_dead", "me", "requeue"]

#: The trial system attribute holding its worker (see :func:`me`).
OWNER = "mup2:owner"


def _node() -> str:
    """This boot of this machine and this PID namespace ('' where /proc does not tell)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time)`` of ``pid`` from /proc (``None``: no such process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[19])


def me() -> dict[str, Any]:
    """This process as a trial's owner."""
    pid = os.getpid()
    stat = _stat(pid) if _node() else None
    return {
        "host": socket.gethostname(),
        "node": _node(),
        "pid": pid,
        "started": stat[1] if stat else None,
    }


def is_dead(owner: Mapping[str, Any]) -> bool:
    """Whether the process ``owner`` (from :func:`me`) is certainly gone; ``False`` when it runs
    on another machine or namespace, or may still run."""
    if owner.get("host") != socket.gethostname() or owner.get("node") != _node():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    if owner["node"]:  # Linux: the state and start time tell zombies and reused PIDs apart
        stat = _stat(pid)
        return stat is None or stat[0] in ("Z", "X") or stat[1] != owner.get("started")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def requeue(
    study: optuna.Study, trial: FrozenTrial, max_retries: int | None, *, count: bool = True
) -> None:
    """Enqueue the grid point of the failed ``trial`` again (its fixed parameters and ``grid``
    attribute, not its owner or results), unless it was retried ``max_retries`` times already;
    ``count=False`` for a trial that was interrupted rather than lost. Call it under
    :func:`mup2.sweep.store.store_lock`, like every enqueueing."""
    if "grid" not in trial.user_attrs:
        return
    history = list(trial.system_attrs.get("retry_history", []))
    if count:
        history.append(trial.number)
        if max_retries is not None and len(history) > max_retries:
            return
    attrs = {k: v for k, v in trial.system_attrs.items() if k != OWNER}
    attrs.update(failed_trial=history[0] if history else trial.number, retry_history=history)
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={"grid": trial.user_attrs["grid"]},
            system_attrs=attrs,
        )
    )
