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
python3 - "$records" > "$work/records.jsonl" <<'PY'
import json, sys
topics = ["fluids", "hand washing", "fever", "sunscreen", "sleep", "walking", "vaccines", "salt"]
for i in range(int(sys.argv[1])):
    topic = topics[i % len(topics)]
    print(json.dumps({"text": f"Note {i} on {topic}: carers check {topic} every morning and write down what changed, step {i % 7}."}))
PY
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }

service_round() {
    local dir=$work/dev-$1 http=18090 grpc=18151
    "$bin" --data-dir "$dir" --http-port $http --grpc-base-port $grpc --ops-base-port 18191 --log-level warn \
        dev --base-model "$model" >"$dir.log" 2>&1 &
    local pid=$!
    until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.05; done
    local key=$dir/dev-account.key api
    api=$(cat "$dir/dev-api-key")
    local dn="--datanet-url http://127.0.0.1:$((grpc + 1))"
    "$bin" datanet create --slug bench --name Bench --schema free-text --key-file "$key" $dn >/dev/null
    "$bin" datanet contribute bench "$work/records.jsonl" --key-file "$key" $dn >/dev/null
    "$bin" datanet publish bench --key-file "$key" $dn >/dev/null
    local grant
    grant=$("$bin" datanet grant bench --purpose bench --key-file "$key" $dn | awk '{print $2}' | tr -d :)
    "$bin" datanet grant bench --grant "$grant" --approve --key-file "$key" $dn >/dev/null
    until curl -sf -H "authorization: Bearer $api" "http://127.0.0.1:$http/v1/models" | grep -q '"id"'; do sleep 0.1; done
    local before_kib body start first="" id status
    before_kib=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
    body=$(printf '{"model":"SmolLM2-135M-Instruct.Q4_1","training_file":"datanet:bench@1","seed":7,"hyperparameters":{"n_epochs":%s,"batch_size":256},"lora":{"rank":%s}}' "$epochs" "$rank")
    start=$(ms)
    id=$(curl -sf -H "authorization: Bearer $api" -H 'content-type: application/json' -d "$body" \
        "http://127.0.0.1:$http/v1/fine_tuning/jobs" | json 'd["id"]')
    while :; do
        local job
        job=$(curl -sf -H "authorization: Bearer $api" "http://127.0.0.1:$http/v1/fine_tuning/jobs/$id")
        status=$(echo "$job" | json 'd["status"]')
        if [ -z "$first" ] && [ "$(echo "$job" | json 'd["step"]')" -ge 1 ]; then first=$(ms); fi
        case $status in succeeded|failed|cancelled) break ;; esac
        sleep 0.05
    done
    local end steps hwm_kib
    end=$(ms)
    steps=$(echo "$job" | json 'd["total_steps"]')
    hwm_kib=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
    kill -TERM $pid; wait $pid || true
    echo "service round $1: $status, $steps steps, create→succeeded $(( end - start )) ms, create→first step $(( ${first:-$end} - start )) ms, platform RSS before $(( before_kib / 1024 )) MiB, peak $(( hwm_kib / 1024 )) MiB"
}

cli_round() {
    local out=$work/cli-$1 start end
    start=$(ms)
    /usr/bin/time -f "%M" -o "$work/cli-$1.rss" "$bin" model finetune --base "$model" --data "$work/records.jsonl" \
        --out "$out" --rank "$rank" --epochs "$epochs" --seed 7 --checkpoint-every 50 --eval-every 50 --threads "$threads" >/dev/null 2>&1
    end=$(ms)
    echo "cli round $1: wall $(( end - start )) ms, peak RSS $(( $(cat "$work/cli-$1.rss") / 1024 )) MiB"
}

echo "records $records, epochs $epochs, rank $rank, training threads $threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for round in $(seq 1 "$rounds"); do
    service_round "$round"
    cli_round "$round"
done
