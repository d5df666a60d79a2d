#!/usr/bin/env bash
# Memory bandwidth (read / copy / triad, GB/s) for 1 thread (CPU 1) and 2 threads (CPUs 0,1).
# Usage: bench/membw/run.sh [MiB per array, default 1024]. Also runs a 96 MiB pass: the
# SmolLM2 Q4_1 GGUF is 94 MiB, which may fit this VM's (host-shared) 480 MiB L3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v cc >/dev/null || { echo "no cc: apt-get install -y gcc" >&2; exit 1; }
bin=$(mktemp -d)/stream
# OpenMP if the compiler has it; otherwise -fopenmp-simd keeps the reduction vectorized.
cc -O3 -march=x86-64-v3 -fopenmp "$here/stream.c" -o "$bin" 2>/dev/null ||
    cc -O3 -march=x86-64-v3 -fopenmp-simd "$here/stream.c" -o "$bin"
grep -m1 'model name' /proc/cpuinfo >&2
export OMP_PROC_BIND=true
for mib in "${1:-1024}" 96; do
    OMP_NUM_THREADS=1 taskset -c 1   "$bin" "$mib"
    OMP_NUM_THREADS=2 taskset -c 0,1 "$bin" "$mib"
done
rm -rf "$(dirname "$bin")"
