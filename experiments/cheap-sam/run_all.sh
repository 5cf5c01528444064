#!/usr/bin/env bash
# Run (or resume) every variant's study in turn; each commits nothing itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
for c in msam rwp every-5 late-0.2 looksam-5-alpha0.2 looksam-5; do
  ${MUP2:-.venv/bin/mup2} sweep "experiments/cheap-sam/$c.toml" --workers 2 --no-report "$@" || exit $?
done
