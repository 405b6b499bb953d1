"""`lines`: remove lines repeated more than K times within buckets of N documents.

Steps: `hash` per shard (line hashes and document counts), `count` per hash partition
(counts (bucket, line) pairs; the global document order fixes the buckets), `filter` per
shard. Documents left shorter than `min_chars` are removed with a reason.
"""
from __future__ import annotations


import numpy as np
from pydantic import Field

from data.jsonl import ShardWriter, read_shard
from data.line_dedup import frequent_lines, line_hashes, remove_lines
from pipeline.registry import register
from pipeline.stage import Stage, StageConfig, Step, merge_stats, shard_name
from pipeline.stages.keyed_dedup import save_npz


class LinesConfig(StageConfig):
    bucket_docs: int = Field(30_000_000, ge=1, description="documents per bucket (Llama 3: 30M)")
    max_repeats: int = Field(6, ge=1, description="a line seen more than this many times in a bucket goes")
    min_chars: int = Field(50, ge=0, description="documents shorter than this after removal go too")
    partitions: int = Field(4, ge=1, description="count tasks; each holds one hash partition")


@register
class LineDedupStage(Stage):
    type_name = "lines"
    Config = LinesConfig
    code_modules = ("data.line_dedup", "data.jsonl", "pipeline.stages.keyed_dedup")
    description = "remove lines repeated more than K times per bucket of N documents"

    def steps(self) -> list[Step]:
        shards = len(self.input_shards())
        return [Step("hash", shards), Step("count", self.config.partitions), Step("filter", shards)]

    def num_output_shards(self) -> int:
        return len(self.input_shards())

    def _work(self, *parts):
        return self.out_dir.joinpath("_work", *parts)

    def _hash(self, task: int) -> dict:
        per_doc = [line_hashes(d["text"]) for d in read_shard(self.input_shards()[task])]
        hashes = np.concatenate(per_doc) if per_doc else np.array([], dtype=np.uint64)
        doc_of_line = np.repeat(np.arange(len(per_doc), dtype=np.int64), [len(h) for h in per_doc])
        counted = hashes != 0
        hashes, doc_of_line = hashes[counted], doc_of_line[counted]
        part = (hashes % np.uint64(self.config.partitions)).astype(np.int64)
        arrays = {"ndocs": np.array(len(per_doc))}
        for p in range(self.config.partitions):
            arrays[f"hash{p}"], arrays[f"doc{p}"] = hashes[part == p], doc_of_line[part == p]
        save_npz(self._work("hash", f"{task:05d}.npz"), arrays)
        return {"lines_hashed": int(counted.sum())}

    def _doc_offsets(self) -> np.ndarray:
        counts = []
        for shard in range(len(self.input_shards())):
            with np.load(self._work("hash", f"{shard:05d}.npz")) as z:
                counts.append(int(z["ndocs"]))
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _count(self, part: int) -> dict:
        offsets = self._doc_offsets()
        buckets, hashes = [], []
        for shard in range(len(offsets) - 1):
            with np.load(self._work("hash", f"{shard:05d}.npz")) as z:
                hashes.append(z[f"hash{part}"])
                buckets.append((z[f"doc{part}"] + offsets[shard]) // self.config.bucket_docs)
        b, h = frequent_lines(np.concatenate(buckets) if buckets else np.array([], np.int64),
                              np.concatenate(hashes) if hashes else np.array([], np.uint64), self.config.max_repeats)
        save_npz(self._work("frequent", f"{part:05d}.npz"), {"bucket": b, "hash": h})
        return {"frequent_lines": int(len(h))}

    def _filter(self, task: int) -> dict:
        offsets = self._doc_offsets()
        first, last = offsets[task], offsets[task + 1] - 1
        n = self.config.bucket_docs
        frequent: dict[int, set[int]] = {}
        for part in range(self.config.partitions):
            with np.load(self._work("frequent", f"{part:05d}.npz")) as z:
                mine = (z["bucket"] >= first // n) & (z["bucket"] <= max(last, first) // n)
                for b, h in zip(z["bucket"][mine].tolist(), z["hash"][mine].tolist()):
                    frequent.setdefault(b, set()).add(h)
        kept = too_short = lines_removed = chars_removed = 0
        source = self.input_shards()[task]
        with ShardWriter(self.out_dir / shard_name(task)) as out, \
                ShardWriter(self.out_dir / "removed" / shard_name(task)) as rejected:
            for pos, original in enumerate(read_shard(source)):
                doc = original
                bucket = (first + pos) // n
                text, gone = remove_lines(doc["text"], line_hashes(doc["text"]), frequent.get(bucket, set()))
                lines_removed += gone
                chars_removed += len(doc["text"]) - len(text)
                if gone:
                    doc = {**doc, "text": text, "meta": {**doc.get("meta", {}), "lines_removed": gone}}
                if len(text) < self.config.min_chars:
                    rejected.write({**original, "reason": "lines_dedup_too_short", "lines_removed": gone})
                    too_short += 1
                else:
                    out.write(doc)
                    kept += 1
        return {"docs_in": kept + too_short, "docs_out": kept,
                "removed": {"lines_dedup_too_short": too_short} if too_short else {},
                "lines_removed": lines_removed, "chars_removed": chars_removed,
                "bytes_in": source.stat().st_size, "bytes_out": (self.out_dir / shard_name(task)).stat().st_size}

    def finalize(self, task_stats):
        stats = merge_stats(task_stats["filter"])
        stats["frequent_lines"] = sum(s["frequent_lines"] for s in task_stats["count"])
        return stats
