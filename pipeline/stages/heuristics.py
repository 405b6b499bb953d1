"""`heuristics`: Gopher, C4, FineWeb and Llama 3 rules (see data/heuristics.py).

With `rules.max_token_kl` set, the stage first measures the corpus's word distribution
(`counts` per shard, `merge` once) so each document's KL divergence from it can be judged.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pydantic import Field

from data.heuristics import HeuristicFilter, HeuristicRules, split_words
from data.jsonl import ShardWriter, atomic_write_json, read_shard
from pipeline.errors import InputError
from pipeline.registry import register
from pipeline.stage import Stage, StageConfig, Step, merge_stats, shard_name


class HeuristicsConfig(StageConfig):
    rules: HeuristicRules = Field(default_factory=HeuristicRules)
    vocab_size: int = Field(200_000, ge=100, description="words kept in the corpus distribution (token outliers)")


@register
class HeuristicsStage(Stage):
    type_name = "heuristics"
    Config = HeuristicsConfig
    code_modules = ("data.heuristics", "data.jsonl")
    description = "Gopher / C4 / FineWeb / Llama 3 heuristic quality rules"

    def validate_inputs(self) -> None:
        super().validate_inputs()
        f = self.config.rules.dirty_words_file
        if f and not Path(f).exists():
            raise InputError(f"stages.{self.name}.rules.dirty_words_file not found: {f}")

    @property
    def uses_kl(self) -> bool:
        return self.config.rules.max_token_kl is not None

    def steps(self) -> list[Step]:
        shards = len(self.input_shards())
        steps = [Step("counts", shards), Step("merge", 1)] if self.uses_kl else []
        return steps + [Step("filter", shards)]

    def num_output_shards(self) -> int:
        return len(self.input_shards())

    def _counts(self, task: int) -> dict:
        counts = Counter()
        for doc in read_shard(self.input_shards()[task]):
            counts.update(split_words(doc["text"].lower(), doc.get("meta", {}).get("lang")))
        top = dict(counts.most_common(self.config.vocab_size))
        atomic_write_json(self.out_dir / "_work" / "counts" / f"{task:05d}.json", {"total": sum(counts.values()), "counts": top})
        return {}

    def _merge(self, _task: int) -> dict:
        total, counts = 0, Counter()
        for shard in range(len(self.input_shards())):
            part = json.loads((self.out_dir / "_work" / "counts" / f"{shard:05d}.json").read_text())
            total += part["total"]
            counts.update(part["counts"])
        atomic_write_json(self.out_dir / "_work" / "corpus_words.json",
                          {"total": total, "counts": dict(counts.most_common(self.config.vocab_size))})
        return {}

    def _filter(self, task: int) -> dict:
        corpus = None
        if self.uses_kl:
            data = json.loads((self.out_dir / "_work" / "corpus_words.json").read_text())
            corpus = (data["counts"], float(data["total"]))
        rules = HeuristicFilter(self.config.rules, corpus)
        removed, kept, lines_removed = Counter(), 0, 0
        source = self.input_shards()[task]
        with ShardWriter(self.out_dir / shard_name(task)) as out, \
                ShardWriter(self.out_dir / "removed" / shard_name(task)) as rejected:
            for doc in read_shard(source):
                text, reason, gone = rules.check(doc["text"], doc.get("meta", {}).get("lang"))
                lines_removed += gone
                if reason:
                    rejected.write({**doc, "reason": reason})
                    removed[reason] += 1
                else:
                    if gone:
                        doc = {**doc, "text": text, "meta": {**doc.get("meta", {}), "c4_lines_removed": gone}}
                    out.write(doc)
                    kept += 1
        return {"docs_in": kept + sum(removed.values()), "docs_out": kept, "removed": dict(removed),
                "c4_lines_removed": lines_removed, "bytes_in": source.stat().st_size,
                "bytes_out": (self.out_dir / shard_name(task)).stat().st_size}

    def finalize(self, task_stats):
        return merge_stats(task_stats["filter"])
