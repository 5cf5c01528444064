#!/usr/bin/env bash
# `pip install .` into an environment that already has another torch leaves that torch alone.
# A fresh venv gets a stand-in torch distribution (metadata only: a CUDA build's version string,
# no files), then pip resolves `.` with --dry-run and must plan no torch install.
# Usage: .ci/check_torch_untouched.sh [TORCH_VERSION]   (default 2.7.1+cu126)
set -euo pipefail
version="${1:-2.7.1+cu126}"
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
site="$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
info="$site/torch-$version.dist-info"
mkdir -p "$info"
printf 'Metadata-Version: 2.1\nName: torch\nVersion: %s\n' "$version" >"$info/METADATA"
printf 'pip\n' >"$info/INSTALLER"
printf 'torch-%s.dist-info/METADATA,,\n' "$version" >"$info/RECORD"
"$tmp/venv/bin/pip" install -q --dry-run --report "$tmp/report.json" "$root"
"$tmp/venv/bin/python" - "$tmp/report.json" "$version" <<'PY'
import json, sys
report, version = json.load(open(sys.argv[1])), sys.argv[2]
planned = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
if "torch" in planned:
    sys.exit(f"FAIL: pip would replace torch {version} with {planned['torch']}")
print(f"ok: torch {version} kept; pip would install {len(planned)} packages, torch not among them")
PY
