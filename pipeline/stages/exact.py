"""`exact`: exact-duplicate removal (normalized text hash), three steps of tasks."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from data.exact_dedup import bucket_hashes, find_duplicates, normalize_for_hash, text_hash
from data.jsonl import ShardWriter, read_shard
from pipeline.registry import register
from pipeline.stage import Stage, StageConfig, Step, merge_stats, shard_name, write_marker


class ExactConfig(StageConfig):
    lowercase: bool = False
    strip_punctuation: bool = False
    buckets: int = Field(4, ge=1, description="reduce tasks; each holds one bucket of hashes")


def _save_npz(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


@register
class ExactDedupStage(Stage):
    type_name = "exact"
    code_modules = ("data.exact_dedup", "data.jsonl")
    Config = ExactConfig
    description = "remove exact duplicates of normalized text, keeping the first"

    def steps(self) -> list[Step]:
        shards = len(self.input_shards())
        return [Step("hash", shards), Step("reduce", self.config.buckets), Step("filter", shards)]

    def num_output_shards(self) -> int:
        return len(self.input_shards())

    def _work(self, *parts: str) -> Path:
        return self.out_dir.joinpath("_work", *parts)

    def run_task(self, step: str, task: int) -> dict:
        start = time.perf_counter()
        stats = {"hash": self._hash, "reduce": self._reduce, "filter": self._filter}[step](task)
        stats["seconds"] = time.perf_counter() - start
        write_marker(self.task_marker(step, task), stats)
        return stats

    def _hash(self, task: int) -> dict:
        c = self.config
        docs = list(read_shard(self.input_shards()[task]))
        hashes = np.array([text_hash(normalize_for_hash(d["text"], c.lowercase, c.strip_punctuation)) for d in docs],
                          dtype=np.uint64)
        _save_npz(self._work("hash", f"{task:05d}.npz"), bucket_hashes(hashes, [d["id"] for d in docs], c.buckets))
        return {"docs_hashed": len(docs)}

    def _reduce(self, bucket: int) -> dict:
        parts = {"hash": [], "shard": [], "pos": [], "id": []}
        for shard in range(len(self.input_shards())):
            with np.load(self._work("hash", f"{shard:05d}.npz")) as z:
                parts["hash"].append(z[f"hash{bucket}"])
                parts["pos"].append(z[f"pos{bucket}"])
                parts["id"].append(z[f"id{bucket}"])
                parts["shard"].append(np.full(len(z[f"hash{bucket}"]), shard, dtype=np.int64))
        cat = {k: np.concatenate(v) if v else np.array([]) for k, v in parts.items()}
        shards, positions, kept_ids = find_duplicates(cat["hash"], cat["shard"], cat["pos"], cat["id"].astype(str))
        _save_npz(self._work("dups", f"{bucket:05d}.npz"), {"shard": shards, "pos": positions, "kept": kept_ids})
        return {"duplicates_found": int(len(shards))}

    def _filter(self, task: int) -> dict:
        duplicate_of: dict[int, str] = {}
        for bucket in range(self.config.buckets):
            with np.load(self._work("dups", f"{bucket:05d}.npz")) as z:
                mine = z["shard"] == task
                duplicate_of.update(zip(z["pos"][mine].tolist(), z["kept"][mine].tolist()))
        kept = removed = 0
        source = self.input_shards()[task]
        with ShardWriter(self.out_dir / shard_name(task)) as out, \
                ShardWriter(self.out_dir / "removed" / shard_name(task)) as rejected:
            for pos, doc in enumerate(read_shard(source)):
                if pos in duplicate_of:
                    rejected.write({**doc, "reason": "exact_duplicate", "duplicate_of": duplicate_of[pos]})
                    removed += 1
                else:
                    out.write(doc)
                    kept += 1
        return {"docs_in": kept + removed, "docs_out": kept, "removed": {"exact_duplicate": removed} if removed else {},
                "bytes_in": source.stat().st_size, "bytes_out": (self.out_dir / shard_name(task)).stat().st_size}

    def finalize(self, task_stats: dict[str, list[dict]]) -> dict:
        stats = merge_stats(task_stats["filter"])
        stats["duplicates_found"] = sum(s["duplicates_found"] for s in task_stats["reduce"])
        return stats
