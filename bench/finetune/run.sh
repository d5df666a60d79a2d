#!/usr/bin/env bash
# A fine-tuning job through the service next to `openledger model finetune` on the same records
# and settings, same machine, alternating in each round:
#   service: `openledger dev` (release), a public Datanet of RECORDS free-text records sealed as
#            version 1, the dev account's grant, then POST /v1/fine_tuning/jobs with the dev API
#            key; wall time from the POST to `succeeded`, from the POST to the first step, and
#            the platform's peak RSS (VmHWM) over its life (engine included) and before the job.
#   cli:     `openledger model finetune` on the same records, the same hyper-parameters and the
#            same number of training threads as the service's local executor (THREADS, default
#            all cores but one); wall time and peak RSS (GNU time).
# Usage: bench/finetune/run.sh [ROUNDS]   (RECORDS=200 EPOCHS=1 RANK=8 THREADS=…)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2}
records=${RECORDS:-200}
epochs=${EPOCHS:-1}
rank=${RANK:-8}
threads=${THREADS:-$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p openledger-cli --bin openledger
bin=$target/release/openledger
model=$(scripts/fetch-models.sh smollm2)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# Distinct natural sentences (the first lines of standard-library docstrings), so that the
# Datanet's duplicate and spam screens accept them.
python3 - "$records" > "$work/records.jsonl" <<'PY'
import importlib, inspect, json, sys
wanted, seen = int(sys.argv[1]), set()
for module in ["os", "json", "re", "string", "textwrap", "collections", "itertools", "functools", "pathlib",
               "datetime", "statistics", "random", "math", "shutil", "subprocess", "email", "csv", "heapq",
               "bisect", "argparse", "logging", "threading", "socket", "urllib.parse", "zipfile", "tarfile"]:
    for name, item in inspect.getmembers(importlib.import_module(module)):
        doc = " ".join((inspect.getdoc(item) or "").split("\n\n")[0].split())
        if name.startswith("_") or not 60 <= len(doc) <= 400 or doc in seen:
            continue
        seen.add(doc)
        print(json.dumps({"text": doc}))
        if len(seen) == wanted:
            sys.exit(0)
PY
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
# The process's minor page faults so far (field 10 of /proc/PID/stat; the name in field 2 has no spaces).
minor_faults() { awk '{print $10}' "/proc/$1/stat"; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }

service_round() {
    local dir=$work/dev-$1 http=18090 grpc=18151
    "$bin" --data-dir "$dir" --http-port $http --grpc-base-port $grpc --ops-base-port 18191 --log-level warn \
        dev --base-model "$model" >"$dir.log" 2>&1 &
    local pid=$!
    until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.05; done
    local key=$dir/dev-account.key api
    # The development account and key are made just after the platform is ready.
    until [ -s "$dir/dev-api-key" ] && [ -s "$key" ]; do sleep 0.05; done
    api=$(cat "$dir/dev-api-key")
    local dn="--datanet-url http://127.0.0.1:$((grpc + 1))"
    "$bin" datanet create --slug bench --name Bench --schema free-text --key-file "$key" $dn >/dev/null
    "$bin" datanet contribute bench "$work/records.jsonl" --key-file "$key" $dn >/dev/null
    "$bin" datanet publish bench --key-file "$key" $dn >/dev/null
    local grant
    grant=$("$bin" datanet grant bench --purpose bench --key-file "$key" $dn | awk '{print $2}' | tr -d :)
    "$bin" datanet grant bench --grant "$grant" --approve --key-file "$key" $dn >/dev/null
    # The CLI trains on exactly the sealed version's records.
    [ -d "$work/version" ] || "$bin" datanet export bench@1 --grant "$grant" --out "$work/version" --key-file "$key" $dn >/dev/null
    until curl -sf -H "authorization: Bearer $api" "http://127.0.0.1:$http/v1/models" | grep -q '"id"'; do sleep 0.1; done
    local before_kib body start first="" id status
    before_kib=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
    local faults_before faults_after
    faults_before=$(minor_faults $pid)
    body=$(printf '{"model":"SmolLM2-135M-Instruct.Q4_1","training_file":"datanet:bench@1","seed":7,"hyperparameters":{"n_epochs":%s,"batch_size":256},"lora":{"rank":%s}}' "$epochs" "$rank")
    start=$(ms)
    id=$(curl -sf -H "authorization: Bearer $api" -H 'content-type: application/json' -d "$body" \
        "http://127.0.0.1:$http/v1/fine_tuning/jobs" | json 'd["id"]')
    # Polled once a second with one small process per poll: on two cores a busier poll loop
    # takes time from the training thread (the first runs of this script polled every 50 ms
    # through three processes and measured 16-19% "overhead" that was the poller's).
    local job step
    while :; do
        job=$(curl -sf -H "authorization: Bearer $api" "http://127.0.0.1:$http/v1/fine_tuning/jobs/$id")
        read -r status step <<<"$(echo "$job" | json 'd["status"] + " " + str(d["step"])')"
        if [ -z "$first" ] && [ "$step" -ge 1 ]; then first=$(ms); fi
        case $status in succeeded|failed|cancelled) break ;; esac
        sleep 1
    done
    local end steps hwm_kib
    end=$(ms)
    faults_after=$(minor_faults $pid)
    steps=$(echo "$job" | json 'd["total_steps"]')
    hwm_kib=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
    kill -TERM $pid; wait $pid || true
    echo "service round $1: $status, $(echo "$job" | json 'd["training_records"]') records, $steps steps, create→succeeded $(( end - start )) ms, create→first step $(( ${first:-$end} - start )) ms, platform RSS before $(( before_kib / 1024 )) MiB, peak $(( hwm_kib / 1024 )) MiB, minor page faults during the job $(( faults_after - faults_before ))"
}

cli_round() {
    local out=$work/cli-$1 start end
    start=$(ms)
    /usr/bin/time -f "%M %R" -o "$work/cli-$1.rss" "$bin" model finetune --base "$model" --data "$work/version/records.jsonl" \
        --out "$out" --rank "$rank" --epochs "$epochs" --seed 7 --checkpoint-every 50 --eval-every 50 --threads "$threads" >/dev/null 2>&1
    end=$(ms)
    echo "cli round $1: wall $(( end - start )) ms, peak RSS $(( $(cut -d' ' -f1 "$work/cli-$1.rss") / 1024 )) MiB, minor page faults $(cut -d' ' -f2 "$work/cli-$1.rss")"
}

echo "records $records, epochs $epochs, rank $rank, training threads $threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for round in $(seq 1 "$rounds"); do
    service_round "$round"
    cli_round "$round"
done
