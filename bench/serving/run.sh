#!/usr/bin/env bash
# Serving benchmark: OpenLoRA (REST edge and engine driven directly) vs llama.cpp's llama-server,
# 16 concurrent streams for 60 s on SmolLM2-135M-Instruct Q4_1, base model and 100 adapters.
#
#   bench/serving/run.sh setup                 venv, llama-server, model, 100 adapters (idempotent)
#   bench/serving/run.sh llama  base|adapters  llama-server + drive.py
#   bench/serving/run.sh ours   base|adapters  `openledger dev` (release) + drive.py
#   bench/serving/run.sh direct base|adapters  cargo bench -p openledger-ml --bench serving
#   bench/serving/run.sh all                   every run above, one after another
#
# Runs are sequential, never two servers at once. Each prints one JSON line, also appended to
# $WORK/results.jsonl. Environment: THREADS (2), CONCURRENCY (16), DURATION (60), WARMUP (10),
# MAX_TOKENS (128), ADAPTERS (100), WORK (/var/tmp/openledger-serving), CARGO_TARGET_DIR,
# OPENLEDGER_BIN (default $CARGO_TARGET_DIR/release/openledger), NICE (0: the niceness of the
# servers, the driver and the direct bench alike).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tools=${OPENLEDGER_TOOLS_DIR:-/var/tmp/openledger-tools}
venv=$tools/serving-venv
py=$venv/bin/python
work=${WORK:-/var/tmp/openledger-serving}
threads=${THREADS:-2}
concurrency=${CONCURRENCY:-16}
duration=${DURATION:-60}
warmup=${WARMUP:-10}
max_tokens=${MAX_TOKENS:-128}
n_adapters=${ADAPTERS:-100}
# PRIO="chrt -r 1" runs them round-robin real-time instead (what the record used on a machine
# shared with builds: CFS time-slicing with a dozen compilers stalls llama.cpp's spinning
# OpenMP barriers for whole slices).
read -r -a prio <<<"${PRIO:-nice -n ${NICE:-0}}"
llama_port=${LLAMA_PORT:-8091}
ours_port=${OURS_PORT:-8092}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/openledger-target} # the build cache CI uses
bin=${OPENLEDGER_BIN:-$CARGO_TARGET_DIR/release/openledger}
# The client and the adapter writer, pinned.
requirements="openai==3.51.0 numpy==2.4.6 safetensors==0.8.0 gguf==0.19.0 blake3==1.0.11 cryptography==50.0.2"

setup() {
    if ! "$py" -c 'import openai, gguf, safetensors, numpy, blake3, cryptography; assert openai.__version__ == "3.51.0"' 2>/dev/null; then
        python3 -m venv "$venv"
        # shellcheck disable=SC2086
        "$venv/bin/pip" install -q $requirements
    fi
    # llama.cpp built the way its users build it (cmake, native flags), from the sources vendored
    # in llama-cpp-python 0.3.36; PEERS_DIR is the shared/ folder beside the checkout.
    "${PEERS_DIR:-$repo/../shared/peers}/build-llama-cpp.sh" >/dev/null
    model=$("$repo/scripts/fetch-models.sh" smollm2)
    "$py" "$here/make_adapters.py" --base "$model" --out "$work/adapters" --count "$n_adapters"
}

paths() {
    model=$("$repo/scripts/fetch-models.sh" smollm2)
    llama_bin=${LLAMA_BIN:-/var/tmp/llama-cpp-peer/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin}
}

wait_http() { # url seconds
    for _ in $(seq 1 $(($2 * 10))); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "no answer from $1 after $2 s" >&2
    return 1
}

drive() { # label, then drive.py args
    local label=$1; shift
    "${prio[@]}" "$py" "$here/drive.py" --label "$label" --concurrency "$concurrency" --duration "$duration" \
        --warmup "$warmup" --max-tokens "$max_tokens" "$@" | tee -a "$work/results.jsonl"
}

stop() { # pid
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

llama() { # base|adapters
    paths
    local args=(-m "$model" -t "$threads" -tb "$threads" -np "$concurrency" -c $((concurrency * 512))
        --cont-batching --host 127.0.0.1 --port "$llama_port" --no-webui)
    local extra=()
    if [ "$1" = adapters ]; then
        local list
        list=$(seq 0 $((n_adapters - 1)) | sed "s|.*|$work/adapters/gguf/a&.gguf|" | paste -sd,)
        args+=(--lora "$list" --lora-init-without-apply)
        extra=(--adapters "$n_adapters" --adapter-style llama)
    fi
    mkdir -p "$work"
    echo "llama-server ${args[*]}" | sed "s|$work/adapters/gguf/a[0-9]*.gguf,||g" >&2
    "${prio[@]}" "$llama_bin/llama-server" "${args[@]}" >"$work/llama-server-$1.log" 2>&1 &
    local pid=$!
    wait_http "http://127.0.0.1:$llama_port/health" 300
    grep -m1 'system_info' "$work/llama-server-$1.log" >&2 || true
    drive "llama-server $1" --base-url "http://127.0.0.1:$llama_port/v1" --model smollm2 --pid "$pid" \
        "${extra[@]}"
    stop "$pid"
}

ours() { # base|adapters
    paths
    local data=$work/dev-data-$1
    rm -rf "$data"
    mkdir -p "$data"
    "${prio[@]}" "$bin" dev --data-dir "$data" --base-model "$model" --engine-threads "$threads" \
        --http-port "$ours_port" --grpc-base-port 0 --ops-base-port 0 --log-level warn \
        >"$work/openledger-$1.log" 2>&1 &
    local pid=$!
    wait_http "http://127.0.0.1:$ours_port/readyz" 300
    # The development account's API key (the ready banner's `API key` line; kept in the data dir).
    for _ in $(seq 600); do [ -s "$data/dev-api-key" ] && break; sleep 0.1; done
    local key model_name=""
    key=$(cat "$data/dev-api-key")
    # The base model's id is its file name without .gguf; the engine loads after the edge is up,
    # so wait until a one-token completion is answered (/v1/models also lists the registry's
    # adapters, which answered 501 on main when this was recorded).
    model_name=$(basename "$model" .gguf)
    local ok=""
    for _ in $(seq 600); do
        if curl -fsS -o /dev/null -H "Authorization: Bearer $key" -H 'content-type: application/json' \
            -d "{\"model\":\"$model_name\",\"prompt\":\"Hi\",\"max_tokens\":1}" \
            "http://127.0.0.1:$ours_port/v1/completions" 2>/dev/null; then ok=1; break; fi
        sleep 0.5
    done
    [ -n "$ok" ] || { echo "openledger dev does not answer completions for $model_name" >&2; stop "$pid"; return 1; }
    local extra=()
    if [ "$1" = adapters ]; then
        # Imports $work/adapters/peft/a* through POST /v1/adapters (signed by the development
        # account's key, $data/dev-account.key) and writes their model names, one a line.
        if [ ! -f "$here/register.py" ]; then
            echo "ours adapters: bench/serving/register.py is not written yet (POST /v1/adapters was not on main" \
                "when this benchmark was recorded)" >&2
            stop "$pid"
            return 2
        fi
        "$py" "$here/register.py" --base-url "http://127.0.0.1:$ours_port" --api-key "$key" \
            --data-dir "$data" --adapters "$work/adapters/peft" --count "$n_adapters" \
            --out "$work/adapter-names.txt"
        extra=(--adapters "$n_adapters" --adapter-style model --adapter-names "$work/adapter-names.txt")
    fi
    drive "openledger dev $1" --base-url "http://127.0.0.1:$ours_port/v1" --api-key "$key" \
        --model "$model_name" --pid "$pid" "${extra[@]}"
    stop "$pid"
}

direct() { # base|adapters
    (cd "$repo" && cargo bench -q -p openledger-ml --bench serving --no-run &&
        "${prio[@]}" cargo bench -q -p openledger-ml --bench serving -- "$1" --threads "$threads" \
        --concurrency "$concurrency" --duration "$duration" --warmup "$warmup" \
        --max-tokens "$max_tokens" --count "$n_adapters" --adapters-dir "$work/adapters/peft") |
        tee -a "$work/results.jsonl"
}

mkdir -p "$work"
case "${1:-}" in
    setup) setup ;;
    llama | ours | direct) "$1" "${2:?base or adapters}" ;;
    all)
        setup
        grep -m1 'model name' /proc/cpuinfo >&2
        for v in base adapters; do llama "$v"; done
        for v in base adapters; do ours "$v"; done
        for v in base adapters; do direct "$v"; done
        ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
