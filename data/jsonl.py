"""Document shards: JSON Lines compressed with zstd, written atomically.

A shard is written under a temporary name and renamed into place only when complete, so a
crash never leaves a half-written shard under its final name. Serialization is
deterministic (fixed key order, fixed compression level): the same records always give
the same bytes, which is what makes a resumed run identical to an uninterrupted one.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterator

import zstandard

ZSTD_LEVEL = 3


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


class ShardWriter:
    """Writes records to `path` (a .jsonl.zst file) through a temporary file.

    Use as a context manager: on a clean exit the file is renamed into place; on an
    exception the temporary file is removed and nothing appears under `path`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.count = 0
        self._raw = open(self.tmp_path, "wb")
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(self._raw, closefd=False)
        self._text = io.TextIOWrapper(self._zstd, encoding="utf-8", newline="\n", write_through=True)

    def write(self, record: dict) -> None:
        self._text.write(dumps(record) + "\n")
        self.count += 1

    def _close_streams(self) -> None:
        self._text.flush()
        self._text.detach()
        self._zstd.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()

    def commit(self) -> Path:
        self._close_streams()
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._close_streams()
        finally:
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def read_shard(path: str | Path) -> Iterator[dict]:
    """Yields the records of one of our own shards (.jsonl.zst, .jsonl.gz or .jsonl)."""
    from data.readers import open_text_lines

    for line_no, raw in open_text_lines(Path(path)):
        yield json.loads(raw)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")
