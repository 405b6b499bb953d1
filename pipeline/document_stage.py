"""Base for stages that map document shards to document shards (filters, labellers).

One task per input shard: kept documents go to `NNNNN.jsonl.zst`, rejected ones to
`removed/NNNNN.jsonl.zst` with their `reason`. Subclasses implement `process`, a
datatrove-style step over a stream of documents.
"""
from __future__ import annotations

import abc

import time
from collections import Counter
from typing import Iterable, Iterator

from data.jsonl import ShardWriter, read_shard
from pipeline.stage import Stage, Step, shard_name, write_marker

MAIN = "main"


def batched(docs: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class DocumentStage(Stage):
    def steps(self) -> list[Step]:
        return [Step(MAIN, len(self.input_shards()))]

    def num_output_shards(self) -> int:
        return len(self.input_shards())

    @abc.abstractmethod
    def process(self, docs: Iterable[dict]) -> Iterator[tuple[dict, str | None]]:
        """Yields (document, None) to keep it or (document, reason) to remove it."""

    def run_task(self, step: str, task: int) -> dict:
        start = time.perf_counter()
        source = self.input_shards()[task]
        removed = Counter()
        kept = 0
        seen = 0
        with ShardWriter(self.out_dir / shard_name(task)) as out, \
                ShardWriter(self.out_dir / "removed" / shard_name(task)) as rejected:
            def counted():
                nonlocal seen
                for doc in read_shard(source):
                    seen += 1
                    yield doc
            for doc, reason in self.process(counted()):
                if reason is None:
                    out.write(doc)
                    kept += 1
                else:
                    rejected.write({**doc, "reason": reason})
                    removed[reason] += 1
        stats = {
            "docs_in": seen, "docs_out": kept, "removed": dict(removed),
            "bytes_in": source.stat().st_size, "bytes_out": (self.out_dir / shard_name(task)).stat().st_size,
            "seconds": time.perf_counter() - start,
        }
        write_marker(self.task_marker(step, task), stats)
        return stats
