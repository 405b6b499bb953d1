"""MinHash near-duplicate detection with datasketch, built for map-reduce.

Shingles are word n-grams of normalized text (lowercase, no punctuation, whitespace
folded). Their 32-bit hashes are computed for a whole batch of documents at once with
numpy (a polynomial hash over the bytes, no Python loop over words), then handed to
datasketch's `MinHash.bulk` with an identity hash function; each signature is cut into
bands whose hashes drive the LSH buckets. Clusters come from connected components of the
colliding pairs, by vectorized label propagation.
"""
from __future__ import annotations

import numpy as np
from datasketch import LeanMinHash, MinHash

from data.dedup_keys import normalize_for_hash

_P = np.uint64(0x100000001B3)  # FNV prime: odd, so invertible modulo 2**64
_P_INV = np.uint64(pow(int(_P), -1, 2**64))
_Q = np.uint64(0x9E3779B97F4A7C15)
_SEP = 32  # the only separator left after normalization


def _fmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every output bit depends on every input bit."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _powers(base: np.uint64, n: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.cumprod(np.concatenate([[np.uint64(1)], np.full(max(n - 1, 0), base, dtype=np.uint64)])).astype(np.uint64)


def shingle_hashes(texts: list[str], ngram: int) -> list[np.ndarray]:
    """Per document, the uint32 hashes of its word n-grams (a document with fewer words than
    `ngram` is one shingle of all its words; an empty one has none)."""
    norm = [normalize_for_hash(t, lowercase=True, strip_punctuation=True) for t in texts]
    buf = np.frombuffer(" ".join(norm).encode("utf-8"), dtype=np.uint8)
    words_per_doc = np.array([len(t.split(" ")) if t else 0 for t in norm], dtype=np.int64)
    if not len(buf) or not words_per_doc.sum():
        return [np.array([], dtype=np.uint32) for _ in texts]
    is_sep = buf == _SEP
    starts = np.flatnonzero(~is_sep & np.concatenate([[True], is_sep[:-1]]))
    ends = np.flatnonzero(~is_sep & np.concatenate([is_sep[1:], [True]])) + 1
    with np.errstate(over="ignore"):
        powers = _powers(_P, len(buf) + 1)
        prefix = np.concatenate([[np.uint64(0)], np.cumsum(buf.astype(np.uint64) * powers[:-1], dtype=np.uint64)])
        inverse = _powers(_P_INV, len(buf) + 1)
        word = _fmix64((prefix[ends] - prefix[starts]) * inverse[starts] + (ends - starts).astype(np.uint64))
        # shingle i combines words i .. i+ngram-1 (those crossing documents are dropped below)
        n_words = len(word)
        span = min(ngram, n_words)
        acc = np.zeros(n_words - span + 1, dtype=np.uint64)
        for k in range(span):  # a loop over the n-gram order, not over words
            acc = acc * _Q + word[k : n_words - span + 1 + k]
    shingle = (_fmix64(acc) >> np.uint64(32)).astype(np.uint32)
    doc_start = np.concatenate([[0], np.cumsum(words_per_doc)])
    out = []
    for d, count in enumerate(words_per_doc.tolist()):
        if count == 0:
            out.append(np.array([], dtype=np.uint32))
        elif count >= ngram:
            out.append(shingle[doc_start[d] : doc_start[d] + count - ngram + 1])
        else:  # shorter than one shingle: all its words as one shingle
            w = word[doc_start[d] : doc_start[d] + count]
            with np.errstate(over="ignore"):
                h = np.uint64(0)
                for x in w:  # fewer than `ngram` words
                    h = h * _Q + x
            out.append((_fmix64(np.array([h], dtype=np.uint64)) >> np.uint64(32)).astype(np.uint32))
    return out


def _identity(x):
    return x


def signatures(shingles: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """(documents, num_perm) uint32 MinHash signatures through datasketch."""
    if not shingles:
        return np.zeros((0, num_perm), dtype=np.uint32)
    hashes = MinHash.bulk(shingles, num_perm=num_perm, seed=seed, hashfunc=_identity)
    return np.stack([LeanMinHash(m).hashvalues for m in hashes]).astype(np.uint32)


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(documents, bands) uint64: one hash of each band's `rows` signature values."""
    n = sigs.shape[0]
    grouped = sigs[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        acc = np.zeros((n, bands), dtype=np.uint64)
        for r in range(rows):  # a loop over rows of a band
            acc = acc * _Q + grouped[:, :, r]
        return _fmix64(acc + np.arange(bands, dtype=np.uint64))


def colliding_pairs(hashes: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """(k, 2) pairs (first ref of a bucket, other ref) for documents sharing a band hash."""
    order = np.lexsort((refs, hashes))
    h, r = hashes[order], refs[order]
    is_first = np.ones(len(h), dtype=bool)
    is_first[1:] = h[1:] != h[:-1]
    head = np.maximum.accumulate(np.where(is_first, np.arange(len(h)), 0))
    return np.stack([r[head[~is_first]], r[~is_first]], axis=1)


def connected_components(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, component label per node) of the graph given by `pairs`, by min-label
    propagation with pointer jumping (vectorized; converges in a few rounds)."""
    if not len(pairs):
        return np.array([], dtype=pairs.dtype), np.array([], dtype=np.int64)
    nodes, inverse = np.unique(pairs.ravel(), return_inverse=True)
    a, b = inverse.reshape(-1, 2).T
    label = np.arange(len(nodes))
    while True:
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]
        if np.array_equal(new, label):
            return nodes, label
        label = new


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.unique(a), np.unique(b)
    union = len(np.union1d(a, b))
    return len(np.intersect1d(a, b, assume_unique=True)) / union if union else 1.0
