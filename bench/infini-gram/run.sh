#!/usr/bin/env bash
# Span index vs infini-gram in one run: installs the infini-gram PyPI package into a venv outside
# the repository (once), then runs the Rust bench, which builds our index, writes the same token
# ids in infini-gram's own layout and calls bench.py on them. Extra arguments go to the bench
# (--max-bytes N, --queries N, --shard-tokens N, --out DIR).
set -euo pipefail
VENV=/var/tmp/openledger-tools/infini-gram-venv
if ! "$VENV/bin/python" -c 'import infini_gram' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'infini-gram==2.6.0' numpy
fi
cd "$(dirname "$0")/../.."
cargo bench -p openledger-attribution --bench span -- "$@"
