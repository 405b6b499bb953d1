"""`minhash`: near-duplicate removal with MinHash LSH as map-reduce (FineWeb's setting by
default: word 5-grams, 112 permutations as 14 bands x 8 rows).

Steps, each a set of tasks an executor runs (local pool or SLURM arrays):
  signatures  per shard: MinHash signatures (datasketch) -> one hash per band
  buckets     per band: documents sharing that band's hash -> candidate pairs
  cluster     one task: (optionally true-Jaccard-checked) pairs -> connected components;
              per cluster the keeper is the highest `meta.quality`, else the smallest id
  filter      per shard: drop the documents that are not their cluster's keeper
No step holds the corpus's signatures: a bucket task reads one band column, the cluster
task only the pairs and the ids of documents that are in them.
"""
from __future__ import annotations

import math

import numpy as np
from pydantic import Field, model_validator

from data import minhash
from data.jsonl import read_shard
from pipeline.registry import register
from pipeline.stage import Stage, StageConfig, Step, merge_stats
from pipeline.stages.keyed_dedup import drop_duplicates, save_npz

SHARD_BITS = 32  # a document's global ref is shard << 32 | position


class MinhashConfig(StageConfig):
    ngram: int = Field(5, ge=1, description="word n-gram shingles")
    bands: int = Field(14, ge=1)
    rows: int = Field(8, ge=1, description="permutations = bands x rows")
    seed: int = 1
    batch_docs: int = Field(2000, ge=1, description="documents signed per datasketch batch (bounds memory)")
    verify_jaccard: float | None = Field(None, ge=0, le=1, description="keep only pairs whose true Jaccard is >= this")

    @model_validator(mode="after")
    def _check(self):
        if self.bands * self.rows > 2**16:
            raise ValueError("bands x rows is too many permutations")
        return self


def size_histogram(sizes: np.ndarray) -> dict[str, int]:
    edges = [(2, 2), (3, 5), (6, 10), (11, 100), (101, math.inf)]
    return {(f"{lo}" if lo == hi else f"{lo}+" if hi == math.inf else f"{lo}-{hi}"): int(((sizes >= lo) & (sizes <= hi)).sum())
            for lo, hi in edges}


@register
class MinhashDedupStage(Stage):
    type_name = "minhash"
    Config = MinhashConfig
    code_modules = ("data.minhash", "data.dedup_keys", "data.jsonl", "pipeline.stages.keyed_dedup")
    description = "near-duplicate removal with MinHash LSH (datasketch), map-reduce"

    def steps(self) -> list[Step]:
        shards = len(self.input_shards())
        return [Step("signatures", shards), Step("buckets", self.config.bands), Step("cluster", 1),
                Step("filter", shards)]

    def num_output_shards(self) -> int:
        return len(self.input_shards())

    def _work(self, *parts):
        return self.out_dir.joinpath("_work", *parts)

    # --- map: signatures and band hashes per shard
    def _signatures(self, task: int) -> dict:
        c = self.config
        bands, ids, quality, keep_shingles, offsets = [], [], [], [], [0]
        unsigned = 0
        batch: list[dict] = []

        def flush():
            nonlocal unsigned
            shingles = minhash.shingle_hashes([d["text"] for d in batch], c.ngram)
            sigs = minhash.signatures(shingles, c.bands * c.rows, c.seed)
            bh = minhash.band_hashes(sigs, c.bands, c.rows)
            empty = np.array([len(s) == 0 for s in shingles], dtype=bool)
            bh[empty] = 0  # no shingles: never a candidate (0 marks "not bucketed")
            unsigned += int(empty.sum())
            bands.append(bh)
            if c.verify_jaccard is not None:
                keep_shingles.extend(shingles)
            batch.clear()

        for doc in read_shard(self.input_shards()[task]):
            ids.append(doc["id"])
            q = (doc.get("meta") or {}).get("quality")
            quality.append(float(q) if isinstance(q, (int, float)) else np.nan)
            batch.append(doc)
            if len(batch) >= c.batch_docs:
                flush()
        if batch:
            flush()
        band = np.concatenate(bands) if bands else np.zeros((0, c.bands), dtype=np.uint64)
        arrays = {f"band{b}": band[:, b] for b in range(c.bands)}
        arrays["id"] = np.array(ids, dtype=str) if ids else np.array([], dtype="U1")
        arrays["quality"] = np.array(quality, dtype=np.float64)
        if c.verify_jaccard is not None:
            offsets = np.concatenate([[0], np.cumsum([len(s) for s in keep_shingles])]).astype(np.int64)
            arrays["shingles"] = np.concatenate(keep_shingles) if keep_shingles else np.array([], np.uint32)
            arrays["offsets"] = offsets
        save_npz(self._work("signatures", f"{task:05d}.npz"), arrays)
        return {"docs_signed": len(ids) - unsigned, "docs_without_shingles": unsigned}

    # --- reduce 1: per band, documents sharing the band hash
    def _buckets(self, band: int) -> dict:
        hashes, refs = [], []
        for shard in range(len(self.input_shards())):
            with np.load(self._work("signatures", f"{shard:05d}.npz")) as z:
                h = z[f"band{band}"]
            pos = np.flatnonzero(h != 0)
            hashes.append(h[pos])
            refs.append((np.int64(shard) << SHARD_BITS) | pos.astype(np.int64))
        pairs = minhash.colliding_pairs(np.concatenate(hashes), np.concatenate(refs)) if hashes else np.zeros((0, 2), np.int64)
        save_npz(self._work("pairs", f"{band:05d}.npz"), {"pairs": pairs})
        return {"candidate_pairs": int(len(pairs))}

    # --- reduce 2: pairs -> clusters -> who goes
    def _load_docs(self, refs: np.ndarray, keys: tuple[str, ...]) -> dict[str, list]:
        """Columns of the signature files for the given refs (in refs order), shard by shard."""
        out = {k: [None] * len(refs) for k in keys}
        shards = refs >> SHARD_BITS
        for shard in np.unique(shards).tolist():
            sel = np.flatnonzero(shards == shard)
            pos = refs[sel] & ((1 << SHARD_BITS) - 1)
            with np.load(self._work("signatures", f"{shard:05d}.npz")) as z:
                for key in keys:
                    if key == "shingles":
                        values, offsets = z["shingles"], z["offsets"]
                        for i, p in zip(sel.tolist(), pos.tolist()):
                            out[key][i] = values[offsets[p] : offsets[p + 1]]
                    else:
                        col = z[key][pos]
                        for i, v in zip(sel.tolist(), col.tolist()):
                            out[key][i] = v
        return out

    def _cluster(self, _task: int) -> dict:
        pairs = np.zeros((0, 2), np.int64)
        for band in range(self.config.bands):  # bands mostly repeat the same pairs: merge as we go
            with np.load(self._work("pairs", f"{band:05d}.npz")) as z:
                if len(z["pairs"]):
                    pairs = np.unique(np.concatenate([pairs, z["pairs"].astype(np.int64)]), axis=0)
        candidates = len(pairs)
        if self.config.verify_jaccard is not None and len(pairs):
            ends = np.unique(pairs.ravel())
            shingles = dict(zip(ends.tolist(), self._load_docs(ends, ("shingles",))["shingles"]))
            similar = np.array([minhash.jaccard(shingles[a], shingles[b]) >= self.config.verify_jaccard
                                for a, b in pairs.tolist()], dtype=bool)
            pairs = pairs[similar]
        nodes, label = minhash.connected_components(pairs)
        info = self._load_docs(nodes, ("id", "quality"))
        ids = np.array(info["id"], dtype=str) if len(nodes) else np.array([], dtype="U1")
        quality = np.nan_to_num(np.array(info["quality"], dtype=np.float64), nan=-np.inf)
        # keeper per cluster: highest quality, then smallest id
        order = np.lexsort((ids, -quality, label))
        label_sorted = label[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = label_sorted[1:] != label_sorted[:-1]
        keeper_of_label = dict(zip(label_sorted[first].tolist(), ids[order][first].tolist()))
        removed = order[~first]
        sizes = np.bincount(label)[np.unique(label)] if len(label) else np.array([], dtype=np.int64)
        save_npz(self._work("removals.npz"), {
            "ref": nodes[removed], "kept": np.array([keeper_of_label[l] for l in label[removed].tolist()], dtype=str)
            if len(removed) else np.array([], dtype="U1")})
        return {"candidate_pairs": int(candidates), "pairs_after_check": int(len(pairs)),
                "clusters": int(len(sizes)), "cluster_sizes": size_histogram(sizes)}

    # --- filter
    def _filter(self, task: int) -> dict:
        with np.load(self._work("removals.npz")) as z:
            mine = (z["ref"] >> SHARD_BITS) == task
            duplicate_of = dict(zip((z["ref"][mine] & ((1 << SHARD_BITS) - 1)).tolist(), z["kept"][mine].tolist()))
        return drop_duplicates(self.input_shards()[task], self.out_dir, task, duplicate_of, "near_duplicate")

    def finalize(self, task_stats):
        stats = merge_stats(task_stats["filter"])
        stats.update({k: v for k, v in merge_stats(task_stats["signatures"]).items() if k != "seconds"})
        cluster = task_stats["cluster"][0]
        stats.update({k: cluster[k] for k in ("candidate_pairs", "pairs_after_check", "clusters", "cluster_sizes")})
        return stats
