#!/usr/bin/env bash
# Runs e2e/openai/client_test.py (or the e2e/openai script named as the first argument, e.g.
# finetune_test.py), the official OpenAI Python client against a running
# `openledger dev` (see that file for the environment it reads). A pinned `openai` is installed
# from PyPI into a venv outside git on first use
# (${OPENLEDGER_TOOLS_DIR:-/var/tmp/openledger-tools}/openai-venv); later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.63.0
venv=${OPENLEDGER_TOOLS_DIR:-/var/tmp/openledger-tools}/openai-venv
python=${PYTHON:-python3}
if [ "$("$venv/bin/python" -c 'import openai; print(openai.__version__)' 2>/dev/null)" != "$version" ]; then
    echo "openai-client.sh: installing openai $version into $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "openai==$version"
fi
exec "$venv/bin/python" "e2e/openai/${1:-client_test.py}"
