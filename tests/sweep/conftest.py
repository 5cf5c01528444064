"""The sweep tests' PostgreSQL server (one per session, started on first use).

``python tests/sweep/conftest.py`` exits with 0 when the server's binaries are found and 1 when
not: ``make test`` asks it before installing the ``postgresql`` package."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest


def _pg_bin() -> Path | None:
    """The directory of PostgreSQL's ``initdb`` and ``pg_ctl``: Debian's newest
    ``/usr/lib/postgresql/*/bin``, else wherever ``initdb`` on PATH lives (``None``: neither)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=_version)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def _version(initdb: Path) -> tuple[int, ...]:
    """The major version in ``/usr/lib/postgresql/VERSION/bin/initdb`` (``16`` after ``9.6``)."""
    return tuple(int(x) for x in initdb.parents[1].name.split(".") if x.isdigit())


@pytest.fixture(scope="session")
def postgres() -> Any:
    """A throwaway PostgreSQL server on 127.0.0.1 (CI installs the Debian package)."""
    pg = _pg_bin()
    if pg is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: `make test` installs it (package postgresql)")
        pytest.skip("PostgreSQL is not installed (`make test` installs it as root)")
    root = Path(tempfile.mkdtemp(prefix="mup2-pg-"))  # outside pytest's root-only tmp tree
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        subprocess.run(["chown", "-R", "postgres", str(root)], check=True)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "mup2"],
                   check=True, capture_output=True)  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = f"-h 127.0.0.1 -p {port} -k {root}"
    subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-o", opts, "-w",
                    "-l", str(root / "log"), "start"], check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql+psycopg2://mup2@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(0 if _pg_bin() is not None else 1)
