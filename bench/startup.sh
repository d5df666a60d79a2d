#!/usr/bin/env bash
# Measures `openledger dev` from exec to the first 200 from /readyz, and its resident memory
# once ready. Usage: bench/startup.sh [runs]   (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
cargo build --release -q -p openledger-cli
binary=${CARGO_TARGET_DIR:-target}/release/openledger
port=18080
for run in $(seq 1 "$runs"); do
    data=$(mktemp -d)
    start=$(date +%s%N)
    "$binary" --data-dir "$data" --http-port $port --grpc-base-port 0 --ops-base-port 0 --log-level warn dev >/dev/null 2>&1 &
    pid=$!
    until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.005; done
    ready=$(date +%s%N)
    rss_kib=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
    kill -TERM $pid
    wait $pid
    echo "run $run: ready after $(( (ready - start) / 1000000 )) ms, RSS ${rss_kib} KiB, exit $?"
    rm -rf "$data"
done
