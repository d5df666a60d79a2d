#!/usr/bin/env bash
# Runs schemathesis, with every check and its stateful (link-following) phase, against the
# REST edge's own OpenAPI document, and exits non-zero on any failure.
#
#   scripts/schemathesis.sh http://127.0.0.1:8080
#
# A pinned schemathesis is installed from PyPI into a venv outside git on first use
# (${OPENLEDGER_TOOLS_DIR:-/var/tmp/openledger-tools}/schemathesis-venv); later runs reuse it.
# The budget (examples per operation, stateful steps) keeps one run within about three
# minutes on two cores; raise SCHEMATHESIS_MAX_EXAMPLES for a deeper run by hand.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 BASE_URL (e.g. http://127.0.0.1:8080)" >&2
    exit 2
fi
base_url=${1%/}
version=4.32.5
venv=${OPENLEDGER_TOOLS_DIR:-/var/tmp/openledger-tools}/schemathesis-venv
python=${PYTHON:-python3}
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-25}

if [ "$("$venv/bin/schemathesis" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1)" != "$version" ]; then
    echo "schemathesis.sh: installing schemathesis $version into $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

# One setting departs from the defaults: a schema-valid request may be refused with 412
# failed_precondition. That status answers the state of the books, never the request's shape
# (voting on a proposal that does not exist yet, parameters whose shares do not sum to 100%,
# funds a stake cannot cover), which a schema cannot promise away; 400 stays a failure.
# schemathesis keeps a cache (.schemathesis/) in its working directory: a scratch one keeps
# it out of the tree and every run independent of the last.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
config=$work/schemathesis.toml
cat > "$config" <<'TOML'
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]
TOML

# Generation is deterministic (a fixed seed, no example database), so a failure repeats.
# One worker: with two, hypothesis parses lambda sources (`ast.parse`) on two threads at once,
# which CPython 3.11's parser can fail with "SystemError: AST constructor recursion depth
# mismatch" (seen once in CI as a schemathesis Runtime Error, every test case passing).
"$venv/bin/schemathesis" --config-file "$config" run "$base_url/openapi.json" \
    --url "$base_url" \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$max_examples" \
    --seed 1 \
    --generation-database none \
    --request-timeout 10 \
    --workers 1 \
    --no-color
