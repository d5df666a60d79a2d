"""llama.cpp single-stream greedy decode speed on SmolLM2-135M-Instruct Q4_1 (peer baseline).

Raw prompt "The capital of France is" (no chat template), n_ctx 512, n_batch 512, flash
attention off, f16 KV cache. The prompt is evaluated in one batch (prefill), then exactly
--tokens tokens are decoded one at a time by greedy argmax; EOS never stops the loop because
we drive Llama.eval ourselves instead of using a sampler/stop logic. One warm-up run, then
--repeats timed runs; prints one JSON line per n_threads. Run through run.sh (venv + taskset).
"""

import argparse
import json
import statistics
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama

PROMPT = "The capital of France is"


def load(model, n_threads):
    return Llama(model, n_ctx=512, n_batch=512, n_threads=n_threads,
                 n_threads_batch=n_threads, logits_all=False, flash_attn=False,
                 seed=0, verbose=False)


def last_logits(llm):
    # Logits of the last evaluated position, a view into llama.cpp's buffer (no copy).
    pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),))


def run_once(llm, prompt_tokens, n_decode):
    """Returns (prefill seconds, decode seconds, generated tokens); wall-clock, perf_counter."""
    llm.reset()  # n_tokens = 0; the next eval drops the whole KV cache for the sequence
    t0 = time.perf_counter()
    llm.eval(prompt_tokens)                       # prefill: all prompt tokens in one batch
    token = int(np.argmax(last_logits(llm)))      # first generated token comes from prefill
    t1 = time.perf_counter()
    generated = [token]
    for _ in range(n_decode):                     # decode: one llama_decode per token
        llm.eval([token])
        token = int(np.argmax(last_logits(llm)))
        generated.append(token)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, generated


def summary(values):
    return {"median": round(statistics.median(values), 1),
            "min": round(min(values), 1), "max": round(max(values), 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--tokens", type=int, default=128, help="decode steps timed per run")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()

    llm = load(a.model, a.threads)
    # add_bos=True lets the GGUF decide (SmolLM2's says no BOS); special=False: raw text.
    prompt_tokens = llm.tokenize(PROMPT.encode(), add_bos=True, special=False)
    _, _, warm = run_once(llm, prompt_tokens, a.tokens)  # warm-up: page in weights, caches
    prefill, decode = [], []
    for _ in range(a.repeats):
        p_s, d_s, gen = run_once(llm, prompt_tokens, a.tokens)
        assert gen == warm, "greedy decode is not deterministic across runs"
        prefill.append(len(prompt_tokens) / p_s)
        decode.append(a.tokens / d_s)
    print(json.dumps({
        "engine": "llama.cpp", "llama_cpp_python": llama_cpp.__version__,
        "model": a.model.rsplit("/", 1)[-1], "n_threads": a.threads,
        "prompt_tokens": len(prompt_tokens), "decode_tokens": a.tokens, "repeats": a.repeats,
        "decode_tokens_per_s": summary(decode), "prefill_tokens_per_s": summary(prefill),
        "decode_ms_per_token_median": round(1000 / statistics.median(decode), 3),
        "text": llm.detokenize(warm[:16]).decode("utf-8", "replace"),
    }), flush=True)


if __name__ == "__main__":
    main()
