"""Line-level dedup as in ccNet and Llama 3: within buckets of N documents, every line seen
more than K times is removed (boilerplate such as navigation, cookie notices, footers).

Lines are hashed after a light normalization (case, digits and whitespace folded) so that
"Copyright 2023" and "Copyright 2024" count as the same line.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np

_DIGITS = re.compile(r"\d")
_WHITESPACE = re.compile(r"\s+")


def normalize_line(line: str) -> str:
    return _WHITESPACE.sub(" ", _DIGITS.sub("0", line.lower())).strip()


def line_hashes(text: str) -> np.ndarray:
    """A 64-bit hash per line; 0 for blank lines, which are never counted or removed."""
    out = []
    for line in text.split("\n"):
        norm = normalize_line(line)
        out.append(int.from_bytes(hashlib.blake2b(norm.encode(), digest_size=8).digest(), "little") | 1 if norm else 0)
    return np.array(out, dtype=np.uint64)


def frequent_lines(buckets: np.ndarray, hashes: np.ndarray, max_repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket, hash) pairs that occur more than `max_repeats` times."""
    if not len(hashes):
        return buckets[:0], hashes[:0]
    pairs = np.stack([buckets.astype(np.uint64), hashes], axis=1)
    unique, counts = np.unique(pairs, axis=0, return_counts=True)
    frequent = unique[counts > max_repeats]
    return frequent[:, 0].astype(np.int64), frequent[:, 1]


def remove_lines(text: str, hashes: np.ndarray, frequent: set[int]) -> tuple[str, int]:
    """The text without its frequent lines, and how many lines went."""
    lines = text.split("\n")
    keep = [line for line, h in zip(lines, hashes.tolist()) if h == 0 or h not in frequent]
    return "\n".join(keep).strip(), len(lines) - len(keep)
