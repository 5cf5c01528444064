"""Opening a sweep's Optuna store, the one way every mup2 process does it (driver, worker, report).

Optuna creates its tables and writes its schema-version row without a lock, so two processes
opening a new store at once can both try (and one crashes). :func:`store_lock` serializes them:
an exclusive ``flock`` on ``PATH.lock`` beside an SQLite file, a session-level advisory lock
(``pg_advisory_lock``) on PostgreSQL. :func:`open_storage` creates the storage under that lock,
and the sweep takes it again around every step that must not interleave with another process's
(enqueueing grid points, re-enqueueing a dead worker's trial). Every failure to reach or use the
store becomes a :class:`StoreError` that names the store and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage

from mup2.errors import UserError
from mup2.sweep.owner import requeue

__all__ = [
    "STALE_HEARTBEATS",
    "StoreError",
    "open_storage",
    "redact",
    "sqlite_path",
    "store_errors",
    "store_lock",
]

#: A running trial is stale (failed, then requeued) after this many heartbeat intervals without
#: a heartbeat: Optuna's ``grace_period`` is ``STALE_HEARTBEATS * heartbeat_seconds``.
STALE_HEARTBEATS = 3

#: The advisory-lock key of mup2 on PostgreSQL (any constant 64-bit integer).
_PG_LOCK_KEY = 0x6D757032_73776565  # "mup2swee"
_HELD: dict[str, int] = {}  # store URL -> depth of this process's lock on it (re-entrant)


class StoreError(UserError):
    """A store that cannot be opened or written: a bad URL, a missing file, no server, full."""


def redact(url: str) -> str:
    """``url`` without the password of its ``user:password@`` part."""
    return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", url)


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (``None`` for other stores and in-memory SQLite)."""
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _parse(url: str) -> sqlalchemy.engine.URL:
    try:
        parsed = sqlalchemy.engine.make_url(url)
        parsed.get_dialect()  # an unknown kind of database (NoSuchModuleError)
        return parsed
    except sqlalchemy.exc.ArgumentError:
        raise StoreError(
            f"store {redact(url)!r} is not a database URL; use sqlite:///PATH.db or "
            "postgresql+psycopg2://USER@HOST/DB"
        ) from None


@contextlib.contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Turn the database errors raised inside into :class:`StoreError` naming ``url``."""
    try:
        yield
    except ImportError as exc:
        raise StoreError(
            f"store {redact(url)}: its database driver is missing ({exc}); for PostgreSQL "
            "install psycopg2-binary (pip install 'mup2[postgres]')"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        cause = exc.__cause__ or exc.__context__ or exc
        orig = getattr(cause, "orig", None) or getattr(exc, "orig", None) or cause
        reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        if "disk" in reason or "No space left" in reason:  # full, or failing
            fix = "free some disk space (or check the disk) and run the same command again"
        elif isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            fix = "check that the server runs and the URL (host, port, user, database)"
        else:
            fix = "check that the URL names a mup2 sweep store"
        raise StoreError(f"store {redact(url)}: {reason[:200]}; {fix}") from None


@contextlib.contextmanager
def store_lock(url: str) -> Iterator[None]:
    """Hold the store's lock (re-entrant within a process); a no-op for other databases."""
    if _HELD.get(url):
        _HELD[url] += 1
        try:
            yield
        finally:
            _HELD[url] -= 1
        return
    with store_errors(url), _acquire(url):
        _HELD[url] = 1
        try:
            yield
        finally:
            del _HELD[url]


@contextlib.contextmanager
def _acquire(url: str) -> Iterator[None]:
    path = sqlite_path(url)
    if path is not None:
        try:
            fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o644)
        except PermissionError:  # a read-only directory: only readers get here, none needs it
            if not path.is_file():
                raise
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
    elif _parse(url).get_backend_name() == "postgresql":
        engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(
                        sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY}
                    )
        finally:
            engine.dispose()
    else:
        yield


def open_storage(
    url: str,
    heartbeat_seconds: int = 10,
    max_retries: int = 2,
    *,
    create: bool = False,
    mkdir: bool = False,
) -> RDBStorage:
    """The Optuna storage at ``url`` with a heartbeat every ``heartbeat_seconds`` (a trial silent
    for :data:`STALE_HEARTBEATS` of them is failed and requeued up to ``max_retries`` times).
    ``create``: make the SQLite file and the tables if missing (the sweep driver); otherwise the
    store must exist (workers, report), and a missing SQLite file is an error rather than
    created. A new SQLite file goes into an existing directory only: a missing one is an error
    (most likely a mistyped path to a store meant to be resumed) unless ``mkdir``."""
    path = sqlite_path(url)
    if path is not None and not create and not path.is_file():
        raise StoreError(
            f"no sweep store at {path} (from {url!r}); start the sweep with `mup2 sweep CONFIG`, "
            "or check the path"
        )
    if path is not None and path.is_file() and not _is_sqlite(path):
        raise StoreError(f"{path} (from {url!r}) is not an SQLite database; check the path")
    if path is not None and not path.parent.exists():
        if not mkdir:
            raise StoreError(
                f"no directory {path.parent} for the store {url!r}: to start a new sweep there, "
                "make it (`mup2 sweep CONFIG --mkdir`); to resume one, check the path"
            )
        path.parent.mkdir(parents=True)
    # SQLite ignores SELECT ... FOR UPDATE, so two workers could both pop one waiting trial:
    # take the database's write lock at the start of every transaction instead.
    sqlite = path is not None
    kwargs = {"connect_args": {"timeout": 120, "isolation_level": None}} if sqlite else {}
    with store_lock(url), store_errors(url), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if not create and not _has_tables(url):
            raise StoreError(
                f"store {redact(url)} holds no Optuna tables: no sweep was started there; "
                "start it with `mup2 sweep CONFIG`, or check the URL"
            )
        storage = RDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=heartbeat_seconds,
            grace_period=STALE_HEARTBEATS * heartbeat_seconds,
            heartbeat_stale_trial_callback=functools.partial(requeue, max_retries=max_retries),
        )
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        sqlalchemy.event.listen(
            storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE")
        )
        storage.engine.dispose()  # connections made before the listeners are dropped
    return storage


def _is_sqlite(path: Path) -> bool:
    """Whether ``path`` holds an SQLite database, read through SQLite itself: closing a plain
    file descriptor of it would drop this process's SQLite locks on it (POSIX locks). A file
    shorter than SQLite's 100-byte header is one only when empty."""
    size = path.stat().st_size
    if size < 100:
        return size == 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA schema_version")
        return True
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def _has_tables(url: str) -> bool:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never wait for the writer, and a commit needs no fsync of the database file.
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")
