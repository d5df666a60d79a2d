#!/usr/bin/env bash
# Reproduces the DataInf comparison in bench/RESULTS.md ("Influence attribution (2026-12-04)"):
# our DataInf (Rust) against the authors' reference code on the same exported gradients.
#
# Needs: the authors' src/influence.py (github.com/ykwon0407/DataInf, commit fe9145a, which imports tqdm) in
# $DATAINF_SRC (default /var/tmp/openledger-tools/DataInf/src), and a venv with numpy and
# pandas (torch optional: without it a numpy stand-in for torch.zeros/sum/mean is used).
#   python3 -m venv /var/tmp/openledger-tools/datainf-venv
#   /var/tmp/openledger-tools/datainf-venv/bin/pip install numpy pandas tqdm [torch]
# usage: bench/datainf/run.sh [records] [dim per layer]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
records="${1:-10000}"
dim="${2:-64}"
tools=/var/tmp/openledger-tools
src="${DATAINF_SRC:-$tools/DataInf/src}"
out="$tools/datainf-data"
test -f "$src/influence.py" || { echo "no $src/influence.py: copy it from github.com/ykwon0407/DataInf" >&2; exit 1; }
cargo bench -p openledger-attribution --bench influence -- datainf --records "$records" --dim "$dim" --out "$out"
"$tools/datainf-venv/bin/python" "$here/compare.py" "$out" "$src"
