#!/usr/bin/env bash
# The demo with dropouts, before and after issue 25, next to the same demo without dropouts.
#
#   benchmarks/demo_dropouts.sh BEFORE_CHECKOUT AFTER_CHECKOUT [PAIRS] [OUT_DIR]
#
# Each checkout must have its own ready .venv (./run setup). Runs, in ALTERNATING pairs (the
# machine's speed drifts):  before --dropout 0.3 | after --dropout 0.3   (PAIRS times), then
# before without dropouts | after without dropouts (PAIRS times). Every run is
#   sealagg-demo --clients 10 --rounds 5 --dp [--dropout 0.3]
# timed as a whole process with /usr/bin/time; its report (rounds table, "wall time") is kept
# in OUT_DIR. One line per run: label, process wall seconds, the demo's own per-round seconds,
# and the load average after the run (the machine may be shared: read the figures with it).
set -euo pipefail

before=${1:?usage: demo_dropouts.sh BEFORE_CHECKOUT AFTER_CHECKOUT [PAIRS] [OUT_DIR]}
after=${2:?usage: demo_dropouts.sh BEFORE_CHECKOUT AFTER_CHECKOUT [PAIRS] [OUT_DIR]}
pairs=${3:-2}
out=${4:-$(mktemp -d)}
mkdir -p "$out"
export PYTHONSAFEPATH=1 # as ./run does: the repository root never shadows installed packages

demo() { # LABEL CHECKOUT [DROPOUT...]
    local label=$1 checkout=$2 log
    shift 2
    log="$out/$label.$(date +%s).txt"
    /usr/bin/time -f "process wall: %e s" -o "$log.time" \
        "$checkout/.venv/bin/sealagg-demo" --clients 10 --rounds 5 --dp "$@" >"$log" 2>&1 || true
    # the demo's rounds table: "│ 1 │ published │ ... │ 1.1 │" -> the last column
    local rounds
    rounds=$(grep -E '^│ +[1-9][0-9]* │ (published|aborted|rejected)' "$log" |
        awk -F'│' '{gsub(/ /, "", $(NF-1)); printf "%s ", $(NF-1)}')
    printf '%-18s %s | demo: %s | round seconds: %s| load %s\n' "$label" \
        "$(cat "$log.time")" "$(grep -o 'wall time: .*' "$log" || echo '?')" "$rounds" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
}

for _ in $(seq "$pairs"); do
    demo before-dropout "$before" --dropout 0.3
    demo after-dropout "$after" --dropout 0.3
done
for _ in $(seq "$pairs"); do
    demo before-none "$before"
    demo after-none "$after"
done
echo "logs: $out"
