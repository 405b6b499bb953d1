"""`exact`: exact-duplicate removal on normalized text; keeps the first by input order."""
from __future__ import annotations

import numpy as np

from data.dedup_keys import key_hash, normalize_for_hash
from pipeline.registry import register
from pipeline.stages.keyed_dedup import KeyedDedupConfig, KeyedDedupStage


class ExactConfig(KeyedDedupConfig):
    lowercase: bool = False
    strip_punctuation: bool = False


@register
class ExactDedupStage(KeyedDedupStage):
    type_name = "exact"
    Config = ExactConfig
    code_modules = ("data.dedup_keys", "data.jsonl", "pipeline.stages.keyed_dedup")
    description = "remove exact duplicates of normalized text, keeping the first"
    reason = "exact_duplicate"

    def keys(self, docs):
        c = self.config
        hashes = np.array([key_hash(normalize_for_hash(d["text"], c.lowercase, c.strip_punctuation)) for d in docs],
                          dtype=np.uint64)
        return hashes, np.zeros(len(docs), dtype=np.int64), np.ones(len(docs), dtype=bool), {}
