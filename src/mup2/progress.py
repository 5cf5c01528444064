"""Progress that reads well in a terminal and in a log.

In a terminal a job shows tqdm bars. Outside one (a pipe, a file, CI) a bar would print a line
per refresh, so there is none (tqdm's ``disable=None``): a training run prints its line per
epoch, and a sweep a status line (:class:`StatusLine`) when its counts changed, at most every
:data:`LOG_SECONDS`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

__all__ = ["LOG_SECONDS", "StatusLine", "progress_bar"]

#: Outside a terminal, the least time between two status lines of a long job.
LOG_SECONDS = 60.0


def progress_bar(
    iterable: Iterable[Any] | None = None, *, enabled: bool, **kwargs: Any
) -> tqdm[Any]:
    """A tqdm bar over ``iterable`` when ``enabled`` and tqdm writes to a terminal; otherwise a
    disabled one, whose updates do nothing (``bar.disable`` tells which). ``kwargs`` go to
    tqdm."""
    return tqdm(iterable, disable=None if enabled else True, **kwargs)


class StatusLine:
    """A line on stderr now and then, for a job whose progress bar is off for want of a
    terminal (``active``: ``enabled and bar.disable``): the first :meth:`show`, then a changed
    line at most every ``seconds`` (the job's last word is its caller's)."""

    def __init__(self, active: bool, seconds: float = LOG_SECONDS) -> None:
        self.active, self.seconds = active, seconds
        self._shown: str | None = None
        self._at = -float("inf")

    def show(self, line: str) -> None:
        """Print ``line`` if it differs from the last one printed and that one is ``seconds``
        old."""
        now = time.monotonic()
        if self.active and line != self._shown and now - self._at >= self.seconds:
            print(line, file=sys.stderr, flush=True)
            self._shown, self._at = line, now
