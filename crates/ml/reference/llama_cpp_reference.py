"""Reference outputs of llama.cpp for SmolLM2-135M-Instruct Q4_1, for the ml crate's tests.

`reference` (the default) runs greedy decoding on three fixed prompts and writes, for every step,
the chosen token and the top-5 logits to smollm2_q4_1_reference.json. `bench` measures
single-stream decode speed. Run through run.sh, which builds the pinned llama-cpp-python.
"""

import argparse
import ctypes
import hashlib
import json
import math
import os
import platform
import sys
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama

N_CTX = 512
REFERENCE_THREADS = 1
N_BATCH = 512
GENERATED_TOKENS = 32
TOP_LOGITS = 5
LOGIT_DECIMALS = 4
# llama-cpp-python 0.3.36 vendors this llama.cpp commit (ggml_commit() of the built library
# reports it with a "-dirty" suffix because the sdist carries no git metadata).
LLAMA_CPP_COMMIT = "0c1e570"

CHAT_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [
    {"name": "raw-capital", "kind": "raw", "text": "The capital of France is"},
    {
        "name": "chat-boiling-point",
        "kind": "chat",
        "text": CHAT_TEMPLATE.format("What is the boiling point of water?"),
    },
    {
        "name": "chat-haiku",
        "kind": "chat",
        "text": CHAT_TEMPLATE.format("Write a haiku about the sea."),
    },
]

BENCH_PROMPT = "The capital of France is"
BENCH_TOKENS = 128
BENCH_REPEATS = 3


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load(model_path, n_threads):
    return Llama(
        model_path,
        n_ctx=N_CTX,
        n_batch=N_BATCH,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        logits_all=False,
        flash_attn=False,
        seed=0,
        verbose=False,
    )


def tokenize(llm, text):
    # add_bos=True asks llama.cpp to add BOS only where the GGUF's add_bos_token says so;
    # special=True parses <|im_start|> and <|im_end|> as their control tokens.
    return llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)


def token_piece(llm, token):
    """The bytes llama.cpp prints for a token, control tokens included."""
    size = 64
    buffer = ctypes.create_string_buffer(size)
    length = llama_cpp.llama_token_to_piece(llm._model.vocab, token, buffer, size, 0, True)
    if length < 0 or length > size:
        raise RuntimeError(f"token {token} has a piece longer than {size} bytes")
    return buffer.raw[:length]


def last_logits(llm):
    """Logits of the last evaluated position, as a view into llama.cpp's buffer."""
    pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),))


def piece_fields(piece):
    try:
        return {"piece": piece.decode("utf-8")}
    except UnicodeDecodeError:
        return {"piece_hex": piece.hex()}


def step_record(llm, logits):
    # Greedy: the highest logit, lowest id on ties (as llama.cpp's greedy sampler).
    token = int(np.argmax(logits))
    top = np.argsort(-logits, kind="stable")[:TOP_LOGITS]
    maximum = float(logits[token])
    logsumexp = maximum + math.log(float(np.exp(logits.astype(np.float64) - maximum).sum()))
    record = {"token": token, **piece_fields(token_piece(llm, token))}
    record["top"] = [[int(t), round(float(logits[t]), LOGIT_DECIMALS)] for t in top]
    record["logsumexp"] = round(logsumexp, LOGIT_DECIMALS)
    return record


def generate(llm, prompt_tokens, batched_prompt=True):
    """Greedy decoding of GENERATED_TOKENS tokens; EOS does not stop it.

    Returns the step records and the logits the first token was chosen from.
    """
    llm.reset()
    if batched_prompt:
        llm.eval(prompt_tokens)
    else:
        for token in prompt_tokens:
            llm.eval([token])
    first_logits = last_logits(llm).copy()
    steps = []
    for index in range(GENERATED_TOKENS):
        record = step_record(llm, last_logits(llm))
        steps.append(record)
        if index + 1 < GENERATED_TOKENS:
            llm.eval([record["token"]])
    return steps, first_logits


def sequential_prefill(llm, prompt_tokens, batched_steps, batched_first_logits):
    """The same decoding with the prompt fed one token per decode.

    llama.cpp's numbers change once a decode holds 8 or more tokens, so this shows how far its own
    answer moves when only the prompt's schedule changes: a yardstick for the tolerance.
    """
    steps, first_logits = generate(llm, prompt_tokens, batched_prompt=False)
    tokens = [step["token"] for step in steps]
    batched_tokens = [step["token"] for step in batched_steps]
    diverged = [i for i, (a, b) in enumerate(zip(tokens, batched_tokens)) if a != b]
    difference = float(np.abs(first_logits - batched_first_logits).max())
    return {
        "generated_tokens": tokens,
        "first_divergent_step": diverged[0] if diverged else None,
        "first_step_max_abs_logit_difference": round(difference, LOGIT_DECIMALS),
    }


def reference(args):
    llm = load(args.model, n_threads=REFERENCE_THREADS)
    eos = llm.token_eos()
    prompts = []
    for prompt in PROMPTS:
        prompt_tokens = tokenize(llm, prompt["text"])
        steps, first_logits = generate(llm, prompt_tokens)
        tokens = [step["token"] for step in steps]
        first_eos = tokens.index(eos) if eos in tokens else None
        text = b"".join(token_piece(llm, t) for t in tokens).decode("utf-8", "replace")
        prompts.append(
            {
                **prompt,
                "prompt_tokens": prompt_tokens,
                "generated_tokens": tokens,
                "generated_text": text,
                "first_eos_step": first_eos,
                "sequential_prefill": sequential_prefill(llm, prompt_tokens, steps, first_logits),
                "steps": steps,
            }
        )
    document = {
        "model_file": os.path.basename(args.model),
        "model_sha256": file_sha256(args.model),
        "llama_cpp_python_version": llama_cpp.__version__,
        "llama_cpp_commit": LLAMA_CPP_COMMIT,
        "llama_cpp_version": llama_cpp.llama_version().decode(),
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "settings": settings(llm),
        "prompts": prompts,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(render(document))
        f.write("\n")
    for prompt in prompts:
        print(f"{prompt['name']}: prompt {prompt['prompt_tokens']}", file=sys.stderr)
        print(f"  generated {prompt['generated_tokens']}", file=sys.stderr)
        print(f"  text {prompt['generated_text']!r}", file=sys.stderr)
    print(args.out)


def settings(llm):
    return {
        "n_threads": REFERENCE_THREADS,
        "n_ctx": N_CTX,
        "n_batch": N_BATCH,
        "flash_attn": False,
        "kv_cache_type": "f16",
        "prompt_evaluation": "all prompt tokens in one batch, then one token per decode "
        "(sequential_prefill: the prompt one token per decode too)",
        "add_bos": llm._model.add_bos_token(),
        "bos_token": llm.token_bos(),
        "eos_token": llm.token_eos(),
        "n_vocab": llm.n_vocab(),
        "decoding": "greedy argmax (lowest id on ties), no sampling, no repetition penalty",
        "generated_tokens": GENERATED_TOKENS,
        "stop": "none: always generated_tokens tokens, also past EOS (see first_eos_step)",
        "step_fields": "token, piece (or piece_hex if not UTF-8), top: [token, logit] "
        "best first, logsumexp over the whole vocabulary; logits rounded to "
        f"{LOGIT_DECIMALS} decimals",
    }


def decode_once(llm, prompt_tokens, tokens):
    """Seconds spent decoding `tokens` tokens greedily after the prompt, wall and llama.cpp's."""
    llm.reset()
    llm.eval(prompt_tokens)
    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
    start = time.perf_counter()
    token = int(np.argmax(last_logits(llm)))
    for _ in range(tokens):
        llm.eval([token])
        token = int(np.argmax(last_logits(llm)))
    wall = time.perf_counter() - start
    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
    if perf.n_eval != tokens:
        raise RuntimeError(f"llama.cpp counted {perf.n_eval} decodes, expected {tokens}")
    return wall, perf.t_eval_ms / 1000.0


def bench(args):
    results = []
    for n_threads in args.threads:
        llm = load(args.model, n_threads=n_threads)
        prompt_tokens = tokenize(llm, BENCH_PROMPT)
        decode_once(llm, prompt_tokens, 8)  # warm-up: page in the weights
        runs = [decode_once(llm, prompt_tokens, args.tokens) for _ in range(args.repeats)]
        best_wall = min(wall for wall, _ in runs)
        best_eval = min(evaluation for _, evaluation in runs)
        results.append(
            {
                "n_threads": n_threads,
                "wall_tokens_per_s": round(args.tokens / best_wall, 1),
                "llama_cpp_eval_tokens_per_s": round(args.tokens / best_eval, 1),
            }
        )
        del llm
    print(
        json.dumps(
            {
                "llama_cpp_python_version": llama_cpp.__version__,
                "llama_cpp_commit": LLAMA_CPP_COMMIT,
                "system_info": llama_cpp.llama_print_system_info().decode().strip(),
                "cpu": cpu_model(),
                "prompt": BENCH_PROMPT,
                "generated_tokens": args.tokens,
                "repeats": args.repeats,
                "results": results,
            },
            indent=2,
        )
    )


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def render(value, depth=0):
    """JSON with one line per decoding step, so the file stays short and diffs stay readable."""
    indent = "  "
    if isinstance(value, dict) and not is_leaf_record(value):
        items = [
            f"{indent * (depth + 1)}{json.dumps(key)}: {render(item, depth + 1)}"
            for key, item in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + indent * depth + "}"
    if isinstance(value, list) and value and isinstance(value[0], dict):
        items = [indent * (depth + 1) + render(item, depth + 1) for item in value]
        return "[\n" + ",\n".join(items) + "\n" + indent * depth + "]"
    return json.dumps(value, ensure_ascii=False)


def is_leaf_record(value):
    return "token" in value and "top" in value


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=["reference", "bench"], default="reference")
    parser.add_argument("--model", required=True, help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument(
        "--out",
        default=os.path.join(here, "smollm2_q4_1_reference.json"),
        help="where `reference` writes its JSON",
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="for `bench`")
    parser.add_argument("--tokens", type=int, default=BENCH_TOKENS, help="for `bench`")
    parser.add_argument("--repeats", type=int, default=BENCH_REPEATS, help="for `bench`")
    args = parser.parse_args()
    if args.command == "bench":
        bench(args)
    else:
        reference(args)


if __name__ == "__main__":
    main()
