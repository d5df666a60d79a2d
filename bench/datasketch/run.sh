#!/usr/bin/env bash
# The dedup step of the Rust near-duplicate index next to Python datasketch MinHashLSH on the
# same generated corpus, each pinned to one core.
# Usage: bench/datasketch/run.sh [RECORDS] [compare.py options, e.g. --sweep]
# The venv lives outside the repository (DATASKETCH_VENV), the corpus is written to CORPUS, and
# both run on core BENCH_CORE and report the fastest of REPEAT passes; the defaults are below.
set -euo pipefail
cd "$(dirname "$0")/../.."
records=50000
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    records=$1
    shift
fi
venv=${DATASKETCH_VENV:-/var/tmp/openledger-tools/datasketch-venv}
corpus=${CORPUS:-/var/tmp/openledger-tools/dedup-corpus.jsonl}
core=${BENCH_CORE:-1}
repeat=${REPEAT:-3}

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q datasketch==2.0.0 numpy==2.4.6 xxhash==4.1.0
mkdir -p "$(dirname "$corpus")"

cargo bench -q -p openledger-screen --bench dedup --no-run
taskset -c "$core" cargo bench -q -p openledger-screen --bench dedup -- "$records" --repeat "$repeat" --write-corpus "$corpus"
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c "$core" "$venv/bin/python" bench/datasketch/compare.py "$corpus" --repeat "$repeat" "$@"
