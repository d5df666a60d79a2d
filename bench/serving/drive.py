"""Serving load driver: the official `openai` client's AsyncOpenAI keeps C streaming chat
completions in flight against one OpenAI-compatible server and prints one JSON line of figures.

Every request: a system message and one of the user prompts of prompts.json (in turn),
temperature 0, seed 0, `max_tokens`, `stream=True` with `stream_options.include_usage`. With
--adapters N the k-th request uses adapter k mod N (uniform over the N adapters; 16 requests in
flight use 16 distinct adapters), named either
  - `--adapter-style model`: in `model` (`--adapter-names FILE`, one model name per line: the
    OpenAI/vLLM/LoRAX convention our edge follows), or
  - `--adapter-style llama`: `model` stays the base and the body carries llama-server's
    `lora: [{"id": k, "scale": 1.0}]` (adapters loaded at start with `--lora`, scale 0).

Timing (time.perf_counter on arrival of each SSE chunk, as the client yields it):
  - the run lasts warmup + duration seconds of issuing; requests in flight at the end finish
    (the drain) and count, but new ones are no longer started;
  - output tokens/s: tokens whose chunks arrived inside the measurement window [warmup,
    warmup + duration], divided by its length; each request's tokens are its
    `usage.completion_tokens` (the server's count, read the same way from both servers), spread
    evenly over its content chunks (chunks with non-empty `delta.content`);
  - TTFT: request start to its first content chunk, for requests started inside the window;
  - inter-token latency: gaps between consecutive content chunks of a request, for chunks
    arriving inside the window (a chunk normally carries one token; tokens_per_chunk says);
  - request time (start to last content chunk) and each request's longest gap between chunks,
    for requests started inside the window (a server that parks a started stream shows here);
  - peak RSS: the server process's VmHWM from /proc/<pid>/status at the end (its peak since
    start, model load included) and the largest VmRSS seen by polling every 0.25 s during the
    run.
"""

import argparse
import asyncio
import json
import os
import time

import numpy as np
import openai
from openai import AsyncOpenAI

HERE = os.path.dirname(os.path.abspath(__file__))


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class Record:
    __slots__ = ("start", "chunks", "completion_tokens", "prompt_tokens", "finish", "error", "adapter")

    def __init__(self, start, adapter):
        self.start = start
        self.adapter = adapter
        self.chunks = []
        self.completion_tokens = None
        self.prompt_tokens = None
        self.finish = None
        self.error = None


async def one_request(client, args, k, prompts, system, adapter_names, records):
    user = prompts[k % len(prompts)]
    kwargs = dict(
        model=args.model,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        max_tokens=args.max_tokens, temperature=0.0, seed=0, stream=True,
        stream_options={"include_usage": True},
    )
    adapter = None
    if args.adapters:
        adapter = k % args.adapters
        if args.adapter_style == "llama":
            kwargs["extra_body"] = {"lora": [{"id": adapter, "scale": 1.0}]}
        else:
            kwargs["model"] = adapter_names[adapter]
    rec = Record(time.perf_counter(), adapter)
    records.append(rec)
    try:
        stream = await client.chat.completions.create(**kwargs)
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta is not None and choice.delta.content:
                    rec.chunks.append(now)
                if choice.finish_reason:
                    rec.finish = choice.finish_reason
            if chunk.usage is not None:
                rec.completion_tokens = chunk.usage.completion_tokens
                rec.prompt_tokens = chunk.usage.prompt_tokens
    except openai.APIError as e:
        rec.error = f"{type(e).__name__}: {e}"[:300]


async def worker(client, args, counter, deadline, prompts, system, adapter_names, records):
    while time.perf_counter() < deadline:
        k = counter[0]
        counter[0] += 1
        await one_request(client, args, k, prompts, system, adapter_names, records)


async def poll_rss(pid, stop, peak):
    while not stop.is_set():
        peak[0] = max(peak[0], status_kib(pid, "VmRSS"))
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except asyncio.TimeoutError:
            pass


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def pct(values, q):
    return round(float(np.percentile(values, q)), 2) if len(values) else None


async def run(args):
    with open(args.prompts) as f:
        spec = json.load(f)
    prompts, system = spec["user"], spec["system"]
    adapter_names = None
    if args.adapters and args.adapter_style == "model":
        with open(args.adapter_names) as f:
            adapter_names = [line.strip() for line in f if line.strip()]
        if len(adapter_names) < args.adapters:
            raise SystemExit(f"{args.adapter_names} names {len(adapter_names)} adapters, need {args.adapters}")
    client = AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=600.0)
    records, counter = [], [0]
    stop, peak_rss = asyncio.Event(), [0]
    poller = asyncio.create_task(poll_rss(args.pid, stop, peak_rss)) if args.pid else None
    load_start = loadavg()
    t0 = time.perf_counter()
    w0, w1 = t0 + args.warmup, t0 + args.warmup + args.duration
    await asyncio.gather(*(worker(client, args, counter, w1, prompts, system, adapter_names, records)
                           for _ in range(args.concurrency)))
    t_end = time.perf_counter()
    stop.set()
    if poller:
        await poller
    await client.close()

    ok = [r for r in records if r.error is None and r.completion_tokens is not None]
    errors = [r for r in records if r.error is not None or r.completion_tokens is None]
    window_tokens, ttft, itl, chunks_total, latency, longest_gap = 0.0, [], [], 0, [], []
    for r in ok:
        if not r.chunks:
            continue
        chunks_total += len(r.chunks)
        per_chunk = r.completion_tokens / len(r.chunks)
        window_tokens += per_chunk * sum(1 for c in r.chunks if w0 <= c <= w1)
        if w0 <= r.start <= w1:
            ttft.append((r.chunks[0] - r.start) * 1e3)
            latency.append((r.chunks[-1] - r.start) * 1e3)
            gaps = [b - a for a, b in zip(r.chunks, r.chunks[1:])]
            longest_gap.append(max(gaps) * 1e3 if gaps else 0.0)
        itl.extend((b - a) * 1e3 for a, b in zip(r.chunks, r.chunks[1:]) if w0 <= b <= w1)
    # Over every request, warm-up included: a stream parked behind others shows here.
    all_latency = [(r.chunks[-1] - r.start) * 1e3 for r in ok if r.chunks]
    all_gaps = [max((b - a for a, b in zip(r.chunks, r.chunks[1:])), default=0.0) * 1e3 for r in ok if r.chunks]
    completion = [r.completion_tokens for r in ok]
    finish = {}
    for r in ok:
        finish[r.finish] = finish.get(r.finish, 0) + 1
    result = {
        "label": args.label,
        "server": args.base_url,
        "adapters": args.adapters,
        "adapter_style": args.adapter_style if args.adapters else None,
        "concurrency": args.concurrency,
        "warmup_s": args.warmup,
        "window_s": args.duration,
        "drain_s": round(t_end - w1, 2),
        "max_tokens": args.max_tokens,
        "requests": len(records),
        "requests_ok": len(ok),
        "errors": len(errors),
        "first_error": errors[0].error if errors else None,
        "output_tokens_per_s": round(window_tokens / args.duration, 1),
        "output_tokens_per_s_whole_run": round(sum(completion) / (t_end - t0), 1),
        "ttft_ms_p50": pct(ttft, 50), "ttft_ms_p99": pct(ttft, 99),
        "itl_ms_p50": pct(itl, 50), "itl_ms_p99": pct(itl, 99),
        "request_ms_p50": pct(latency, 50), "request_ms_p99": pct(latency, 99),
        "longest_gap_ms_p50": pct(longest_gap, 50), "longest_gap_ms_p99": pct(longest_gap, 99),
        "request_ms_max_all": round(max(all_latency), 1) if all_latency else None,
        "longest_gap_ms_max_all": round(max(all_gaps), 1) if all_gaps else None,
        "completion_tokens_mean": round(float(np.mean(completion)), 1) if completion else None,
        "prompt_tokens_mean": round(float(np.mean([r.prompt_tokens for r in ok])), 1) if ok else None,
        "finish_reasons": finish,
        "tokens_per_chunk": round(sum(completion) / chunks_total, 3) if chunks_total else None,
        "distinct_adapters_used": len({r.adapter for r in ok if r.adapter is not None}),
        "peak_rss_mib": round(status_kib(args.pid, "VmHWM") / 1024, 1) if args.pid else None,
        "max_rss_polled_mib": round(peak_rss[0] / 1024, 1) if args.pid else None,
        "loadavg_1m_start_end": [load_start, loadavg()],
        "openai_client": openai.__version__,
    }
    print(json.dumps(result), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8081/v1")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    p.add_argument("--model", required=True, help="the base model's name on that server")
    p.add_argument("--label", default="")
    p.add_argument("--pid", type=int, default=0, help="server process to read peak RSS from")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=60.0, help="measurement window, seconds")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the window")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompts", default=os.path.join(HERE, "prompts.json"))
    p.add_argument("--adapters", type=int, default=0, help="spread requests over this many adapters")
    p.add_argument("--adapter-style", choices=["model", "llama"], default="model")
    p.add_argument("--adapter-names", help="file: one adapter model name per line (--adapter-style model)")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
