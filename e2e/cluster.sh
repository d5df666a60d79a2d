#!/usr/bin/env bash
# Opt-in test against a real Kubernetes cluster (CI has none and skips it): installs throwaway
# PostgreSQL, NATS JetStream and MinIO in <namespace>-backends, `helm install`s the chart into
# <namespace> with their Secrets, waits for every rollout, then applies each custom resource of
# charts/openledger/examples/ (with the image under test) and checks its outcome:
#   LoraServer     -> its Deployment (made by the operator) becomes Available
#   Datanet        -> its Ready condition turns True (created through datanet-ingest)
#   LoraJob        -> a batch Job owned by it appears
#   AttributionJob -> an Indexed batch Job owned by it appears
# and that the API server refuses examples/invalid/ and a LoraServer breaking a CEL rule. Then
# deletes the resources (while the operator runs, for their finalizers), `helm uninstall`s and
# deletes both namespaces.
#
#   KUBECONFIG=~/.kube/config OPENLEDGER_IMAGE=registry.example.com/openledger/openledger:0.1.0 e2e/cluster.sh
#
# OPENLEDGER_IMAGE must be pullable by the cluster (built from the Dockerfile; not built on the
# development machines). Optional: OPENLEDGER_E2E_NAMESPACE (default openledger-e2e),
# OPENLEDGER_E2E_BASE_MODEL (default hf://HuggingFaceTB/SmolLM2-135M-Instruct: the engine
# replicas download it, so the cluster needs internet), OPENLEDGER_E2E_TIMEOUT (default 600s),
# OPENLEDGER_E2E_KEEP=1 (leave everything installed, to look at a failure).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${KUBECONFIG:-}" ]; then
    echo "e2e/cluster.sh: skipped: KUBECONFIG is not set (this test installs the chart into a real cluster)"
    exit 0
fi
if [ -z "${OPENLEDGER_IMAGE:-}" ] || [[ "$OPENLEDGER_IMAGE" != *:* ]]; then
    echo "error: set OPENLEDGER_IMAGE to the image under test, REPOSITORY:TAG, pullable by the cluster" >&2
    exit 2
fi

tools=${OPENLEDGER_TOOLS:-/var/tmp/openledger-tools}
if [ ! -x "$tools/kubectl-v34/helm" ] || [ ! -x "$tools/chart-venv/bin/python" ]; then
    scripts/check-chart.sh >/dev/null   # installs helm, kubectl and the chart venv
fi
helm=$tools/kubectl-v34/helm
kubectl=$tools/kubectl-v34/kubectl
python=$tools/chart-venv/bin/python
namespace=${OPENLEDGER_E2E_NAMESPACE:-openledger-e2e}
backends=$namespace-backends
timeout=${OPENLEDGER_E2E_TIMEOUT:-600}
release=openledger   # its objects are named openledger-*, as the examples expect
chart=charts/openledger
work=$(mktemp -d -t openledger-cluster.XXXXXX)
failures=0

k() { "$kubectl" --namespace "$namespace" "$@"; }
pass() { echo "    ok   $*"; }
fail() { echo "    FAIL $*"; failures=$((failures + 1)); }
# Waits up to $timeout seconds for a command to succeed.
eventually() {
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 5
    done
}

cleanup() {
    if [ "${OPENLEDGER_E2E_KEEP:-}" = 1 ]; then
        echo "==> OPENLEDGER_E2E_KEEP=1: leaving $namespace and $backends installed"
        return
    fi
    echo "==> cleaning up"
    k delete --ignore-not-found --wait --timeout=120s -f "$work/examples.yaml" >/dev/null 2>&1 || true
    "$helm" uninstall "$release" --namespace "$namespace" --wait --timeout 5m >/dev/null 2>&1 || true
    "$kubectl" delete namespace "$namespace" "$backends" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "==> cluster: $("$kubectl" config current-context), server $("$kubectl" version -o json | "$python" -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
for ns in "$namespace" "$backends"; do
    "$kubectl" create namespace "$ns" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
done

echo "==> throwaway backends in $backends: PostgreSQL, NATS JetStream, MinIO"
"$kubectl" --namespace "$backends" apply -f - >/dev/null <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: postgres}
spec:
  selector: {matchLabels: {app: postgres}}
  template:
    metadata: {labels: {app: postgres}}
    spec:
      containers:
        - name: postgres
          image: postgres:17-alpine
          env:
            - {name: POSTGRES_USER, value: openledger}
            - {name: POSTGRES_PASSWORD, value: openledger}
            - {name: POSTGRES_DB, value: openledger}
          ports: [{containerPort: 5432}]
          readinessProbe: {exec: {command: [pg_isready, -U, openledger]}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: postgres}
spec: {selector: {app: postgres}, ports: [{port: 5432}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: nats}
spec:
  selector: {matchLabels: {app: nats}}
  template:
    metadata: {labels: {app: nats}}
    spec:
      containers:
        - name: nats
          image: nats:2.11-alpine
          args: ["--jetstream", "--store_dir", "/data"]
          ports: [{containerPort: 4222}]
---
apiVersion: v1
kind: Service
metadata: {name: nats}
spec: {selector: {app: nats}, ports: [{port: 4222}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: minio}
spec:
  selector: {matchLabels: {app: minio}}
  template:
    metadata: {labels: {app: minio}}
    spec:
      containers:
        - name: minio
          image: minio/minio:latest
          args: ["server", "/data"]
          env:
            - {name: MINIO_ROOT_USER, value: openledger}
            - {name: MINIO_ROOT_PASSWORD, value: openledger-secret}
          ports: [{containerPort: 9000}]
          readinessProbe: {httpGet: {path: /minio/health/ready, port: 9000}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: minio}
spec: {selector: {app: minio}, ports: [{port: 9000}]}
YAML
for deployment in postgres nats minio; do
    "$kubectl" --namespace "$backends" rollout status "deployment/$deployment" --timeout="${timeout}s" >/dev/null
done
"$kubectl" --namespace "$backends" delete job make-bucket --ignore-not-found >/dev/null
"$kubectl" --namespace "$backends" create job make-bucket --image=minio/mc:latest -- sh -c \
    'mc alias set local http://minio:9000 openledger openledger-secret && mc mb --ignore-existing local/openledger-objects' >/dev/null
"$kubectl" --namespace "$backends" wait --for=condition=Complete job/make-bucket --timeout="${timeout}s" >/dev/null
pass "backends ready"

echo "==> Secrets in $namespace: the database URL, the object store's keys, a Datanet owner key"
k create secret generic openledger-database --dry-run=client -o yaml \
    --from-literal=DATABASE_URL="postgres://openledger:openledger@postgres.$backends.svc:5432/openledger" | k apply -f - >/dev/null
k create secret generic openledger-object-store --dry-run=client -o yaml \
    --from-literal=AWS_ACCESS_KEY_ID=openledger --from-literal=AWS_SECRET_ACCESS_KEY=openledger-secret | k apply -f - >/dev/null
k create secret generic datanet-owner-key --dry-run=client -o yaml \
    --from-literal=ed25519="$("$python" -c 'import secrets; print(secrets.token_hex(32))')" | k apply -f - >/dev/null

echo "==> helm install $release $chart (image $OPENLEDGER_IMAGE)"
cat > "$work/values.yaml" <<YAML
image:
  repository: ${OPENLEDGER_IMAGE%:*}
  tag: "${OPENLEDGER_IMAGE##*:}"
  pullPolicy: IfNotPresent
nats:
  url: nats://nats.$backends.svc:4222
objectStore:
  url: s3://openledger-objects
  endpoint: http://minio.$backends.svc:9000
  allowHttp: true
engine:
  baseModel: ${OPENLEDGER_E2E_BASE_MODEL:-hf://HuggingFaceTB/SmolLM2-135M-Instruct}
  resources:
    requests: {cpu: 250m, memory: 1Gi}
    limits: {memory: 4Gi}
services:
  inference-gateway:
    replicas: 1
YAML
if "$helm" install "$release" "$chart" --namespace "$namespace" -f "$work/values.yaml" --wait --timeout "${timeout}s"; then
    pass "helm install (migrations hook Job and every rollout)"
else
    fail "helm install"
    k get pods -o wide || true
    exit 1
fi
for deployment in $(k get deployments -l "app.kubernetes.io/instance=$release" -o name); do
    if k rollout status "$deployment" --timeout="${timeout}s" >/dev/null; then pass "$deployment rolled out"; else fail "$deployment did not roll out"; fi
done
engine=$release-engine
if eventually k rollout status "deployment/$engine" --timeout=10s; then
    pass "the chart's LoraServer $engine: its Deployment is available"
else
    fail "the chart's LoraServer $engine: no available Deployment"
fi

echo "==> the example custom resources (image $OPENLEDGER_IMAGE, engine scaled down to one replica)"
"$python" - "$OPENLEDGER_IMAGE" "$chart"/examples/*.yaml > "$work/examples.yaml" <<'PY'
import sys, yaml
image, paths = sys.argv[1], sys.argv[2:]
documents = []
for path in paths:
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        if "image" in doc["spec"]:
            doc["spec"]["image"] = image
        if doc["kind"] == "LoraServer":
            # One small replica, no adapters to preload (the cluster has none registered).
            doc["spec"].update(replicas=1, preloadAdapters=[], resources={"requests": {"cpu": "250m", "memory": "1Gi"}})
            doc["spec"].pop("maxReplicas", None)
        documents.append(doc)
yaml.safe_dump_all(documents, sys.stdout, sort_keys=False)
PY
k apply -f "$work/examples.yaml"

# The name of the batch Job owned by the resource kind/name, if any.
owned_job() {
    k get jobs -o json | "$python" -c '
import json, sys
kind, name = sys.argv[1], sys.argv[2]
for job in json.load(sys.stdin)["items"]:
    if any(o["kind"] == kind and o["name"] == name for o in job["metadata"].get("ownerReferences", [])):
        print(job["metadata"]["name"]); sys.exit(0)
sys.exit(1)' "$1" "$2"
}
while read -r kind name; do
    case $kind in
        LoraServer)
            if eventually k rollout status "deployment/$name" --timeout=10s; then pass "LoraServer/$name: Deployment $name available"
            else fail "LoraServer/$name: Deployment $name not available"; k describe "loraserver/$name" | tail -20; fi ;;
        Datanet)
            if k wait "datanet/$name" --for=condition=Ready --timeout="${timeout}s" >/dev/null; then pass "Datanet/$name: Ready"
            else fail "Datanet/$name: not Ready"; k get "datanet/$name" -o yaml | sed -n '/^status:/,$p'; fi ;;
        LoraJob | AttributionJob)
            if eventually owned_job "$kind" "$name"; then pass "$kind/$name: Job $(owned_job "$kind" "$name") created"
            else fail "$kind/$name: no Job created"; k describe "$(echo "$kind" | tr '[:upper:]' '[:lower:]')/$name" | tail -20; fi ;;
    esac
done < <("$python" -c '
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    print(doc["kind"], doc["metadata"]["name"])' "$work/examples.yaml")

echo "==> the API server refuses charts/openledger/examples/invalid/ and a CEL rule's breach"
cat > "$work/cel.yaml" <<'YAML'
apiVersion: openledger.io/v1alpha1
kind: LoraServer
metadata: {name: shrinking}
spec: {baseModel: hf://HuggingFaceTB/SmolLM2-135M-Instruct, image: example/openledger:0, replicas: 4, maxReplicas: 2}
YAML
for file in "$chart"/examples/invalid/*.yaml "$work/cel.yaml"; do
    if k apply --dry-run=server --validate=strict -f "$file" >/dev/null 2>"$work/refusal"; then
        fail "$(basename "$file") was accepted"
    else
        pass "$(basename "$file") refused: $(tail -1 "$work/refusal" | cut -c1-160)"
    fi
done

if [ "$failures" -gt 0 ]; then
    echo "==> $failures checks failed"
    exit 1
fi
echo "==> the cluster test passed"
