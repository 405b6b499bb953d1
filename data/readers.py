"""Readers: raw files in many formats -> a stream of documents or quarantined rejects.

Each reader yields `Document`s (plain dicts `{id, text, source, url?, date?, meta}`) and
`Rejected` records. A malformed line, invalid UTF-8 or an empty document never stops a
read and is never dropped silently: it comes out as `Rejected` with its file, line and
reason, and the stage writes it under `removed/`.
"""
from __future__ import annotations

import gzip
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Union

import zstandard

COMPRESSIONS = (".gz", ".zst", ".zstd")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text", ".md")
HTML_SUFFIXES = (".html", ".htm")
HF_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
FORMATS = ("auto", "jsonl", "parquet", "text", "html", "hf")
TEXT_SPLITS = ("file", "paragraph", "line", "pattern")


@dataclass
class Rejected:
    """A record that could not become a document, kept with why and where."""

    reason: str
    file: str
    line: int | None
    raw: str = ""
    id: str | None = None

    def to_record(self) -> dict:
        rec = {"reason": self.reason, "file": self.file, "line": self.line, "raw": self.raw[:10000]}
        if self.id is not None:
            rec["id"] = self.id
        return rec


Item = Union[dict, Rejected]


@dataclass
class ReadOptions:
    """How to read one input: which fields hold what, how plain text splits into documents."""

    format: str = "auto"
    text_key: str = "text"
    id_key: str | None = "id"
    text_split: str = "file"
    split_pattern: str | None = None
    html_favor_precision: bool = True
    extra_keys: list[str] = field(default_factory=lambda: ["url", "date"])


def _strip_compression(name: str) -> str:
    for ext in COMPRESSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def detect_format(path: Path) -> str | None:
    """The reader for a path, or None for a file we do not know how to read."""
    if path.is_dir():
        return "hf" if any((path / m).exists() for m in HF_DATASET_MARKERS) else None
    name = _strip_compression(path.name.lower())
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(HTML_SUFFIXES):
        return "html"
    return None


def list_input_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(readable inputs, files skipped as unknown) under `root`, sorted for determinism.

    A local HF dataset folder counts as one input. Hidden files and our own control files
    (names starting with '_' or '.', and the `removed/` folder of a stage) are ignored.
    """
    if root.is_file() or detect_format(root) == "hf":
        return [root], []
    inputs, unknown = [], []
    for path in sorted(root.iterdir()):
        if path.name.startswith((".", "_")) or path.name == "removed":
            continue
        if path.is_dir():
            sub_inputs, sub_unknown = list_input_files(path)
            inputs += sub_inputs
            unknown += sub_unknown
        elif detect_format(path):
            inputs.append(path)
        else:
            unknown.append(path)
    return inputs, unknown


def open_binary(path: Path):
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def iter_raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes without the newline) of a possibly compressed file."""
    with open_binary(path) as f:
        for line_no, raw in enumerate(f, 1):
            yield line_no, raw.rstrip(b"\r\n")


def open_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    for line_no, raw in iter_raw_lines(path):
        if raw:
            yield line_no, raw.decode("utf-8")


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def normalize_text(text: str) -> str:
    """NFC, Unix newlines, no control characters, no surrounding whitespace."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL_CHARS.sub("", text).strip()


def _document(doc_id: str, text: str, source: str, file: str, line: int | None, extra: dict) -> Item:
    text = normalize_text(text)
    if not text:
        return Rejected("empty_text", file, line, id=doc_id)
    doc = {"id": doc_id, "text": text, "source": source}
    for key in ("url", "date"):
        if extra.get(key) is not None:
            doc[key] = str(extra[key])
    meta = {k: v for k, v in extra.items() if k not in ("url", "date") and v is not None}
    meta["file"] = file
    if line is not None:
        meta["line"] = line
    doc["meta"] = meta
    return doc


def read_jsonl(path: Path, rel: str, source: str, opts: ReadOptions) -> Iterator[Item]:
    for line_no, raw in iter_raw_lines(path):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield Rejected("invalid_utf8", rel, line_no, raw.decode("utf-8", "replace") + f"  [{err}]")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            yield Rejected("malformed_json", rel, line_no, f"{line}  [{err.msg} at col {err.colno}]")
            continue
        if not isinstance(obj, dict):
            yield Rejected("not_an_object", rel, line_no, line)
            continue
        text = obj.get(opts.text_key)
        if not isinstance(text, str):
            yield Rejected(f"missing_{opts.text_key}", rel, line_no, line)
            continue
        own_id = obj.get(opts.id_key) if opts.id_key else None
        doc_id = f"{source}/{own_id}" if own_id is not None else f"{rel}#{line_no}"
        extra = {k: obj[k] for k in opts.extra_keys if k in obj}
        if isinstance(obj.get("meta"), dict):
            extra = {**obj["meta"], **extra}
        yield _document(doc_id, text, source, rel, line_no, extra)


def read_parquet(path: Path, rel: str, source: str, opts: ReadOptions) -> Iterator[Item]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if opts.text_key not in pf.schema_arrow.names:
        yield Rejected(f"missing_{opts.text_key}", rel, None, f"columns: {pf.schema_arrow.names}")
        return
    wanted = [c for c in [opts.text_key, opts.id_key, *opts.extra_keys] if c and c in pf.schema_arrow.names]
    row = 0
    for batch in pf.iter_batches(columns=wanted, batch_size=4096):
        for obj in batch.to_pylist():
            text = obj.get(opts.text_key)
            own_id = obj.get(opts.id_key) if opts.id_key else None
            doc_id = f"{source}/{own_id}" if own_id is not None else f"{rel}#{row}"
            if not isinstance(text, str):
                yield Rejected(f"missing_{opts.text_key}", rel, row, json.dumps(obj, default=str), id=doc_id)
            else:
                yield _document(doc_id, text, source, rel, row, {k: obj.get(k) for k in opts.extra_keys})
            row += 1


def _split_text(text: str, opts: ReadOptions) -> Iterator[tuple[int, str]]:
    """(1-based starting line, piece) for each document of a plain-text file."""
    if opts.text_split == "file":
        yield 1, text
        return
    lines = text.split("\n")
    if opts.text_split == "line":
        yield from ((i, line) for i, line in enumerate(lines, 1) if line.strip())
        return
    if opts.text_split == "paragraph":
        is_start = lambda i: i == 0 or (not lines[i - 1].strip() and lines[i].strip())  # noqa: E731
    else:  # pattern: a new document starts at each line matching the pattern
        pattern = re.compile(opts.split_pattern or r"^\S")
        is_start = lambda i: i == 0 or bool(pattern.match(lines[i]))  # noqa: E731
    starts = [i for i in range(len(lines)) if is_start(i)] + [len(lines)]
    for begin, end in zip(starts, starts[1:]):
        piece = "\n".join(lines[begin:end])
        if piece.strip():
            yield begin + 1, piece


def read_text(path: Path, rel: str, source: str, opts: ReadOptions) -> Iterator[Item]:
    with open_binary(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        yield Rejected("invalid_utf8", rel, line, f"{err}")
        return
    for line_no, piece in _split_text(text, opts):
        yield _document(f"{rel}#{line_no}", piece, source, rel, line_no, {})


def read_html(path: Path, rel: str, source: str, opts: ReadOptions) -> Iterator[Item]:
    import trafilatura

    with open_binary(path) as f:
        raw = f.read()
    try:
        result = trafilatura.bare_extraction(
            raw, favor_precision=opts.html_favor_precision, include_comments=False,
            include_tables=True, with_metadata=True,
        )
    except Exception as err:  # a broken page must not stop the read
        yield Rejected("html_parse_error", rel, None, f"{type(err).__name__}: {err}")
        return
    text = getattr(result, "text", None) if result is not None else None
    if not text:
        yield Rejected("no_extractable_text", rel, None, raw[:2000].decode("utf-8", "replace"))
        return
    extra = {"url": result.url, "date": result.date, "title": result.title}
    yield _document(f"{rel}#0", text, source, rel, None, extra)


def read_hf_dataset(path: Path, rel: str, source: str, opts: ReadOptions) -> Iterator[Item]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    for split, ds in splits:
        where = f"{rel}[{split}]" if split else rel
        if opts.text_key not in ds.column_names:
            yield Rejected(f"missing_{opts.text_key}", where, None, f"columns: {ds.column_names}")
            continue
        for row, obj in enumerate(ds):
            text = obj.get(opts.text_key)
            own_id = obj.get(opts.id_key) if opts.id_key else None
            doc_id = f"{source}/{own_id}" if own_id is not None else f"{where}#{row}"
            if not isinstance(text, str):
                yield Rejected(f"missing_{opts.text_key}", where, row, json.dumps(obj, default=str), id=doc_id)
            else:
                yield _document(doc_id, text, source, where, row, {k: obj.get(k) for k in opts.extra_keys})


READERS = {"jsonl": read_jsonl, "parquet": read_parquet, "text": read_text, "html": read_html, "hf": read_hf_dataset}


def read_file(path: Path, rel: str, source: str, opts: ReadOptions) -> Iterator[Item]:
    fmt = opts.format if opts.format != "auto" else detect_format(path)
    if fmt is None:
        yield Rejected("unknown_format", rel, None, path.name)
        return
    try:
        yield from READERS[fmt](path, rel, source, opts)
    except (OSError, EOFError, ValueError, zstandard.ZstdError) as err:
        # a corrupt or truncated file: what was read stays, the rest is quarantined by name
        yield Rejected("unreadable_file", rel, None, f"{type(err).__name__}: {err}")


def split_items(items: Iterable[Item]) -> tuple[list[dict], list[Rejected]]:
    docs, rejected = [], []
    for item in items:
        (rejected if isinstance(item, Rejected) else docs).append(item)
    return docs, rejected
