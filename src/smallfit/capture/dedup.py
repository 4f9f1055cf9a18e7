"""Merging exact and near-duplicate texts, so that no text or near-copy of one can sit in
both train and test.

Texts are normalised (case folded, punctuation dropped, spaces collapsed); equal normalised
texts are exact duplicates. Near-duplicates are pairs whose character 5-gram sets have a Jaccard
similarity of at least ``threshold``:
candidates come from MinHash signatures banded for locality-sensitive hashing, and every
candidate pair is checked exactly, so no pair is merged below the threshold. Clusters are the
connected components of the merged pairs.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from smallfit.data.dataset import normalise_text as normalise

_PRIME = (1 << 61) - 1
HASHES, BANDS = 64, 16  # 16 bands of 4 rows: a pair at Jaccard 0.8 shares a band with p > 0.999


def shingles(norm: str) -> set[int]:
    """The normalised text's character 5-grams, hashed."""
    return {zlib.crc32(norm[i : i + 5].encode("utf-8")) for i in range(max(1, len(norm) - 4))}


def clusters(texts: Sequence[str], *, threshold: float = 0.8, seed: int = 0) -> list[int]:
    """Each text's cluster: the index of the first text of its cluster (itself when unique).
    Exact duplicates (after :func:`normalise`) and near-duplicates (Jaccard >= ``threshold``)
    share a cluster."""
    n = len(texts)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    norms = [normalise(t) for t in texts]
    first: dict[str, int] = {}
    for i, norm in enumerate(norms):
        union(first.setdefault(norm, i), i)
    unique = sorted(first.values())
    if threshold >= 1.0 or len(unique) < 2:
        return [find(i) for i in range(n)]
    sets = [shingles(norms[i]) for i in unique]
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, size=HASHES, dtype=np.int64).astype(object)
    b = rng.integers(0, _PRIME, size=HASHES, dtype=np.int64).astype(object)
    signatures = np.empty((len(unique), HASHES), dtype=np.int64)
    for row, items in enumerate(sets):
        values = np.fromiter(items, dtype=np.int64).astype(object)
        hashed = (np.outer(values, a) + b) % _PRIME  # exact in Python integers
        signatures[row] = hashed.min(axis=0).astype(np.int64)
    rows_per_band = HASHES // BANDS
    seen: set[tuple[int, int]] = set()
    for band in range(BANDS):
        part = signatures[:, band * rows_per_band : (band + 1) * rows_per_band]
        buckets: dict[bytes, list[int]] = {}
        for row in range(len(unique)):
            buckets.setdefault(part[row].tobytes(), []).append(row)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    pair = (members[x], members[y])
                    if pair in seen:
                        continue
                    seen.add(pair)
                    sx, sy = sets[pair[0]], sets[pair[1]]
                    if len(sx & sy) >= threshold * len(sx | sy):
                        union(unique[pair[0]], unique[pair[1]])
    return [find(i) for i in range(n)]
