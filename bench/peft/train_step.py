"""CPU time of one PyTorch + PEFT LoRA training step on a GGUF Llama base (peer baseline).

The base is loaded in float32 (see common.py), wrapped with a PEFT LoRA (bias "none"), and
trained with AdamW (lr 1e-4, weight decay 0.01) over the LoRA parameters only. Each step draws a
fresh seeded batch of random token ids in [0, vocab) with labels = inputs (HF shifts them
internally, so the loss covers seq-1 positions per row). The timed region is the whole step:
zero_grad, forward, loss, backward, clip_grad_norm_(1.0), optimizer.step. --warmup steps are run
but not timed. Prints one JSON line; peak_rss_mib is the process peak, which may be set by the
GGUF load (peak_rss_after_load_mib) rather than by training. Run through run.sh (venv,
HF_HUB_OFFLINE, taskset).
"""

import argparse
import json
import resource
import statistics
import time

from common import load_base  # first: it silences tqdm before torch/peft import it

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="path to the .gguf base")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--targets", default="q_proj,v_proj")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=12, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(a.seed)  # LoRA A init (B starts at zero, PEFT's default)
    targets = a.targets.split(",")
    model = get_peft_model(load_base(a.model), LoraConfig(
        r=a.rank, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=targets,
        bias="none", task_type="CAUSAL_LM"))
    model.train()
    load_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # GGUF dequantization
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(a.seed)

    times, loss = [], None
    for i in range(a.warmup + a.steps):
        ids = torch.randint(0, vocab, (a.batch, a.seq), generator=gen)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)

    median = statistics.median(times)
    print(json.dumps({
        "engine": "pytorch+peft", "torch": torch.__version__, "peft": peft.__version__,
        "transformers": transformers.__version__, "threads": a.threads, "rank": a.rank,
        "alpha": a.alpha, "dropout": a.dropout, "targets": targets, "batch": a.batch,
        "seq": a.seq, "steps": a.steps, "warmup": a.warmup,
        "attn_implementation": model.config._attn_implementation,
        "trainable_params": sum(q.numel() for q in params),
        "step_seconds": {"median": median, "min": min(times), "max": max(times)},
        "tokens_per_s": a.batch * a.seq / median,
        "last_loss": loss.item(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_after_load_mib": load_rss,
    }))


if __name__ == "__main__":
    main()
