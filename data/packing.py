"""Packing token streams into fixed-length sequences with document boundaries kept.

Documents are concatenated with EOS between them and cut every `seq_len` tokens; a
document longer than a sequence continues in the next one (split, never dropped). Each
sequence records where documents start in it, so attention can be masked per document.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np


def pack(docs: Iterable[list[int]], seq_len: int, eos_id: int, pad_id: int, dtype=np.uint16
         ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Yields (tokens[seq_len], doc_starts int32, valid length); the last sequence is padded."""
    buf: list[np.ndarray] = []
    starts: list[int] = []
    filled = 0
    for ids in docs:
        doc = np.asarray(list(ids) + [eos_id], dtype=dtype)
        offset = 0
        starts.append(filled)
        while offset < len(doc):
            take = min(seq_len - filled, len(doc) - offset)
            buf.append(doc[offset : offset + take])
            filled += take
            offset += take
            if filled == seq_len:
                yield np.concatenate(buf), np.array(starts, dtype=np.int32), seq_len
                buf, starts, filled = [], [], 0
                if offset < len(doc):
                    starts.append(0)  # the document goes on: a new segment starts the next sequence
    if filled:
        tokens = np.full(seq_len, pad_id, dtype=dtype)
        tokens[:filled] = np.concatenate(buf)
        yield tokens, np.array(starts, dtype=np.int32), filled


def document_ids(doc_starts: np.ndarray, length: int) -> np.ndarray:
    """Per position, the index of the document segment it belongs to (for attention masks)."""
    ids = np.zeros(length, dtype=np.int32)
    ids[doc_starts[doc_starts < length][1:]] = 1
    return np.cumsum(ids)
