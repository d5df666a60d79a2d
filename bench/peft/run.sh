#!/usr/bin/env bash
# PyTorch + PEFT reference side for LoRA training speed and adapter interop (see train_step.py and
# interop.py for what each measures). Runs offline (HF_HUB_OFFLINE=1) with the venv below, on the
# GGUF from scripts/fetch-models.sh smollm2 (or $MODEL).
#
#   bench/peft/run.sh step [train_step.py args]   # 1 thread on CPU 1, then 2 threads on CPUs 0,1
#   bench/peft/run.sh step-on CPUS --model M [train_step.py args]   # once, on CPUS (alternate.sh)
#   bench/peft/run.sh logits --tokens 1,2,3 --out F.json [--adapter DIR]
#   bench/peft/run.sh make-adapter --out DIR [--rank 8 --alpha 16 --targets ... --seed 0]
#   bench/peft/run.sh compare --ours A.json --theirs B.json [--base-ours A0.json --base-theirs B0.json]
#
# Venv: ${OPENLEDGER_TOOLS_DIR:-/var/tmp/openledger-tools}/peft-venv with torch, transformers,
# peft, gguf, safetensors, numpy (checked with torch 2.15.0, transformers 5.24.0, peft 0.21.2,
# gguf 0.19.0); e.g. python3 -m venv "$venv" && "$venv/bin/pip" install torch transformers peft gguf
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${OPENLEDGER_TOOLS_DIR:-/var/tmp/openledger-tools}/peft-venv
py=$venv/bin/python
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1
if ! "$py" -c 'import torch, transformers, peft, gguf' 2>/dev/null; then
    echo "installing torch, transformers, peft, gguf into $venv (about 6 GB)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --no-cache-dir -q torch transformers peft gguf safetensors numpy
fi
mode=${1:?usage: $0 step|step-on|logits|make-adapter|compare [args]}; shift
case $mode in
    step)
        model=${MODEL:-$("$repo/scripts/fetch-models.sh" smollm2)}
        grep -m1 'model name' /proc/cpuinfo >&2
        taskset -c 1   "$py" "$here/train_step.py" --model "$model" --threads 1 "$@"
        taskset -c 0,1 "$py" "$here/train_step.py" --model "$model" --threads 2 "$@" ;;
    step-on)
        cpus=${1:?usage: $0 step-on CPUS --model M [train_step.py args]}; shift
        exec taskset -c "$cpus" "$py" "$here/train_step.py" "$@" ;;
    logits|make-adapter)
        model=${MODEL:-$("$repo/scripts/fetch-models.sh" smollm2)}
        exec "$py" "$here/interop.py" "$mode" --model "$model" "$@" ;;
    compare)
        exec "$py" "$here/interop.py" compare "$@" ;;
    *) echo "unknown mode $mode (step|step-on|logits|make-adapter|compare)" >&2; exit 2 ;;
esac
