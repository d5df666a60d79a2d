"""The dedup step of Python `datasketch` MinHashLSH on the corpus the Rust bench writes.

Reads the JSON lines of `cargo bench -p openledger-screen --bench dedup -- --write-corpus PATH`
and runs, per record and in corpus order: shingle the text, build a 128-permutation MinHash,
`lsh.query`, then `lsh.insert` -- the same step `crates/screen/benches/dedup.rs`
times for the Rust index. Single-threaded (datasketch is); run it pinned (`taskset -c 1`).

Shingles are formed exactly as `dedup::shingles` forms them: lower case, split on whitespace,
5 consecutive words joined by one space (the whole text when it has at most 5 words). Since
2026-12-04 the Rust index shingles records under 600 normalised characters by characters
instead; the bench's records are all longer (about 1,150), so word 5-grams are what it uses. The
script checks that by recomputing the exact Jaccard of every planted pair and comparing it with
the value the Rust bench wrote.

A record is "flagged" under one of two decisions:
  any       -- the query returned any candidate (datasketch's own semantics);
  estimate  -- some candidate's MinHash estimate reaches 0.8 - 3 sigma = 0.694, as the Rust
               index accepts; the best such candidate is the match.
Recall counts planted copies with exact J >= 0.8 whose original is found (for `any`: among the
candidates; for `estimate`: the best accepted candidate, as Rust's `nearest`). The false-positive
rate counts flagged planted copies with J < 0.5 plus flagged random records, over both.

Runs are named LSH-DECISION[-CONSTRUCTION]: LSH `auto` is `MinHashLSH(threshold=0.8)` (which
picks its own bands and rows), `32x4` is `params=(32, 4)` as the Rust index; the MinHash is
built with `MinHash.generator` and the default SHA-1 hash unless the name ends in `-per-record`
(`MinHash(num_perm=128)` + `update_batch` per record) or `-xxhash` (`hashfunc=xxh32_intdigest`).
`--sweep` adds `MinHashLSH(threshold=t)` for lower t, to find where its recall at J >= 0.8
meets the Rust index's.

Usage: compare.py CORPUS.jsonl [--records N] [--runs NAME,...] [--sweep] [--repeat N]
"""

import argparse
import json
import math
import sys
import time

import datasketch
import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH

NUM_PERM = 128
THRESHOLD = 0.8
SHINGLE_WORDS = 5
# The Rust index's acceptance level: threshold minus three standard deviations of the estimator.
ACCEPT_AT = THRESHOLD - 3 * math.sqrt(THRESHOLD * (1 - THRESHOLD) / NUM_PERM)


def shingles(text, words_per_shingle=SHINGLE_WORDS):
    """The shingles of `dedup::shingles` (Rust): lower case, whitespace-split word n-grams."""
    words = text.lower().split()
    if len(words) <= words_per_shingle:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + words_per_shingle]) for i in range(len(words) - words_per_shingle + 1)]


def encoded_shingles(text):
    return [shingle.encode("utf-8") for shingle in shingles(text)]


def exact_jaccard(a, b):
    a, b = set(shingles(a)), set(shingles(b))
    return len(a & b) / max(len(a | b), 1)


def load(path, limit):
    records = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["id"] != len(records):
                sys.exit(f"record {record['id']} out of order in {path}")
            records.append(record)
            if limit and len(records) >= limit:
                break
    return records


def check_shingles(records):
    """Every planted pair's exact Jaccard, recomputed with these shingles, equals Rust's."""
    worst = 0.0
    for record in records:
        if record["dup_of"] is not None:
            jaccard = exact_jaccard(records[record["dup_of"]]["text"], record["text"])
            worst = max(worst, abs(jaccard - record["jaccard"]))
    if worst > 1e-12:
        sys.exit(f"shingles differ from the Rust bench's: exact Jaccard off by up to {worst}")


def minhashes_per_record(records):
    """The documented basic usage: a new `MinHash(num_perm=128)` per record, `update_batch`."""
    for record in records:
        minhash = MinHash(num_perm=NUM_PERM)
        minhash.update_batch(encoded_shingles(record["text"]))
        yield minhash


def minhashes_generator(records, **minhash_args):
    """The documented bulk usage: `MinHash.generator` (what `MinHash.bulk` wraps) initializes
    the permutations once and copies them for each record; streaming, so each record's MinHash
    is still built just before its query."""
    shingle_lists = (encoded_shingles(record["text"]) for record in records)
    return MinHash.generator(shingle_lists, num_perm=NUM_PERM, **minhash_args)


def minhashes_generator_xxhash(records):
    """`MinHash.generator` with a faster 32-bit hash than the default SHA-1, as the `hashfunc`
    documentation suggests (it names farmhash; xxHash has wheels for every platform)."""
    return minhashes_generator(records, hashfunc=xxhash.xxh32_intdigest)


def dedup_step(records, lsh, minhashes, decision):
    """Per record: MinHash, query, insert. Returns the elapsed seconds and, per record, the
    candidates (`any`) or the best accepted candidate (`estimate`)."""
    found = []
    indexed = []
    started = time.perf_counter()
    for key, minhash in enumerate(minhashes):
        candidates = lsh.query(minhash)
        if decision == "any":
            found.append(candidates)
        else:
            best, best_estimate = None, -1.0
            for candidate in candidates:
                estimate = minhash.jaccard(indexed[candidate])
                if estimate >= ACCEPT_AT and estimate > best_estimate:
                    best, best_estimate = candidate, estimate
            found.append(best)
            indexed.append(minhash)
        # Keys are fresh integers; skip the duplicate-key check as the documentation allows.
        lsh.insert(key, minhash, check_duplication=False)
    return time.perf_counter() - started, found


def quality(records, found, decision):
    high = high_found = low = low_flagged = random = random_flagged = 0
    for record, result in zip(records, found):
        flagged = bool(result) if decision == "any" else result is not None
        if record["dup_of"] is None:
            random += 1
            random_flagged += flagged
        elif record["jaccard"] >= THRESHOLD:
            high += 1
            original = record["dup_of"]
            high_found += (original in result) if decision == "any" else (result == original)
        elif record["jaccard"] < 0.5:
            low += 1
            low_flagged += flagged
    return {
        "recall": high_found / max(high, 1),
        "high_pairs": high,
        "fpr": (low_flagged + random_flagged) / max(low + random, 1),
        "low_flagged": low_flagged,
        "low_pairs": low,
        "random_flagged": random_flagged,
        "random_records": random,
    }


# name: (MinHash construction, MinHashLSH arguments, decision)
RUNS = {
    "auto-any": (minhashes_generator, {"threshold": THRESHOLD}, "any"),
    "auto-estimate": (minhashes_generator, {"threshold": THRESHOLD}, "estimate"),
    "32x4-any": (minhashes_generator, {"params": (32, 4)}, "any"),
    "32x4-estimate": (minhashes_generator, {"params": (32, 4)}, "estimate"),
    "auto-any-per-record": (minhashes_per_record, {"threshold": THRESHOLD}, "any"),
    "auto-any-xxhash": (minhashes_generator_xxhash, {"threshold": THRESHOLD}, "any"),
    "32x4-estimate-xxhash": (minhashes_generator_xxhash, {"params": (32, 4)}, "estimate"),
}
# Lower thresholds make MinHashLSH choose more bands of fewer rows: higher recall at 0.8.
SWEEP = {
    f"t{threshold}-{decision}-xxhash": (minhashes_generator_xxhash, {"threshold": threshold}, decision)
    for threshold in [0.75, 0.7, 0.65, 0.6, 0.55]
    for decision in ("any", "estimate")
}


def run(records, name, construction, lsh_args, decision, repeats):
    """The fastest of `repeats` passes, each with a fresh index (the results are the same)."""
    elapsed = math.inf
    for _ in range(repeats):
        lsh = MinHashLSH(num_perm=NUM_PERM, **lsh_args)
        seconds, found = dedup_step(records, lsh, construction(records), decision)
        elapsed = min(elapsed, seconds)
    result = quality(records, found, decision)
    result.update(name=name, bands=lsh.b, rows=lsh.r, per_second=len(records) / elapsed,
                  micros=elapsed * 1e6 / len(records))
    print(
        f"{name}: b={lsh.b} r={lsh.r}: {result['per_second']:,.0f} records/s ({result['micros']:.1f} µs each); "
        f"recall {result['recall']:.4f} over {result['high_pairs']} pairs with J ≥ {THRESHOLD}; "
        f"false-positive rate {result['fpr']:.4f} over {result['low_pairs'] + result['random_records']} "
        f"({result['low_flagged']} of {result['low_pairs']} planted pairs with J < 0.5 and "
        f"{result['random_flagged']} of {result['random_records']} random records flagged)",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--records", type=int, default=0, help="use only the first N records")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated, of: " + ", ".join({**RUNS, **SWEEP}))
    parser.add_argument("--sweep", action="store_true", help="also MinHashLSH(threshold=t) for lower t")
    parser.add_argument("--repeat", type=int, default=1, help="report the fastest of N passes")
    args = parser.parse_args()

    records = load(args.corpus, args.records)
    check_shingles(records)
    size = sum(len(record["text"].encode("utf-8")) for record in records) // len(records)
    print(f"datasketch {datasketch.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}; "
          f"{len(records)} records of {size} B average; accept at estimate ≥ {ACCEPT_AT:.4f}", flush=True)
    names = args.runs.split(",") + (list(SWEEP) if args.sweep else [])
    for name in names:
        run(records, name, *{**RUNS, **SWEEP}[name], args.repeat)


if __name__ == "__main__":
    main()
