#!/usr/bin/env bash
# llama.cpp decode-speed baseline: bench/llamacpp/run.sh [extra decode.py args, e.g. --repeats 9]
# Reuses the llama-cpp-python venv built by crates/ml/reference/run.sh (run that once if the
# venv is missing; it builds 0.3.36 for x86-64-v3). Pins 1 thread to CPU 1, 2 threads to CPUs 0,1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${OPENLEDGER_TOOLS_DIR:-/var/tmp/openledger-tools}/llamacpp-venv
if [ "$("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null)" != 0.3.36 ]; then
    echo "llama-cpp-python 0.3.36 not found in $venv; run crates/ml/reference/run.sh first" >&2
    exit 1
fi
model=$("$repo/scripts/fetch-models.sh" smollm2)
grep -m1 'model name' /proc/cpuinfo >&2
taskset -c 1   "$venv/bin/python" "$here/decode.py" --model "$model" --threads 1 "$@"
taskset -c 0,1 "$venv/bin/python" "$here/decode.py" --model "$model" --threads 2 "$@"
