"""`url`: one document per normalized URL, the latest by `date` (as Llama 3 keeps the most
recent version of a page); documents without a URL pass through, counted."""
from __future__ import annotations

import numpy as np

from data.dedup_keys import OLDEST, date_rank, key_hash, normalize_url
from pipeline.registry import register
from pipeline.stages.keyed_dedup import KeyedDedupConfig, KeyedDedupStage


@register
class UrlDedupStage(KeyedDedupStage):
    type_name = "url"
    Config = KeyedDedupConfig
    code_modules = ("data.dedup_keys", "data.jsonl", "pipeline.stages.keyed_dedup")
    description = "keep the latest document per normalized URL"
    reason = "url_duplicate"

    def keys(self, docs):
        urls = [d.get("url") or "" for d in docs]
        has_key = np.array([bool(u.strip()) for u in urls], dtype=bool)
        hashes = np.array([key_hash(normalize_url(u)) if u.strip() else 0 for u in urls], dtype=np.uint64)
        ranks = np.array([date_rank(d.get("date")) for d in docs], dtype=np.int64)
        stats = {"docs_without_url": int((~has_key).sum()),
                 "docs_without_date": int(((ranks == OLDEST) & has_key).sum())}
        return hashes, ranks, has_key, stats
