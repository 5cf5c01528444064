"""The one exception type for failures a user causes and can fix (a bad config, option, file or
store), and the checks of the library's arguments. Each module raises a subclass of
:class:`UserError` whose message names the input and the fix in a line or two; the ``mup2``
command prints that message and exits with code 2 (:data:`USER_ERROR`), without a traceback
unless ``--debug`` is given. A wrong argument of a public function or constructor (a string for
a number, a class for an instance or the reverse, a used-up iterator) is a :class:`TypeError` or
:class:`ValueError` from :func:`check_number`, :func:`check_integer`, :func:`check_class`,
:func:`check_instance` or :func:`check_iterable`, whose message names the argument, what it
expects and what it got."""

from __future__ import annotations

import errno
import functools
import math
import numbers
import re
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = [
    "USER_ERROR",
    "DataError",
    "UserError",
    "check_class",
    "check_finite",
    "check_instance",
    "check_integer",
    "check_iterable",
    "check_number",
    "describe_os_error",
    "reads_as_number",
    "shown",
]

T = TypeVar("T")

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


def shown(value: object) -> str:
    """``value`` as a message names it: ``the string '0.05'``, ``the class SGD``, ``an instance
    of SGD`` (objects of other modules, whose ``repr`` may run over lines), else its ``repr``
    and type (``0.1 (float)``)."""
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, type):
        return f"the class {value.__qualname__}"
    kind = type(value).__name__
    if type(value).__module__ != "builtins":
        return f"an instance of {kind}"
    text = re.sub(r" at 0x[0-9a-f]+", "", repr(value))  # <generator object f>: no address
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({kind})"


def _is_number(value: object) -> bool:
    """A real number (Python's, NumPy's) or a one-element tensor, which torch's optimizers take
    as a learning rate; not a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    numel = getattr(value, "numel", None)  # a tensor, without importing torch here
    return type(value).__module__.startswith("torch") and callable(numel) and numel() == 1


def reads_as_number(value: object) -> bool:
    """Whether ``value`` is a string that reads as a number (``"0.1"``), or a tuple or list
    holding one: a number written with quotes."""
    for v in value if isinstance(value, tuple | list) else (value,):
        if isinstance(v, str):
            try:
                float(v)
                return True
            except ValueError:
                pass
    return False


def check_number(name: str, value: object, *, optional: bool = False) -> None:
    """Raise :class:`TypeError` naming ``name`` unless ``value`` is a number (``optional``: or
    ``None``), or a tuple or list of them; :class:`ValueError` if one is not finite
    (:func:`check_finite`). A string that reads as a number gets the number to write instead."""
    if optional and value is None:
        return
    values = value if isinstance(value, tuple | list) else (value,)
    for v in values:
        if _is_number(v):
            continue
        hint = f" (pass {v} without the quotes)" if reads_as_number(v) else ""
        if v is value:
            raise TypeError(f"{name} must be a number, got {shown(value)}{hint}")
        raise TypeError(f"{name} must be numbers, got {shown(value)}, holding {shown(v)}{hint}")
    check_finite(name, value)


def check_integer(name: str, value: object, *, optional: bool = False) -> None:
    """Raise :class:`TypeError` naming ``name`` unless ``value`` is an integer (not a bool;
    ``optional``: or ``None``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {shown(value)}")


def check_class(name: str, value: object, base: type, what: str, fix: str) -> None:
    """Raise :class:`TypeError` naming ``name`` unless ``value`` is a subclass of ``base`` (or a
    ``functools.partial`` of one): ``{name} must be {what}, got ...; {fix}``."""
    target = value.func if isinstance(value, functools.partial) else value
    if isinstance(target, type) and issubclass(target, base):
        return
    raise TypeError(f"{name} must be {what}, got {shown(value)}; {fix}")


def check_instance(name: str, value: object, cls: type | tuple[type, ...], what: str) -> None:
    """Raise :class:`TypeError` naming ``name`` unless ``value`` is an instance of ``cls``
    (``what`` says so in words: ``"an nn.Module (a built model)"``); a class of ``cls`` gets
    "build it first"."""
    if isinstance(value, cls):
        return
    fix = ""
    if isinstance(value, type) and issubclass(value, cls):
        fix = f"; build it first: {value.__qualname__}(...)"
    raise TypeError(f"{name} must be {what}, got {shown(value)}{fix}")


def check_iterable(name: str, value: Iterable[T], again: str = "make it again") -> Iterable[T]:
    """``value``, read into a list if it is an iterator (a generator can be read once; the
    list, any number of times). An iterator that yields nothing, most often one read before
    (``model.parameters()`` given to two optimizers), raises :class:`ValueError` naming
    ``name``; ``again`` says how to get a fresh one."""
    if not isinstance(value, Iterator):
        return value
    out = list(value)
    if not out:
        raise ValueError(
            f"{name} is an iterator that yields nothing: an iterator (a generator) can be read "
            f"only once, and this one was read before or is empty; {again}, or pass a list"
        )
    return out


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
