"""Base for dedup stages that key each document (exact text, URL): three steps of tasks,
`keys` per shard, `reduce` per bucket, `filter` per shard."""
from __future__ import annotations

import abc

import io
import os
from pathlib import Path

import numpy as np
from pydantic import Field

from data.dedup_keys import bucket_keys, find_duplicates
from data.jsonl import ShardWriter, read_shard
from pipeline.stage import Stage, StageConfig, Step, merge_stats, shard_name


class KeyedDedupConfig(StageConfig):
    buckets: int = Field(4, ge=1, description="reduce tasks; each holds one bucket of keys")


def save_npz(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def drop_duplicates(source: Path, out_dir: Path, task: int, duplicate_of: dict[int, str], reason: str) -> dict:
    """The filter pass of every dedup stage: documents at the listed positions go to
    `removed/` with `reason` and `duplicate_of` (the kept document's id), the rest stay."""
    kept = removed = 0
    with ShardWriter(out_dir / shard_name(task)) as out, ShardWriter(out_dir / "removed" / shard_name(task)) as rejected:
        for pos, doc in enumerate(read_shard(source)):
            if pos in duplicate_of:
                rejected.write({**doc, "reason": reason, "duplicate_of": duplicate_of[pos]})
                removed += 1
            else:
                out.write(doc)
                kept += 1
    return {"docs_in": kept + removed, "docs_out": kept, "removed": {reason: removed} if removed else {},
            "bytes_in": source.stat().st_size, "bytes_out": (out_dir / shard_name(task)).stat().st_size}


class KeyedDedupStage(Stage):
    reason: str = "duplicate"

    @abc.abstractmethod
    def keys(self, docs: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """(key hash uint64, preference int64 (higher wins), has_key bool, stats) per document."""

    def steps(self) -> list[Step]:
        shards = len(self.input_shards())
        return [Step("keys", shards), Step("reduce", self.config.buckets), Step("filter", shards)]

    def num_output_shards(self) -> int:
        return len(self.input_shards())

    def _work(self, *parts: str) -> Path:
        return self.out_dir.joinpath("_work", *parts)

    def _keys(self, task: int, batch_docs: int = 10_000) -> dict:
        """Keys for a shard, read in batches so a shard of millions of documents stays small."""
        hashes, preference, has_key, ids, stats = [], [], [], [], []
        batch: list[dict] = []

        def flush():
            h, p, k, st = self.keys(batch)
            hashes.append(h), preference.append(p), has_key.append(k), stats.append(st)
            ids.extend(d["id"] for d in batch)
            batch.clear()

        for doc in read_shard(self.input_shards()[task]):
            batch.append(doc)
            if len(batch) >= batch_docs:
                flush()
        flush()
        hashes, preference, has_key = np.concatenate(hashes), np.concatenate(preference), np.concatenate(has_key)
        keyed_positions = np.flatnonzero(has_key)
        arrays = bucket_keys(hashes[has_key], preference[has_key], [ids[i] for i in keyed_positions.tolist()],
                             self.config.buckets)
        # positions must be those in the shard, not among the keyed documents
        for b in range(self.config.buckets):
            arrays[f"pos{b}"] = keyed_positions[arrays[f"pos{b}"]]
        save_npz(self._work("keys", f"{task:05d}.npz"), arrays)
        return {"docs_keyed": int(has_key.sum()), **merge_stats(stats)}

    def _reduce(self, bucket: int) -> dict:
        cols = {"hash": [], "pref": [], "pos": [], "id": [], "shard": []}
        for shard in range(len(self.input_shards())):
            with np.load(self._work("keys", f"{shard:05d}.npz")) as z:
                for key in ("hash", "pref", "pos", "id"):
                    cols[key].append(z[f"{key}{bucket}"])
                cols["shard"].append(np.full(len(z[f"hash{bucket}"]), shard, dtype=np.int64))
        cat = {k: np.concatenate(v) for k, v in cols.items()} if cols["hash"] else {}
        if not cat or not len(cat["hash"]):
            shards = positions = np.array([], dtype=np.int64)
            winners = np.array([], dtype="U1")
        else:
            shards, positions, winners = find_duplicates(cat["hash"], cat["pref"], cat["shard"], cat["pos"],
                                                         cat["id"].astype(str))
        save_npz(self._work("dups", f"{bucket:05d}.npz"), {"shard": shards, "pos": positions, "kept": winners})
        return {"duplicates_found": int(len(shards))}

    def _filter(self, task: int) -> dict:
        duplicate_of: dict[int, str] = {}
        for bucket in range(self.config.buckets):
            with np.load(self._work("dups", f"{bucket:05d}.npz")) as z:
                mine = z["shard"] == task
                duplicate_of.update(zip(z["pos"][mine].tolist(), z["kept"][mine].tolist()))
        return drop_duplicates(self.input_shards()[task], self.out_dir, task, duplicate_of, self.reason)

    def finalize(self, task_stats: dict[str, list[dict]]) -> dict:
        stats = merge_stats(task_stats["filter"])
        stats.update({k: v for k, v in merge_stats(task_stats["keys"]).items() if k != "seconds"})
        stats["duplicates_found"] = sum(s["duplicates_found"] for s in task_stats["reduce"])
        return stats
