#!/usr/bin/env python3
"""Known-answer vectors for crates/core/src/merkle.rs, computed apart from the Rust code.

The tree is RFC 9162's Merkle Tree Hash (section 2.1.1) with BLAKE3 in place of SHA-256:

    MTH({})      = HASH()
    MTH({d0})    = HASH(0x00 || d0)
    MTH(D[n])    = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))   k = largest power of two < n

and inclusion proofs are PATH(m, D[n]) of section 2.1.3.1. Our tree's entries are 32-byte
content hashes, so the entries here are BLAKE3 of the eight leaf inputs of the
certificate-transparency reference tree (RFC 6962's test data, used by every CT log's tests).

    python3 -m venv /var/tmp/blake3-venv && /var/tmp/blake3-venv/bin/pip install blake3==1.0.11
    /var/tmp/blake3-venv/bin/python crates/core/testdata/merkle_vectors.py
"""
import hashlib

from blake3 import blake3

INPUTS = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]
# (leaf index, tree size) of the inclusion proofs pinned, as in CT's reference tests.
PROOFS = [(0, 1), (0, 8), (5, 8), (2, 3), (1, 5), (6, 7), (4, 5)]


HASH = lambda data: blake3(data).digest()  # noqa: E731


def h(data: bytes) -> bytes:
    return HASH(data)


def largest_power_of_two_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(entries: list[bytes]) -> bytes:
    if not entries:
        return h(b"")
    if len(entries) == 1:
        return h(b"\x00" + entries[0])
    k = largest_power_of_two_below(len(entries))
    return h(b"\x01" + mth(entries[:k]) + mth(entries[k:]))


def path(m: int, entries: list[bytes]) -> list[bytes]:
    n = len(entries)
    if n == 1:
        return []
    k = largest_power_of_two_below(n)
    if m < k:
        return path(m, entries[:k]) + [mth(entries[k:])]
    return path(m - k, entries[k:]) + [mth(entries[:k])]


# The script's MTH first reproduces RFC 6962's published SHA-256 roots of the reference tree
# (certificate-transparency's merkle_tree_test), with the raw inputs as entries.
CT_SHA256_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
HASH = lambda data: hashlib.sha256(data).digest()  # noqa: E731
assert [mth(INPUTS[:size]).hex() for size in range(1, 9)] == CT_SHA256_ROOTS, "MTH disagrees with RFC 6962"
HASH = lambda data: blake3(data).digest()  # noqa: E731

entries = [h(data) for data in INPUTS]
print("roots (tree size 0..=8):")
for size in range(0, len(entries) + 1):
    print(f'    "{mth(entries[:size]).hex()}",')
print("proofs (leaf index, tree size, path):")
for m, n in PROOFS:
    hashes = ", ".join(f'"{node.hex()}"' for node in path(m, entries[:n]))
    print(f"    ({m}, {n}, &[{hashes}]),")
