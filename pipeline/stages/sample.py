"""`sample`: writes the demo's raw corpus in every input format the readers take."""
from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

from pydantic import Field

from data import sample
from data.jsonl import dumps
from pipeline.registry import register
from pipeline.stage import Stage, StageConfig, Step, write_marker

FILE_KINDS = ("jsonl.gz", "parquet", "html", "txt")


class SampleConfig(StageConfig):
    files: int = Field(8, ge=1, description="raw files to write (formats rotate: jsonl.gz, parquet, html, txt)")
    docs_per_file: int = Field(60, ge=1)
    broken_lines: bool = Field(True, description="plant malformed JSON, invalid UTF-8 and empty records")
    seed_examples: int = Field(150, ge=0, description="labelled examples per class under _seeds/ for the demo's classifiers")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@register
class SampleStage(Stage):
    type_name = "sample"
    code_modules = ("data.sample",)
    Config = SampleConfig
    default_input = "none"
    description = "generate the built-in demo corpus (raw files in mixed formats)"

    def steps(self) -> list[Step]:
        return [Step("main", self.config.files)]

    def run_task(self, step: str, task: int) -> dict:
        start = time.perf_counter()
        docs = sample.documents(self.seed * 100_003 + task, self.config.docs_per_file)
        kind = FILE_KINDS[task % len(FILE_KINDS)]
        written = 0
        if kind == "jsonl.gz":
            lines = [dumps(d).encode() for d in docs]
            if self.config.broken_lines:
                lines[1:1] = [b'{"id": "broken", "text": "unterminated', b'{"text": "bad \xff\xfe bytes"}',
                              b'{"id": "blank", "text": "   "}', b'["not", "an", "object"]']
            written = len(lines)
            # mtime=0 keeps the gzip bytes a pure function of the content
            _write_atomic(self.out_dir / f"{task:05d}.jsonl.gz", gzip.compress(b"\n".join(lines) + b"\n", mtime=0))
        elif kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist([{k: d[k] for k in ("id", "text", "url", "date")} for d in docs])
            tmp = self.out_dir / f".{task:05d}.parquet.tmp-{os.getpid()}"
            pq.write_table(table, tmp)
            os.replace(tmp, self.out_dir / f"{task:05d}.parquet")
            written = len(docs)
        elif kind == "html":
            for i, d in enumerate(docs):
                _write_atomic(self.out_dir / f"{task:05d}-html" / f"{i:04d}.html", sample.html_page(d).encode())
            written = len(docs)
        else:
            text = "\n\n\n".join(d["text"] for d in docs)
            _write_atomic(self.out_dir / f"{task:05d}.txt", text.encode())
            written = 1
        if task == 0 and self.config.seed_examples:
            for kind, labels in sample.seed_examples(self.seed, self.config.seed_examples).items():
                for label, texts in labels.items():
                    lines = "".join(dumps({"id": f"{label}-{i}", "text": t}) + "\n" for i, t in enumerate(texts))
                    _write_atomic(self.out_dir / "_seeds" / kind / f"{label}.jsonl", lines.encode())
        stats = {"files": 1, "records_written": written, "seconds": time.perf_counter() - start}
        write_marker(self.task_marker(step, task), stats)
        return stats
