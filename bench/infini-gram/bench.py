"""infini-gram's side of the span bench: builds its suffix array from the token ids the Rust
bench wrote (DIR/index/tokenized.0 and offset.0, its own layout), then times `attribute` (the
OLMoTrace query: maximal spans >= 8 tokens seen at most 100 times) and `count` on each query of
DIR/queries.jsonl. Prints markdown table rows. Usage: bench.py DIR"""
import json
import os
import subprocess
import sys
import time

from infini_gram.engine import InfiniGramEngine
import infini_gram

SMOLLM2_VOCAB = 49152
SMOLLM2_EOS = 0


def pct(sorted_ms, p):
    return sorted_ms[min(len(sorted_ms) - 1, -(-(len(sorted_ms) - 1) * p // 100))]


def timed(queries, run):
    ms = []
    for q in queries:
        started = time.perf_counter()
        run(q)
        ms.append((time.perf_counter() - started) * 1e3)
    return sorted(ms)


def main():
    out = sys.argv[1]
    index = os.path.join(out, 'index')
    raw = os.path.join(out, 'raw')
    os.makedirs(raw, exist_ok=True)
    docs = os.path.getsize(os.path.join(index, 'offset.0')) // 8
    tokens = os.path.getsize(os.path.join(index, 'tokenized.0')) // 2 - docs
    started = time.perf_counter()
    # tokenized.0 and offset.0 exist, so indexing skips its tokenizer and only sorts suffixes.
    subprocess.run([sys.executable, '-m', 'infini_gram.indexing', '--data_dir', raw, '--save_dir', index,
                    '--token_dtype', 'u16', '--cpus', '1', '--mem', '2', '--ulimit', '4096'],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    build_s = time.perf_counter() - started
    index_bytes = sum(os.path.getsize(os.path.join(index, f)) for f in os.listdir(index))
    engine = InfiniGramEngine(index_dir=index, eos_token_id=SMOLLM2_EOS, vocab_size=SMOLLM2_VOCAB,
                              token_dtype='u16', precompute_unigram_logprobs=True)
    with open(os.path.join(out, 'queries.jsonl')) as f:
        queries = [json.loads(line) for line in f if line.strip()]
    attribute = lambda q: engine.attribute(q, delim_ids=[], min_len=8, max_cnt=100, enforce_bow=False)
    for q in queries:
        attribute(q)  # warm the page cache, as the Rust side does
    spans = sum(len(attribute(q)['spans']) for q in queries)
    attribute_ms = timed(queries, attribute)
    count_ms = timed(queries, lambda q: engine.count(q))
    version = getattr(infini_gram, '__version__', '2.6.0')
    print(f'| infini-gram {version} | attribute (ids given, no tokenizing) | {pct(attribute_ms, 50):.3f} | {pct(attribute_ms, 99):.3f} | {spans} |')
    print(f'| infini-gram {version} | count of the 64 ids | {pct(count_ms, 50):.3f} | {pct(count_ms, 99):.3f} | |')
    print()
    print(f'infini-gram build (suffix array only, ids given, 1 cpu): {build_s:.2f} s = {tokens / build_s:.0f} tokens/s; '
          f'{index_bytes / tokens:.2f} bytes/token on disk (tokens + suffix array + offsets)')


if __name__ == '__main__':
    main()
