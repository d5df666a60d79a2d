#!/usr/bin/env python3
"""Known answers for `the_journal_export_matches_independently_computed_vectors` in ledger.rs.

Written from the journal format documented in services/ledger/src/books/journal.rs, sharing
no code with the ledger: the transfer encoding, batch and entry hashes, and the epoch Merkle
root per RFC 9162 section 2.1.1 (largest-power-of-two split) with BLAKE3 in place of SHA-256
and the same 0x00 leaf / 0x01 node prefixes. Run once to print the hex the test pins:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install blake3
    /tmp/venv/bin/python services/ledger/tests/journal_vectors.py
"""
from blake3 import blake3

SECOND = 10**9
START = 1_700_000_000 * SECOND
A, B = 70_000, 70_001  # the test fixture's first two accounts
PENDING, POST_PENDING = 2, 4
EPOCH_SECONDS = 86_400


def transfer(id, debit, credit, amount, timestamp, pending_id=0, user_data=0, timeout=0, ledger=1, code=0, flags=0):
    return dict(id=id, debit=debit, credit=credit, amount=amount, pending_id=pending_id, user_data=user_data,
                timeout=timeout, ledger=ledger, code=code, flags=flags, timestamp=timestamp)


# The journal as the ledger must store it: timestamps are the batch's clock, then +1 ns each;
# a post is stored with the accounts, ledger and amount of the hold it resolves.
BATCHES = [
    [transfer(1, A, B, 10, START, user_data=0xABCDEF, code=7),
     transfer(2, A, B, 5, START + 1)],
    [transfer(3, B, A, 3, START + SECOND),
     transfer(5, A, B, 4, START + SECOND + 1, timeout=100_000, flags=PENDING),
     transfer(8, A, B, 1, START + SECOND + 2)],
    [transfer(6, A, B, 4, START + 90_000 * SECOND, pending_id=5, flags=POST_PENDING),
     transfer(4, A, B, 7, START + 90_000 * SECOND + 1)],
]


def encode(t):
    out = b"".join(t[k].to_bytes(16, "big") for k in ("id", "debit", "credit", "amount", "pending_id", "user_data"))
    out += t["timeout"].to_bytes(4, "big") + t["ledger"].to_bytes(4, "big")
    out += t["code"].to_bytes(2, "big") + t["flags"].to_bytes(2, "big") + t["timestamp"].to_bytes(8, "big")
    assert len(out) == 116
    return out


def h(data):
    return blake3(data).digest()


# The BLAKE3 specification's vector for no input, so a wrong hash library fails here.
assert h(b"").hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def mth(leaves):
    """RFC 9162 2.1.1 Merkle Tree Hash over leaf data (here: transfer hashes)."""
    n = len(leaves)
    if n == 0:
        return h(b"")
    if n == 1:
        return h(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return h(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


previous = bytes(32)
epochs = {}
for sequence, batch in enumerate(BATCHES, start=1):
    encoded = [encode(t) for t in batch]
    batch_hash = h(b"".join(encoded))
    entry = h(b"openledger/journal/v1" + previous + sequence.to_bytes(8, "big") + batch_hash
              + len(batch).to_bytes(8, "big") + batch[-1]["timestamp"].to_bytes(8, "big"))
    print(f"entry {sequence}: batch {batch_hash.hex()} entry {entry.hex()}")
    previous = entry
    for t, e in zip(batch, encoded):
        epochs.setdefault(t["timestamp"] // (EPOCH_SECONDS * SECOND), []).append(h(e))
for epoch, hashes in sorted(epochs.items()):
    print(f"epoch {epoch}: {len(hashes)} transfers, root {mth(hashes).hex()}")
