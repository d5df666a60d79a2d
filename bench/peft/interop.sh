#!/usr/bin/env bash
# Adapter interoperability with Hugging Face PEFT on SmolLM2-135M-Instruct (GGUF base):
#  1. an adapter trained by `openledger model finetune` (q/k/v/o), applied by PEFT + transformers,
#     changes the next-token logits the way our engine's does;
#  2. a PEFT-made adapter (q/k only, so a wrong q/k row order would show) loads in our engine and
#     changes the logits the way PEFT's does.
# Our engine runs the Q4_1 weights, transformers the dequantized f32 ones, so base logits differ
# slightly; the check compares the adapter's effect (adapter logits − base logits) on each side.
# Exits 1 when either adapter is outside the tolerance bench/RESULTS.md states (interop.py compare).
# Usage: bench/peft/interop.sh   (installs the PyTorch side on first use, see run.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
model=${MODEL:-$("$repo/scripts/fetch-models.sh" smollm2)}
bin=${OPENLEDGER_BIN:-$repo/target/debug/openledger}
[ -x "$bin" ] || cargo build -q -p openledger-cli --manifest-path "$repo/Cargo.toml"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# "The capital of France is a city with a long history of art and" (16 real tokens).
tokens=504,3575,282,4649,314,253,2077,351,253,986,2403,282,1697,284,6377,30
python3 - "$work/data.jsonl" <<'PY'
import json, sys
pairs = [("red", "warm"), ("blue", "cold"), ("green", "fresh"), ("black", "dark")]
with open(sys.argv[1], "w") as f:
    for i in range(32):
        colour, label = pairs[i % 4]
        f.write(json.dumps({"instruction": f"Which feeling goes with {colour}? ({i})", "response": label}) + "\n")
PY
"$bin" model finetune --base "$model" --data "$work/data.jsonl" --out "$work/ours" --rank 8 \
    --targets q_proj,k_proj,v_proj,o_proj --lr 2e-3 --epochs 4 --batch-tokens 512 --eval-split 0 >&2
"$here/run.sh" make-adapter --out "$work/peft" --rank 8 --alpha 16 --targets q_proj,k_proj --seed 0 >&2
for side in base ours peft; do
    adapter=()
    [ "$side" = base ] || adapter=(--adapter "$work/$side")
    "$bin" model logits --model "$model" "${adapter[@]}" --tokens "$tokens" > "$work/rust-$side.json"
    "$here/run.sh" logits "${adapter[@]}" --tokens "$tokens" --out "$work/torch-$side.json" > /dev/null
done
status=0
echo "base alone:"
"$here/run.sh" compare --ours "$work/rust-base.json" --theirs "$work/torch-base.json" || status=1
for side in ours peft; do
    echo "adapter $side:"
    "$here/run.sh" compare --ours "$work/rust-$side.json" --theirs "$work/torch-$side.json" \
        --base-ours "$work/rust-base.json" --base-theirs "$work/torch-base.json" || status=1
done
exit $status
