"""Exact deduplication as map-reduce over hashes of normalized text.

map: each shard's documents -> 64-bit hashes, partitioned into buckets by hash.
reduce: per bucket, every hash seen before (in shard, position order) is a duplicate of
its first occurrence. filter: each shard drops its duplicates. No step holds more than
one bucket of hashes, plus the (usually small) list of duplicates.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

_WHITESPACE = re.compile(r"\s+")
_PUNCTUATION = re.compile(r"[^\w\s]", re.UNICODE)


def normalize_for_hash(text: str, lowercase: bool = False, strip_punctuation: bool = False) -> str:
    text = unicodedata.normalize("NFC", text)
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = _PUNCTUATION.sub("", text)
    return _WHITESPACE.sub(" ", text).strip()


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def bucket_hashes(hashes: np.ndarray, ids: list[str], num_buckets: int) -> dict[str, np.ndarray]:
    """Arrays per bucket: hash, position in the shard, id (for `duplicate_of`)."""
    positions = np.arange(len(hashes), dtype=np.int64)
    bucket_of = (hashes % np.uint64(num_buckets)).astype(np.int64)
    id_array = np.array(ids, dtype=str) if ids else np.array([], dtype="U1")
    out = {}
    for b in range(num_buckets):
        sel = bucket_of == b
        out[f"hash{b}"], out[f"pos{b}"], out[f"id{b}"] = hashes[sel], positions[sel], id_array[sel]
    return out


def find_duplicates(hashes: np.ndarray, shards: np.ndarray, positions: np.ndarray, ids: np.ndarray):
    """Rows (in the given shard, position order) whose hash appeared earlier, with the first one's id."""
    order = np.lexsort((positions, shards))
    hashes, shards, positions, ids = hashes[order], shards[order], positions[order], ids[order]
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    keeper = first[inverse]
    dup = keeper != np.arange(len(hashes))
    return shards[dup], positions[dup], ids[keeper[dup]]
