#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into <repo>/.whl/ (ignored; carried with
# `carry = [".whl", ".gpudata"]`). The GPU machine has Python 3.12 with torch, numpy, typer,
# tqdm, pyyaml, packaging, markupsafe and matplotlib, but no optuna, sqlalchemy, alembic or
# pydantic. The pins are the versions this project's own installs test (`.venv/bin/pip freeze`);
# typing-extensions is carried too because pydantic 2.14 needs >= 4.16 and the GPU machine's
# version is not known.
#
#     experiments/gpu/fetch_wheels.sh            # about 8.4 MB, from PyPI (needs the network)
#
# Each wheel's requirements (Requires-Dist, extras skipped, markers for Python 3.12 on Linux) are
# then checked: every one must be carried or be on the GPU machine's list (PRESENT below, from
# the device notes' "Python packages already there").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$ROOT/.whl"
PY="${PYTHON:-python3}"

PINS=(
  optuna==5.1.0
  sqlalchemy==2.1.9
  alembic==1.20.1
  mako==1.4.3
  colorlog==6.12.0
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
)
# On the GPU machine already (the requirements of the wheels above that are not carried).
PRESENT="numpy packaging pyyaml tqdm markupsafe colorama greenlet tomli"

# Ignore the folder in this checkout (worktrees included) without touching tracked files.
EXCLUDE="$(git -C "$ROOT" rev-parse --git-path info/exclude)"
case "$EXCLUDE" in /*) ;; *) EXCLUDE="$ROOT/$EXCLUDE" ;; esac
mkdir -p "$(dirname "$EXCLUDE")"
grep -qxF '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >>"$EXCLUDE"

mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two stop the whole install there
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform any \
  -d "$DEST" "${PINS[@]}"

# Check the requirements of every wheel (a small stdlib script: no packaging needed).
"$PY" - "$DEST" "$PRESENT" <<'PYEOF'
import re
import sys
import zipfile
from pathlib import Path

dest, present = Path(sys.argv[1]), set(sys.argv[2].split())
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
wheels = sorted(dest.glob("*.whl"))
carried = {norm(w.name.split("-")[0]) for w in wheels}
missing = []
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req, _, marker = line.removeprefix("Requires-Dist:").strip().partition(";")
        if "extra" in marker:
            continue
        if 'python_version < "3.' in marker and "3.12" not in marker:
            continue  # e.g. tomli; python_version < "3.11"
        if 'sys_platform == "win32"' in marker:
            continue
        name = norm(re.split(r"[ <>=!~\[(]", req.strip(), maxsplit=1)[0])
        if name not in carried and name not in present:
            missing.append(f"{w.name}: {line}")
if missing:
    sys.exit("requirements neither carried nor on the GPU machine:\n  " + "\n  ".join(missing))
total = sum(w.stat().st_size for w in wheels)
print(f"{len(wheels)} wheels in {dest}, {total / 2**20:.1f} MiB; every requirement carried or there")
PYEOF

# Warn when a pin differs from what this checkout's virtualenv runs the tests with.
if [ -x "$ROOT/.venv/bin/pip" ]; then
  frozen="$("$ROOT/.venv/bin/pip" freeze 2>/dev/null | tr '[:upper:]_' '[:lower:]-')"
  for pin in "${PINS[@]}"; do
    name="${pin%%==*}"
    have="$(grep -E "^${name}==" <<<"$frozen" || true)"
    if [ -n "$have" ] && [ "$have" != "$pin" ]; then
      echo "note: .venv has $have, the GPU wheels are $pin" >&2
    fi
  done
fi
