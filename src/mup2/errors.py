"""The one exception type for failures a user causes and can fix (a bad config, option, file or
store). Each module raises a subclass of :class:`UserError` whose message names the input and
the fix in a line or two; the ``mup2`` command prints that message and exits with code 2
(:data:`USER_ERROR`), without a traceback unless ``--debug`` is given."""

from __future__ import annotations

import errno
import math

__all__ = ["USER_ERROR", "DataError", "UserError", "check_finite", "describe_os_error"]

#: The exit code of the ``mup2`` command for a :class:`UserError` (click's code for bad usage).
USER_ERROR = 2


class UserError(Exception):
    """A failure caused by the user's input; the message says which input and how to fix it."""


class DataError(UserError, ValueError):
    """A dataset file that cannot be read as what it claims to be."""


def check_finite(name: str, value: object) -> None:
    """Raise :class:`ValueError` naming ``name`` if ``value`` is a non-finite float, or a tuple
    or list holding one (for optimizer arguments: torch accepts ``nan`` and ``inf``)."""
    values = value if isinstance(value, tuple | list) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite, got {value!r}")


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def describe_os_error(exc: OSError, what: str = "") -> str:
    """A one-line message for a failed file operation: the file, the reason and what to do."""
    if exc.errno is None and exc.filename is None:  # raised with a message of its own
        return str(exc)
    name = exc.filename if exc.filename is not None else what
    reason = exc.strerror or str(exc)
    where = f"{name}: " if name else ""
    if exc.errno in _FULL:
        return f"{where}{reason}: the disk is full; free some space and run the same command again"
    if isinstance(exc, PermissionError):
        return f"{where}{reason}: choose a path you may write to, or fix its permissions"
    if isinstance(exc, FileNotFoundError):
        return f"{where}{reason}: check the path"
    if isinstance(exc, NotADirectoryError | FileExistsError | IsADirectoryError):
        return f"{where}{reason}: choose another path"
    return f"{where}{reason}"
