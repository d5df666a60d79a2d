#!/usr/bin/env bash
# The OpenLoRA engine next to llama.cpp's own benchmarks, in alternating rounds on the same
# machine: single-stream decode on 1 and 2 threads (llama-bench tg128), prefill of 512 tokens
# (llama-bench pp512), batch-16 decode (llama-batched-bench, 16 sequences of an 8-token prompt
# and 32 new tokens; ours: 16 sequences of a 5-token prompt, 32 steps) and adapter cold load.
#
# Usage: bench/llamacpp/engine.sh [ROUNDS]   (default 2)
# Env: OPENLEDGER_CPU_KERNELS=avx2|portable runs our engine on a lower kernel level;
#      OPENLEDGER_BENCH_MODEL=<gguf> another model for both sides; PRIO="chrt -r 1" runs both
#      at a real-time priority when other work shares the machine.
# llama.cpp is built natively from llama-cpp-python's vendored sources by
# ../shared/peers/build-llama-cpp.sh (the way its users build it: GGML_NATIVE=ON); its
# system_info line, printed first, names the kernels it uses.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
rounds=${1:-2}
peer_script=${LLAMA_CPP_BUILD:-$repo/../shared/peers/build-llama-cpp.sh}
bin=$(bash "$peer_script")
model=${OPENLEDGER_BENCH_MODEL:-$("$repo/scripts/fetch-models.sh" smollm2)}
prio=${PRIO:-}
cd "$repo"
# The build cache CI and scripts/test.sh use, not a fresh ./target (a cold build of ~10 minutes).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/openledger-target}
# Built once, then run as the binary itself: each measure then starts no cargo (which would
# wait for any other build holding the target directory's lock).
decode=$(cargo bench -q -p openledger-ml --bench decode --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "decode" and m.get("executable"):
        print(m["executable"])')
[ -x "$decode" ] || { echo "engine.sh: the decode bench did not build" >&2; exit 1; }
ours() { OPENLEDGER_BENCH_MODEL=$model $prio taskset -c "$1" "$decode" --bench "${@:2}"; }

grep -m1 'model name' /proc/cpuinfo
grep -o -E 'avx512[a-z_]*|avx2|fma|f16c' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
"$bin/llama-bench" -m "$model" -p 0 -n 1 -r 1 -t 1 -o json 2>/dev/null | grep -m1 -o '"cpu_info"[^,]*' || true
for round in $(seq "$rounds"); do
    echo "=== round $round"
    ours 1 single --threads 1
    $prio taskset -c 1 "$bin/llama-bench" -m "$model" -p 0 -n 128 -r 5 -t 1
    ours 0,1 single --threads 2
    $prio taskset -c 0,1 "$bin/llama-bench" -m "$model" -p 0 -n 128 -r 5 -t 2
    ours 1 prefill --threads 1
    ours 0,1 prefill --threads 2
    $prio taskset -c 1 "$bin/llama-bench" -m "$model" -p 512 -n 0 -r 3 -t 1
    $prio taskset -c 0,1 "$bin/llama-bench" -m "$model" -p 512 -n 0 -r 3 -t 2
    ours 0,1 batch --threads 2
    ours 0,1 deltas --threads 2
    $prio taskset -c 0,1 "$bin/llama-batched-bench" -m "$model" -c 1024 -b 512 -ub 512 \
        -npp 8 -ntg 32 -npl 16 -t 2 2>&1 | grep -E '^\|'
    ours 0,1 load --threads 2
done
