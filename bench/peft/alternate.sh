#!/usr/bin/env bash
# Training step time of this trainer and of PyTorch + PEFT in alternating rounds, for machines
# whose speed drifts between runs (shared vCPUs): each round runs both on the same CPUs with the
# same thread count, ours first in odd rounds and PyTorch first in even ones, so a slow spell
# hits both sides of a round alike.
#
#   bench/peft/alternate.sh [--threads 2] [--cpus 0,1] [--rounds 3] [--steps 6]
#
# Ours: `cargo bench -p openledger-ml --bench train -- step` (the first two steps untimed);
# PyTorch: train_step.py with --warmup 2 (venv and model as in run.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
threads=2 cpus=0,1 rounds=3 steps=6
while [ $# -gt 0 ]; do
    case $1 in
        --threads) threads=$2 ;;
        --cpus) cpus=$2 ;;
        --rounds) rounds=$2 ;;
        --steps) steps=$2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
model=${MODEL:-$("$repo/scripts/fetch-models.sh" smollm2)}
(cd "$repo" && cargo bench -q -p openledger-ml --bench train --no-run 2>/dev/null)
grep -m1 'model name' /proc/cpuinfo
ours() {
    (cd "$repo" && taskset -c "$cpus" cargo bench -q -p openledger-ml --bench train -- step \
        --threads "$threads" --steps "$steps" 2>/dev/null | grep -E 'median|RSS')
}
pytorch() {
    "$here/run.sh" step-on "$cpus" --model "$model" --threads "$threads" --steps $((steps - 2)) --warmup 2 |
        python3 -c 'import json, sys
d = json.loads(sys.stdin.read().strip().splitlines()[-1]); s = d["step_seconds"]
print("pytorch+peft: median %.3f s (min %.3f, max %.3f), peak RSS %.0f MiB"
      % (s["median"], s["min"], s["max"], d["peak_rss_mib"]))'
}
for round in $(seq "$rounds"); do
    echo "round $round ($(date +%T)), $threads thread(s) on CPUs $cpus"
    # Odd rounds run ours first, even rounds PyTorch first, so a drift over time favours neither.
    if [ $((round % 2)) -eq 1 ]; then ours; pytorch; else pytorch; ours; fi
done
