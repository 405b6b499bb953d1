"""Classifier stages: `train_classifier` (a fastText model from labelled inputs),
`quality` (meta.quality, keep by threshold or top fraction, OR-combined with trusted
scores already in meta) and `domain` (meta.domain)."""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np
from pydantic import Field

from data.classifier import TextClassifier, read_examples, train_classifier
from data.fasttext_models import hash_split
from data.jsonl import ShardWriter, atomic_write_json, read_shard
from data.readers import ReadOptions
from pipeline.document_stage import DocumentStage, batched
from pipeline.errors import InputError
from pipeline.registry import register
from pipeline.stage import Stage, StageConfig, Step, merge_stats, shard_name, write_marker

MODEL_FILE = "model.bin"


class TrainClassifierConfig(StageConfig):
    labels: dict[str, list[str]] = Field(description="label -> files or folders of its examples (any reader format)")
    text_split: Literal["file", "paragraph", "line", "pattern"] = "paragraph"
    split_pattern: str | None = None
    min_chars: int = Field(100, ge=0, description="shorter examples are skipped")
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(20, ge=1)
    lr: float = Field(0.5, gt=0)
    dim: int = Field(64, ge=2)
    word_ngrams: int = Field(2, ge=1)
    max_chars: int = Field(20_000, ge=100)


@register
class TrainClassifierStage(Stage):
    type_name = "train_classifier"
    Config = TrainClassifierConfig
    code_modules = ("data.classifier", "data.fasttext_models")
    default_input = "none"
    description = "train a fastText classifier (quality, domain) from labelled files; writes model.bin"

    def validate_inputs(self) -> None:
        super().validate_inputs()
        if len(self.config.labels) < 2:
            raise InputError(f"stages.{self.name}.labels: needs at least two labels")
        for label, paths in self.config.labels.items():
            for p in paths:
                if not Path(p).exists() and not any(i.kind == "ref" and p.startswith(i.path) for i in self.inputs):
                    raise InputError(f"stages.{self.name}.labels.{label}: not found: {p}")

    def steps(self) -> list[Step]:
        return [Step("train", 1)]

    def run_task(self, step: str, task: int) -> dict:
        start = time.perf_counter()
        c = self.config
        opts = ReadOptions(text_split=c.text_split, split_pattern=c.split_pattern)
        examples = {label: [t for t in read_examples(paths, opts) if len(t) >= c.min_chars]
                    for label, paths in c.labels.items()}
        empty = [label for label, texts in examples.items() if not texts]
        if empty:
            raise InputError(f"stage {self.name}: no examples of at least {c.min_chars} characters for {empty}")
        train, valid = hash_split(examples, c.valid_fraction)
        model = train_classifier(train, self.out_dir / MODEL_FILE, epochs=c.epochs, lr=c.lr, dim=c.dim,
                                 word_ngrams=c.word_ngrams, max_chars=c.max_chars, seed=self.seed)
        report = TextClassifier(model).evaluate(valid) if valid else {}
        report["examples"] = {label: len(texts) for label, texts in examples.items()}
        atomic_write_json(self.out_dir / "report.json", report)
        stats = {"examples": report["examples"], "held_out": len(valid),
                 "held_out_accuracy": report.get("accuracy"), "seconds": time.perf_counter() - start}
        write_marker(self.task_marker(step, task), stats)
        return stats


class QualityConfig(StageConfig):
    model: str = Field(description="fastText quality model (path, or stage:NAME/model.bin)")
    positive_label: str = "hq"
    threshold: float | None = Field(0.5, ge=0, le=1, description="keep if meta.quality >= threshold")
    keep_top_fraction: float | None = Field(None, gt=0, le=1, description="instead: keep the best fraction")
    trusted_scores: dict[str, float] = Field(default_factory=dict,
                                             description="meta key -> minimum: also keep if any of these says keep")
    max_chars: int = Field(20_000, ge=100)
    batch_docs: int = Field(1024, ge=1)


@register
class QualityStage(Stage):
    type_name = "quality"
    Config = QualityConfig
    code_modules = ("data.classifier", "data.fasttext_models")
    description = "fastText quality score -> meta.quality; keep by threshold or top fraction (OR trusted scores)"

    def validate_inputs(self) -> None:
        super().validate_inputs()
        if self.config.threshold is None and self.config.keep_top_fraction is None:
            raise InputError(f"stages.{self.name}: set threshold or keep_top_fraction")
        if not Path(self.config.model).exists() and not any(i.kind == "ref" for i in self.inputs):
            raise InputError(f"stages.{self.name}.model not found: {self.config.model}")

    def steps(self) -> list[Step]:
        shards = len(self.input_shards())
        if self.config.keep_top_fraction is None:
            return [Step("filter", shards)]
        return [Step("score", shards), Step("cutoff", 1), Step("filter", shards)]

    def num_output_shards(self) -> int:
        return len(self.input_shards())

    def _scores(self, docs: list[dict]) -> np.ndarray:
        clf = TextClassifier(self.config.model, self.config.max_chars)
        out = [clf.probability([d["text"] for d in docs[i:i + self.config.batch_docs]], self.config.positive_label)
               for i in range(0, len(docs), self.config.batch_docs)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def _score(self, task: int) -> dict:
        scores = self._scores(list(read_shard(self.input_shards()[task])))
        path = self.out_dir / "_work" / f"scores-{task:05d}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
        np.save(tmp, scores)
        tmp.replace(path)
        return {}

    def _cutoff(self, _task: int) -> dict:
        scores = np.concatenate([np.load(self.out_dir / "_work" / f"scores-{s:05d}.npy")
                                 for s in range(len(self.input_shards()))])
        cutoff = float(np.quantile(scores, 1 - self.config.keep_top_fraction)) if len(scores) else 0.0
        atomic_write_json(self.out_dir / "_work" / "cutoff.json", {"cutoff": cutoff})
        return {"quality_cutoff": cutoff}

    def _filter(self, task: int) -> dict:
        c = self.config
        threshold = c.threshold
        if c.keep_top_fraction is not None:
            threshold = json.loads((self.out_dir / "_work" / "cutoff.json").read_text())["cutoff"]
        source = self.input_shards()[task]
        docs = list(read_shard(source))
        scores = self._scores(docs)
        kept, removed, rescued = 0, 0, 0
        with ShardWriter(self.out_dir / shard_name(task)) as out, \
                ShardWriter(self.out_dir / "removed" / shard_name(task)) as rejected:
            for doc, score in zip(docs, scores.tolist()):
                meta = {**doc.get("meta", {}), "quality": round(score, 4)}
                doc = {**doc, "meta": meta}
                trusted = any(isinstance(meta.get(k), (int, float)) and meta[k] >= v for k, v in c.trusted_scores.items())
                if score >= threshold or trusted:
                    out.write(doc)
                    kept += 1
                    rescued += score < threshold
                else:
                    rejected.write({**doc, "reason": "quality_below_threshold"})
                    removed += 1
        return {"docs_in": len(docs), "docs_out": kept,
                "removed": {"quality_below_threshold": removed} if removed else {},
                "kept_by_trusted_score": rescued, "quality_mean": float(scores.mean()) if len(scores) else 0.0,
                "bytes_in": source.stat().st_size, "bytes_out": (self.out_dir / shard_name(task)).stat().st_size}

    def finalize(self, task_stats):
        stats = merge_stats(task_stats["filter"])
        n = len(task_stats["filter"])
        stats["quality_mean"] = stats.get("quality_mean", 0.0) / max(n, 1)
        if "cutoff" in task_stats:
            stats["quality_cutoff"] = task_stats["cutoff"][0]["quality_cutoff"]
        return stats


class DomainConfig(StageConfig):
    model: str = Field(description="fastText domain model (path, or stage:NAME/model.bin)")
    multilingual_label: str | None = Field("multilingual", description="label for non-English documents; null: use the model")
    english: list[str] = Field(default_factory=lambda: ["en"], description="meta.lang values that are not multilingual")
    max_chars: int = Field(20_000, ge=100)
    batch_docs: int = Field(1024, ge=1)


@register
class DomainStage(DocumentStage):
    type_name = "domain"
    Config = DomainConfig
    code_modules = ("data.classifier", "pipeline.document_stage")
    description = "fastText domain classifier -> meta.domain (multilingual from meta.lang)"

    def validate_inputs(self) -> None:
        super().validate_inputs()
        if not Path(self.config.model).exists() and not any(i.kind == "ref" for i in self.inputs):
            raise InputError(f"stages.{self.name}.model not found: {self.config.model}")

    def process(self, docs: Iterable[dict]) -> Iterator[tuple[dict, str | None]]:
        c = self.config
        clf = TextClassifier(c.model, c.max_chars)
        for batch in batched(docs, c.batch_docs):
            for doc, label in zip(batch, clf.predict([d["text"] for d in batch])):
                lang = doc.get("meta", {}).get("lang")
                if c.multilingual_label and lang is not None and lang not in c.english:
                    label = c.multilingual_label
                doc["meta"] = {**doc.get("meta", {}), "domain": label}
                yield doc, None

    def run_task(self, step, task):
        stats = super().run_task(step, task)
        domains = Counter(d.get("meta", {}).get("domain") for d in read_shard(self.out_dir / shard_name(task)))
        stats["domains"] = dict(domains)
        write_marker(self.task_marker(step, task), stats)
        return stats
