"""`ingest`: raw files (JSONL, Parquet, text, HTML, local HF datasets) -> normalized shards.

Input files are assigned to tasks round-robin in sorted order; each task writes one shard
`NNNNN.jsonl.zst` and its rejects to `removed/NNNNN.jsonl.zst`. Ids are stable: the
record's own id (prefixed with its source) or `<file>#<line>`.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field

from data.jsonl import ShardWriter
from data.readers import ReadOptions, Rejected, list_input_files, read_file
from pipeline.errors import InputError
from pipeline.registry import register
from pipeline.stage import Stage, StageConfig, Step, shard_name, write_marker


class IngestConfig(StageConfig):
    tasks: int = Field(4, ge=1, description="tasks = output shards")
    format: Literal["auto", "jsonl", "parquet", "text", "html", "hf"] = "auto"
    text_key: str = "text"
    id_key: str | None = "id"
    text_split: Literal["file", "paragraph", "line", "pattern"] = Field(
        "file", description="plain text: one document per file, blank-line paragraph, line, or pattern match")
    split_pattern: str | None = Field(None, description="regex: a new document starts at each matching line")
    source: str | None = Field(None, description="the documents' `source`; default: the input's folder or file name")
    min_chars: int = Field(1, ge=1, description="shorter texts are removed as too_short")


@register
class IngestStage(Stage):
    type_name = "ingest"
    code_modules = ("data.readers", "data.jsonl")
    Config = IngestConfig
    default_input = "previous"
    description = "read raw files into normalized document shards with stable ids"

    def validate_inputs(self) -> None:
        super().validate_inputs()
        if not self.inputs:
            raise InputError(f"stage {self.name}: no input; set stages.{self.name}.input to a file or folder")
        if self.config.text_split == "pattern" and not self.config.split_pattern:
            raise InputError(f"stage {self.name}: text_split: pattern needs split_pattern")

    def steps(self) -> list[Step]:
        return [Step("main", self.config.tasks)]

    def num_output_shards(self) -> int:
        return self.config.tasks

    def files(self) -> list[tuple[Path, str, str]]:
        """(path, id prefix relative path, source) of every input file, in a fixed order."""
        out = []
        for inp in self.inputs:
            if inp.kind == "ref":
                continue
            root = Path(inp.path)
            readable, unknown = list_input_files(root)
            source = self.config.source or (inp.stage or root.name)
            for path in sorted(readable + unknown):
                rel = root.name if path == root else f"{root.name}/{path.relative_to(root).as_posix()}"
                out.append((path, rel, source))
        return out

    def run_task(self, step: str, task: int) -> dict:
        start = time.perf_counter()
        c = self.config
        opts = ReadOptions(format=c.format, text_key=c.text_key, id_key=c.id_key,
                           text_split=c.text_split, split_pattern=c.split_pattern)
        mine = self.files()[task :: c.tasks]
        removed, chars, kept, bytes_in = Counter(), 0, 0, 0
        with ShardWriter(self.out_dir / shard_name(task)) as out, \
                ShardWriter(self.out_dir / "removed" / shard_name(task)) as rejected:
            for path, rel, source in mine:
                bytes_in += sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
                for item in read_file(path, rel, source, opts):
                    if not isinstance(item, Rejected) and len(item["text"]) < c.min_chars:
                        item = Rejected("too_short", rel, item["meta"].get("line"), item["text"], id=item["id"])
                    if isinstance(item, Rejected):
                        rejected.write(item.to_record())
                        removed[item.reason] += 1
                    else:
                        out.write(item)
                        kept += 1
                        chars += len(item["text"])
        stats = {
            "files": len(mine), "docs_in": kept + sum(removed.values()), "docs_out": kept,
            "removed": dict(removed), "bytes_in": bytes_in,
            "bytes_out": (self.out_dir / shard_name(task)).stat().st_size, "chars_out": chars,
            "seconds": time.perf_counter() - start,
        }
        write_marker(self.task_marker(step, task), stats)
        return stats
