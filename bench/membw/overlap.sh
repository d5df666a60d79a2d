#!/usr/bin/env bash
# Whether reading adapter bytes can hide behind compute-bound work on this machine (overlap.c):
# per layer-sized chunk (KiB, both threads together), ms per 30-layer step for the compute alone,
# the read alone, one after the other, and the read prefetched through the compute.
# Usage: bench/membw/overlap.sh [compute iterations per layer, default 50000]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v cc >/dev/null || { echo "no cc: apt-get install -y gcc" >&2; exit 1; }
bin=$(mktemp -d)/overlap
cc -O3 -march=x86-64-v3 -fopenmp "$here/overlap.c" -o "$bin"
grep -m1 'model name' /proc/cpuinfo >&2
export OMP_PROC_BIND=true OMP_NUM_THREADS=2
for kib in 2048 1024 512 256; do
    taskset -c 0,1 "$bin" "${1:-50000}" "$kib"
done
rm -rf "$(dirname "$bin")"
