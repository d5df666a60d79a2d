"""The official OpenAI Python client against a running `openledger dev`, unmodified.

Run by scripts/openai-client.sh (which installs a pinned `openai` into a venv) from the Rust
e2e test `openai::the_official_client_works_against_dev`, which creates the accounts and keys
and passes them in the environment:

  OL_BASE_URL      http://HOST:PORT/v1
  OL_KEY           a funded account's API key
  OL_POOR_KEY      an API key of an account with no funds (402)
  OL_LIMITED_KEY   a funded key allowed one request per minute (429)
  OL_BASE_MODEL    the base model's id
  OL_ADAPTER       an adapter id the funded account may call (optional)

Prints one JSON line per billed request ({"name", "inference_id", "usage", "fee"}) so the
caller can check every fee against the ledger, then `ok`. Any failed check raises.
"""

import asyncio
import json
import os

import openai
from openai import AsyncOpenAI, OpenAI

BASE_URL = os.environ["OL_BASE_URL"]
KEY = os.environ["OL_KEY"]
BASE_MODEL = os.environ["OL_BASE_MODEL"]
ADAPTER = os.environ.get("OL_ADAPTER") or None


def client(key=KEY):
    # No retries: a 429 or 503 must surface, not be retried away.
    return OpenAI(base_url=BASE_URL, api_key=key, max_retries=0, timeout=120)


def billed(name, response):
    extra = response.model_extra or {}
    attribution = extra.get("attribution") or {}
    assert attribution.get("inference_id"), f"{name}: no attribution.inference_id in {extra}"
    usage = response.usage
    print(json.dumps({
        "name": name,
        "inference_id": attribution["inference_id"],
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens},
        "fee": attribution.get("fee"),
        "model": response.model,
    }), flush=True)


def chat_basic():
    c = client()
    r = c.chat.completions.create(
        model=BASE_MODEL,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
        max_tokens=8, temperature=0, seed=1,
    )
    assert r.object == "chat.completion"
    assert len(r.choices) == 1 and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    billed("chat", r)
    # Greedy is deterministic: the same request gives the same text.
    again = c.chat.completions.create(
        model=BASE_MODEL,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
        max_tokens=8, temperature=0, seed=1,
    )
    assert again.choices[0].message.content == r.choices[0].message.content
    billed("chat-again", again)


def chat_n_and_logprobs():
    c = client()
    r = c.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "Say something."}],
        max_tokens=6, n=3, temperature=1.0, seed=7, logprobs=True, top_logprobs=3,
    )
    assert sorted(ch.index for ch in r.choices) == [0, 1, 2]
    for choice in r.choices:
        content = choice.logprobs.content
        assert content, "logprobs for every token"
        for token in content:
            assert token.logprob <= 0.0
            assert len(token.top_logprobs) == 3
            assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob
    # Completion tokens are summed over the choices.
    assert r.usage.completion_tokens == sum(len(ch.logprobs.content) for ch in r.choices)
    billed("chat-n3-logprobs", r)


def completions():
    c = client()
    r = c.completions.create(model=BASE_MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2)
    assert r.object == "text_completion"
    assert len(r.choices) == 1 and r.choices[0].text
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    billed("completion", r)
    stopped = c.completions.create(model=BASE_MODEL, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[","])
    assert "," not in stopped.choices[0].text
    assert stopped.choices[0].finish_reason == "stop"
    billed("completion-stop", stopped)


def streaming():
    c = client()
    stream = c.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True},
    )
    text, finish, usage, last = "", None, None, None
    for chunk in stream:
        last = chunk
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            delta = chunk.choices[0].delta
            text += delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text and finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0, "include_usage sends a last usage chunk"
    assert last.choices == [], "the usage chunk has no choices"
    billed("chat-stream", last)
    # The same text as without streaming.
    whole = c.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=12, temperature=0)
    assert whole.choices[0].message.content == text, (whole.choices[0].message.content, text)
    billed("chat-unstreamed", whole)
    completion_stream = c.completions.create(
        model=BASE_MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True})
    pieces = [ch for ch in completion_stream]
    assert pieces[-1].usage.completion_tokens == 6
    billed("completion-stream", pieces[-1])


async def concurrent_async():
    c = AsyncOpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0)
    async def one(i):
        return await c.chat.completions.create(
            model=BASE_MODEL, messages=[{"role": "user", "content": f"Number {i}?"}], max_tokens=4, temperature=0)
    results = await asyncio.gather(*(one(i) for i in range(6)))
    for i, r in enumerate(results):
        billed(f"async-{i}", r)


def models():
    listed = client().models.list()
    ids = [m.id for m in listed.data]
    assert BASE_MODEL in ids, ids
    if ADAPTER:
        assert ADAPTER in ids, ids
        adapter = next(m for m in listed.data if m.id == ADAPTER)
        extra = adapter.model_extra or {}
        assert extra.get("parent") == BASE_MODEL, extra
        assert extra.get("price_out") is not None and extra.get("lineage"), extra
        r = client().chat.completions.create(
            model=ADAPTER, messages=[{"role": "user", "content": "Hello"}], max_tokens=5, temperature=0)
        assert r.model == ADAPTER
        billed("adapter-chat", r)


def errors():
    try:
        client("olk_not_a_key").chat.completions.create(
            model=BASE_MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1)
        raise AssertionError("a bad key must be refused")
    except openai.AuthenticationError as e:
        assert e.status_code == 401
    try:
        client().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}], max_tokens=1)
        raise AssertionError("an unknown model must be refused")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and "model_not_found" in str(e.body), e.body
    try:
        client(os.environ["OL_POOR_KEY"]).chat.completions.create(
            model=BASE_MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1)
        raise AssertionError("an account without funds must be refused")
    except openai.APIStatusError as e:
        assert e.status_code == 402 and "insufficient_funds" in str(e.body), (e.status_code, e.body)
    try:
        client().chat.completions.create(
            model=BASE_MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1_000_000)
        raise AssertionError("max_tokens beyond the context must be refused")
    except openai.BadRequestError as e:
        assert "context" in str(e.body), e.body
    try:
        client().chat.completions.create(
            model=BASE_MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1, stream_options={"include_usage": True})
        raise AssertionError("stream_options without stream must be refused")
    except openai.BadRequestError as e:
        assert "stream_options" in str(e.body), e.body
    limited = client(os.environ["OL_LIMITED_KEY"])
    first = limited.chat.completions.create(model=BASE_MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1)
    billed("limited-first", first)
    try:
        limited.chat.completions.create(model=BASE_MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1)
        raise AssertionError("the second request in a minute must be rate limited")
    except openai.RateLimitError as e:
        assert e.status_code == 429
        assert int(e.response.headers["retry-after"]) >= 1


def disconnect():
    """Reads three chunks of a long stream and hangs up: the server stops and bills what it made."""
    c = client()
    messages = [{"role": "user", "content": "Write a long story about a cat."}]
    probe = c.chat.completions.create(model=ADAPTER or BASE_MODEL, messages=messages, max_tokens=1, temperature=0)
    billed("disconnect-probe", probe)
    stream = c.chat.completions.create(
        model=ADAPTER or BASE_MODEL, messages=messages, max_tokens=400, temperature=0, stream=True)
    inference_id = None
    for i, chunk in enumerate(stream):
        inference_id = (chunk.model_extra or {}).get("attribution", {}).get("inference_id")
        if i >= 3:
            break
    stream.close()
    print(json.dumps({"name": "disconnected", "inference_id": inference_id,
                      "prompt_tokens": probe.usage.prompt_tokens}), flush=True)


if __name__ == "__main__":
    chat_basic()
    chat_n_and_logprobs()
    completions()
    streaming()
    asyncio.run(concurrent_async())
    models()
    errors()
    disconnect()
    print("ok", flush=True)
