#!/usr/bin/env bash
# One GPU window (issue 26), as the commands sent through the device tool (README.md here):
#
#   experiments/gpu/window.sh smoke [BUDGET] [WIDTHS]
#       the kit's smoke sweep (smoke.toml, bundles), then benchmarks/bench_batched.py on CUDA:
#       trials/hour batched against one at a time, MFU and peak memory at each width
#   experiments/gpu/window.sh study CONFIG:BUDGET[:STORE[:DRAIN]] ... [-- RUN_PY_FLAGS]
#       each config in turn through run.py (bundles sized from free memory), its store copied
#       to $OUT as soon as it is written; DRAIN: run.py's --drain (seconds before its deadline
#       at which the sweep finishes what runs and starts nothing new; about a bundle's time).
#       A STORE that is not there skips its config (no new store in its place): several configs
#       of one store are chained by naming the store the previous one wrote,
#       /tmp/mup2-window/<previous config stem>/<store stem>.db.gz (experiments/depth/README.md)
#
# Everything else (each run's log and CSV, the benchmark's table) goes into $OUT/logs.tgz at
# the end, so at most (number of stores + 2) files come back, whatever stops the command.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the output folder}"
work=${MUP2_WINDOW_WORK:-/tmp/mup2-window}  # each config writes its store to $work/<config stem>/
mkdir -p "$work"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mode=${1:?smoke or study}
shift
pack() { tar czf "$OUT/logs.tgz" -C "$work" . 2>/dev/null; }
trap pack EXIT

case $mode in
smoke)
    python3 experiments/gpu/run.py experiments/gpu/smoke.toml "${1:-100}" --batch auto \
        --out "$work/smoke" || exit 1
    PYTHONPATH="src:/tmp/site" python3 benchmarks/bench_batched.py --device cuda \
        --precision bf16 --widths "${2:-64,1024,4096,8192}" --bundle auto --epochs 1 \
        --train-size 4096 --serial 1 --rounds 1 --threads 8 \
        --json "$work/bench.json" 2>&1 | tee "$work/bench.txt"
    ;;
study)
    specs=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do specs+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    for spec in "${specs[@]}"; do
        IFS=: read -r config budget store drain <<<"$spec"
        stem=$(basename "$config" .toml)
        if [ -n "${store:-}" ] && [ ! -f "$store" ]; then  # never a new store in its place
            echo "error: no store at $store: $spec skipped" >&2
            continue
        fi
        flags=(--batch auto --out "$work/$stem" "$@")
        [ -n "${store:-}" ] && flags+=(--store "$store")
        [ -n "${drain:-}" ] && flags+=(--drain "$drain")
        python3 experiments/gpu/run.py "$config" "$budget" "${flags[@]}"
        cp "$work/$stem"/*.db.gz "$OUT/" 2>/dev/null
        tail -n 5 "$work/$stem"/*.log
    done
    ;;
*)
    echo "usage: $0 smoke [BUDGET] [WIDTHS] | study CONFIG:BUDGET[:STORE[:DRAIN]] ... [-- FLAGS]" >&2
    exit 2
    ;;
esac
