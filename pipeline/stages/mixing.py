"""`mix`, `tokenizer` and `shards`: from labelled documents to packed MDS token streams.

`mix` writes plan.json: per phase, per domain, the target, available and realized tokens
and the repeat factor, plus how the phase selects documents (anneal: the highest-quality
slice of each domain; long_context: documents over a length). `tokenizer` trains
sentencepiece on a sample drawn by the pretrain weights. `shards` tokenizes and packs one
MDS stream per phase per domain; the loader (training/data.py) mixes them by proportion.
With `valid_fraction`, documents whose id hashes below it are kept out of every phase and
packed into one held-out stream per domain under `valid/` instead (validation loss).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from data.jsonl import atomic_write_json, read_shard
from data.mixing import DEFAULT_PRETRAIN_WEIGHTS, PlanError, plan_phase
from data.packing import pack
from data.tokenizer import CHAT_TOKENS, Encoder, export_hf, train_sentencepiece
from pipeline.errors import ConfigError, InputError
from pipeline.registry import register
from pipeline.stage import Stage, StageConfig, Step, merge_stats, write_marker


class PhaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: int = Field(gt=0, description="tokens this phase trains on")
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PRETRAIN_WEIGHTS))
    quality_top_fraction: float | None = Field(None, gt=0, le=1, description="only the best fraction of each domain")
    min_chars: int | None = Field(None, ge=1, description="only documents at least this long (long context)")


def _default_phases() -> dict[str, PhaseConfig]:
    return {"pretrain": PhaseConfig(tokens=1_000_000_000)}


class MixConfig(StageConfig):
    phases: dict[str, PhaseConfig] = Field(default_factory=_default_phases)
    chars_per_token: float = Field(4.0, gt=0, description="token estimate before the tokenizer exists")
    max_repeats: float = Field(4.0, gt=0, description="at most this many epochs of any source")
    allow_shortfall: bool = Field(False, description="warn and cap instead of failing when a weight cannot be met")


def _hash01(*parts: str) -> float:
    return int.from_bytes(hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest(), "little") / 2**64


def selected(doc: dict, phase: dict, domain_cutoff: dict) -> bool:
    sel = phase["selection"]
    meta = doc.get("meta", {})
    if sel.get("min_chars") and len(doc["text"]) < sel["min_chars"]:
        return False
    if "quality_cutoff" in sel:
        cutoff = sel["quality_cutoff"].get(meta.get("domain"))
        if cutoff is None or float(meta.get("quality", 0.0)) < cutoff:
            return False
    return meta.get("domain") in phase["domains"]


@register
class MixStage(Stage):
    type_name = "mix"
    Config = MixConfig
    code_modules = ("data.mixing",)
    description = "domain mixing plan per phase (pretrain, anneal, long_context): plan.json"

    def validate_inputs(self) -> None:
        super().validate_inputs()
        for name, phase in self.config.phases.items():
            total = sum(phase.weights.values())
            if abs(total - 1) > 1e-6:
                raise ConfigError(f"stages.{self.name}.phases.{name}.weights sum to {total:.4f}, not 1")

    def steps(self) -> list[Step]:
        return [Step("plan", 1)]

    def run_task(self, step: str, task: int) -> dict:
        start = time.perf_counter()
        c = self.config
        rows = []  # (domain, chars, quality)
        for shard in self.input_shards():
            for doc in read_shard(shard):
                meta = doc.get("meta", {})
                rows.append((meta.get("domain", "general"), len(doc["text"]), float(meta.get("quality", 0.0))))
        if not rows:
            raise InputError(f"stage {self.name}: no documents to plan from")
        domains = np.array([r[0] for r in rows])
        chars = np.array([r[1] for r in rows], dtype=np.float64)
        quality = np.array([r[2] for r in rows])
        plan = {}
        for name, phase in c.phases.items():
            eligible = np.ones(len(rows), dtype=bool)
            selection = {}
            if phase.min_chars:
                eligible &= chars >= phase.min_chars
                selection["min_chars"] = phase.min_chars
            if phase.quality_top_fraction:
                cutoffs = {}
                for d in phase.weights:
                    q = quality[(domains == d) & eligible]
                    if len(q):
                        cutoffs[d] = float(np.quantile(q, 1 - phase.quality_top_fraction))
                        eligible &= (domains != d) | (quality >= cutoffs[d])
                selection["quality_cutoff"] = cutoffs
            available = {d: int(chars[(domains == d) & eligible].sum() / c.chars_per_token) for d in phase.weights}
            documents = {d: int(((domains == d) & eligible).sum()) for d in phase.weights}
            try:
                p = plan_phase(name, phase.tokens, phase.weights, available, documents, c.max_repeats, c.allow_shortfall)
            except PlanError as err:
                raise InputError(f"stage {self.name}: {err}") from None
            plan[name] = {"tokens": p.tokens, "weights": p.weights, "selection": selection,
                          "realized_weights": p.realized_weights(),
                          "domains": {d: vars(dp) for d, dp in p.domains.items()}}
        atomic_write_json(self.out_dir / "plan.json", plan)
        stats = {"phases": {k: {d: round(v["repeat"], 3) for d, v in p["domains"].items()} for k, p in plan.items()},
                 "documents": len(rows), "seconds": time.perf_counter() - start}
        write_marker(self.task_marker(step, task), stats)
        return stats


class TokenizerConfig(StageConfig):
    plan: str = Field("stage:mix/plan.json", description="the mix plan (its pretrain weights draw the sample)")
    vocab_size: int = Field(32_000, ge=64)
    model_type: str = Field("bpe", pattern="^(bpe|unigram)$")
    sample_chars: int = Field(200_000_000, ge=1000, description="characters of text to train on")
    chat_tokens: list[str] = Field(default_factory=lambda: list(CHAT_TOKENS))


@register
class TokenizerStage(Stage):
    type_name = "tokenizer"
    Config = TokenizerConfig
    code_modules = ("data.tokenizer",)
    description = "sentencepiece (byte fallback) trained on the pretrain mix; exported for AutoTokenizer"

    def validate_inputs(self) -> None:
        super().validate_inputs()
        needed = 260 + len(self.config.chat_tokens)
        if self.config.vocab_size < needed:
            raise ConfigError(f"stages.{self.name}.vocab_size: {self.config.vocab_size} is too small; byte fallback "
                              f"and the special tokens need at least {needed}")

    def steps(self) -> list[Step]:
        return [Step("train", 1)]

    def run_task(self, step: str, task: int) -> dict:
        start = time.perf_counter()
        c = self.config
        weights = json.loads(Path(c.plan).read_text())["pretrain"]["weights"]
        budget = {d: w * c.sample_chars for d, w in weights.items()}
        sample, held_out = [], []
        for shard in self.input_shards():
            for doc in read_shard(shard):
                d = doc.get("meta", {}).get("domain", "general")
                if _hash01(doc["id"], "held-out") < 0.05:
                    held_out.append(doc["text"])
                elif budget.get(d, 0) > 0:
                    sample.append(doc["text"])
                    budget[d] -= len(doc["text"])
        model = train_sentencepiece(sample, self.out_dir, c.vocab_size, c.model_type, tuple(c.chat_tokens))
        export_hf(model, self.out_dir, tuple(c.chat_tokens))
        enc = Encoder(model)
        text = "\n".join(held_out or sample[:100])
        stats = {"vocab_size": enc.vocab_size, "sample_chars": sum(map(len, sample)),
                 "bytes_per_token": len(text.encode()) / max(len(enc.encode([text])[0]), 1),
                 "seconds": time.perf_counter() - start}
        write_marker(self.task_marker(step, task), stats)
        return stats


VALID_PHASE = "valid"  # the held-out streams' folder: <stage>/valid/<domain>/


class ShardsConfig(StageConfig):
    plan: str = "stage:mix/plan.json"
    tokenizer: str = "stage:tokenizer/tokenizer.model"
    seq_len: dict[str, int] = Field(default_factory=lambda: {"pretrain": 2048},
                                    description="sequence length per phase")
    domains: list[str] = Field(default_factory=lambda: list(DEFAULT_PRETRAIN_WEIGHTS), description="one stream each")
    batch_docs: int = Field(512, ge=1)
    size_limit: int = Field(1 << 26, description="bytes per MDS shard file")
    valid_fraction: float = Field(0.0, ge=0, lt=0.5, description="documents held out (by id hash) of every phase, "
                                  "packed instead into one validation stream per domain under valid/<domain>/")
    valid_seq_len: int | None = Field(None, ge=1, description="sequence length of the validation streams "
                                      "(default: seq_len's pretrain entry, else its largest)")

    def resolved_valid_seq_len(self) -> int:
        if self.valid_seq_len is not None:
            return self.valid_seq_len
        return self.seq_len.get("pretrain", max(self.seq_len.values(), default=2048))


@register
class ShardsStage(Stage):
    type_name = "shards"
    Config = ShardsConfig
    code_modules = ("data.packing", "data.tokenizer")
    preload_modules = ("streaming",)
    description = (
        "tokenize and pack one MDS stream per phase per domain (zstd), document boundaries kept; "
        "optional held-out valid/ streams")

    def validate_inputs(self) -> None:
        super().validate_inputs()
        if VALID_PHASE in self.config.seq_len:
            raise ConfigError(f"stages.{self.name}.seq_len.{VALID_PHASE}: {VALID_PHASE!r} is reserved for the "
                              f"held-out validation streams (set valid_fraction and valid_seq_len instead)")

    def _streams(self) -> list[tuple[str, str]]:
        """(phase, domain) streams, from the config alone so the plan is known before `mix` runs;
        with `valid_fraction`, one (valid, domain) stream per domain follows the training ones."""
        streams = [(phase, d) for phase in self.config.seq_len for d in self.config.domains]
        if self.config.valid_fraction > 0:
            streams += [(VALID_PHASE, d) for d in self.config.domains]
        return streams

    def _held_out(self, doc_id: str) -> bool:
        return _hash01(doc_id, "valid") < self.config.valid_fraction

    def steps(self) -> list[Step]:
        # pack: one task per stream per input shard (each writes an MDS partition); index: one
        # per stream, merging its partitions' index.json into the stream's own
        return [Step("pack", len(self._streams()) * len(self.input_shards())), Step("index", len(self._streams()))]

    def run_task(self, step: str, task: int) -> dict:
        if step == "index":
            return self._index(task)
        return self._pack(step, task)

    def _index(self, task: int) -> dict:
        from streaming.base.util import merge_index

        phase_name, domain = self._streams()[task]
        root = self.out_dir / phase_name / domain
        parts = sorted(p for p in root.glob("part-*") if (p / "index.json").exists()) if root.exists() else []
        if parts:
            merge_index([str(p / "index.json") for p in parts], str(root), keep_local=True)
        stats = {"streams_indexed": 1 if parts else 0, "seconds": 0.0}
        write_marker(self.task_marker("index", task), stats)
        return stats

    def finalize(self, task_stats):
        return merge_stats(task_stats["pack"])

    def _pack(self, step: str, task: int) -> dict:
        start = time.perf_counter()
        from streaming import MDSWriter

        n_shards = len(self.input_shards())
        phase_name, domain = self._streams()[task // n_shards]
        shard = self.input_shards()[task % n_shards]
        held_out = self.config.valid_fraction > 0
        if phase_name == VALID_PHASE:
            # the held-out documents of the domain, whatever any phase selects: validation
            # measures the pretrain distribution
            seq_len = self.config.resolved_valid_seq_len()

            def wanted(doc: dict) -> bool:
                return doc.get("meta", {}).get("domain") == domain and self._held_out(doc["id"])
        else:
            plan = json.loads(Path(self.config.plan).read_text())
            if phase_name not in plan:
                raise ConfigError(f"stages.{self.name}.seq_len: phase {phase_name!r} is not in the mix plan "
                                  f"({list(plan)})")
            phase = plan[phase_name]
            if domain not in phase["domains"]:
                stats = {"streams": {}, "tokens": 0, "sequences": 0, "seconds": time.perf_counter() - start}
                write_marker(self.task_marker(step, task), stats)
                return stats
            if phase_name not in self.config.seq_len:
                raise ConfigError(f"stages.{self.name}.seq_len has no length for phase {phase_name!r}")
            seq_len = self.config.seq_len[phase_name]

            def wanted(doc: dict) -> bool:
                return (doc.get("meta", {}).get("domain") == domain and selected(doc, phase, {})
                        and not (held_out and self._held_out(doc["id"])))
        enc = Encoder(self.config.tokenizer, threads=1)
        pad_id = enc.sp.pad_id()

        def documents():
            batch = []
            for doc in read_shard(shard):
                if wanted(doc):
                    batch.append(doc["text"])
                    if len(batch) >= self.config.batch_docs:
                        yield from enc.encode(batch)
                        batch = []
            if batch:
                yield from enc.encode(batch)

        part = f"part-{task % n_shards:05d}"
        final = self.out_dir / phase_name / domain / part
        tmp = self.out_dir / phase_name / domain / f".{part}.tmp-{os.getpid()}"
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        dtype = "uint16" if enc.dtype == np.uint16 else "uint32"
        sequences = tokens = 0
        docs = 0
        with MDSWriter(out=str(tmp), columns={"tokens": f"ndarray:{dtype}", "doc_starts": "ndarray:int32", "length": "int",
                                "domain": "str", "uid": "str"},
                       compression="zstd", size_limit=self.config.size_limit) as writer:
            def counted():
                nonlocal docs
                for ids in documents():
                    docs += 1
                    yield ids
            for seq, starts, length in pack(counted(), seq_len, enc.eos_id, pad_id, enc.dtype):
                writer.write({"tokens": seq, "doc_starts": starts, "length": length, "domain": domain,
                              "uid": f"{phase_name}/{domain}/{part}/{sequences}"})
                sequences += 1
                tokens += length
        shutil.rmtree(final, ignore_errors=True)
        if sequences:
            os.replace(tmp, final)
        else:  # nothing of this stream in this shard: no partition
            shutil.rmtree(tmp, ignore_errors=True)
        # top-level tokens/sequences count training data; the held-out streams have their own totals
        prefix = "valid_" if phase_name == VALID_PHASE else ""
        stats = {"streams": {f"{phase_name}/{domain}": {"documents": docs, "sequences": sequences, "tokens": tokens}},
                 f"{prefix}tokens": tokens, f"{prefix}sequences": sequences, "seconds": time.perf_counter() - start}
        if prefix:
            stats["valid_documents"] = docs
        write_marker(self.task_marker(step, task), stats)
        return stats
