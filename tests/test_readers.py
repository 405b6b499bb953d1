"""Readers on every format, real crawled HTML and WikiText, and quarantine of bad records."""
import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from data.jsonl import ShardWriter, read_shard
from data.readers import ReadOptions, Rejected, list_input_files, read_file, split_items


def read(path: Path, **opts):
    return split_items(read_file(path, path.name, "src", ReadOptions(**opts)))


def test_jsonl_plain_gz_zst_quarantine_bad_lines(tmp_path):
    lines = [b'{"id": 1, "text": "hello world", "url": "http://a/"}', b'{"text": "broken',
             b'{"text": "caf\xe9"}', b'{"text": ""}', b'{"body": "no text key"}', b"", b'{"text": "second"}']
    payload = b"\n".join(lines) + b"\n"
    for name, data in (("a.jsonl", payload), ("a.jsonl.gz", gzip.compress(payload)),
                       ("a.jsonl.zst", zstandard.ZstdCompressor().compress(payload))):
        (tmp_path / name).write_bytes(data)
        docs, rejected = read(tmp_path / name)
        assert [d["text"] for d in docs] == ["hello world", "second"]
        assert docs[0]["id"] == "src/1" and docs[0]["url"] == "http://a/" and docs[1]["id"] == f"{name}#7"
        assert [(r.reason, r.line) for r in rejected] == [
            ("malformed_json", 2), ("invalid_utf8", 3), ("empty_text", 4), ("missing_text", 5)]
        assert all(r.file == name for r in rejected)


def test_parquet_and_custom_keys(tmp_path):
    pq.write_table(pa.table({"doc": ["one", "two", None], "key": ["a", "b", "c"]}), tmp_path / "x.parquet")
    docs, rejected = read(tmp_path / "x.parquet", text_key="doc", id_key="key")
    assert [(d["id"], d["text"]) for d in docs] == [("src/a", "one"), ("src/b", "two")]
    assert [r.reason for r in rejected] == ["missing_doc"]


def test_local_hf_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["alpha", "beta", " "]}).save_to_disk(str(tmp_path / "ds"))
    docs, rejected = read(tmp_path / "ds")
    assert [d["text"] for d in docs] == ["alpha", "beta"]
    assert [r.reason for r in rejected] == ["empty_text"]


def test_wikitext_split_into_articles(shared_data):
    path = shared_data / "wikitext2" / "valid.txt"
    raw = path.read_text(encoding="utf-8")
    headings = re.findall(r"^ = [^=].* = $", raw, flags=re.M)
    docs, rejected = read(path, text_split="pattern", split_pattern=r"^ = [^=]")
    assert len(docs) == len(headings) == 60 and not rejected
    assert docs[0]["text"].startswith("= Homarus gammarus =")
    assert "European lobster" in docs[0]["text"]
    paragraphs, _ = read(path, text_split="paragraph")
    expected = sum(1 for block in re.split(r"\n\s*\n", raw) if block.strip())
    assert len(paragraphs) == expected


def test_real_crawled_html(shared_data):
    files, unknown = list_input_files(shared_data / "web-html")
    assert len(files) == 110 and not unknown
    docs, rejected = split_items(item for f in files for item in read_file(f, f.name, "web", ReadOptions()))
    assert len(docs) + len(rejected) == 110
    assert len(docs) >= 100, [r.to_record() for r in rejected]
    assert all(r.reason in ("no_extractable_text", "html_parse_error") for r in rejected)
    python = next(d for d in docs if d["meta"]["file"] == "blog.python.org.html")
    assert "Python 3.6.0 is the newest major release of the Python language" in python["text"]
    for boilerplate in ("Older Post", "Newer Post", "Blog Archive"):
        assert boilerplate not in python["text"]
    assert python["url"] == "http://blog.python.org/2016/12/python-360-is-now-available.html"
    assert python["date"] == "2016-12-23"


def test_shard_writer_is_atomic_and_deterministic(tmp_path):
    records = [{"id": str(i), "text": f"doc {i} é"} for i in range(100)]
    for name in ("a", "b"):
        with ShardWriter(tmp_path / f"{name}.jsonl.zst") as w:
            for r in records:
                w.write(r)
    assert (tmp_path / "a.jsonl.zst").read_bytes() == (tmp_path / "b.jsonl.zst").read_bytes()
    assert list(read_shard(tmp_path / "a.jsonl.zst")) == records
    try:
        with ShardWriter(tmp_path / "c.jsonl.zst") as w:
            w.write(records[0])
            raise RuntimeError("crash")
    except RuntimeError:
        pass
    assert not (tmp_path / "c.jsonl.zst").exists() and not list(tmp_path.glob(".c*"))


def test_rejected_record_keeps_where_and_why():
    rec = Rejected("malformed_json", "x.jsonl", 3, "{bad").to_record()
    assert json.loads(json.dumps(rec)) == {"reason": "malformed_json", "file": "x.jsonl", "line": 3, "raw": "{bad"}


def test_corrupt_file_is_quarantined_not_fatal(tmp_path):
    good = gzip.compress(b'{"text": "kept"}\n' * 1000)
    (tmp_path / "cut.jsonl.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.jsonl.zst").write_bytes(b"this is not zstd")
    docs, rejected = read(tmp_path / "cut.jsonl.gz")
    assert [r.reason for r in rejected] == ["unreadable_file"] and "EOFError" in rejected[0].raw
    docs, rejected = read(tmp_path / "junk.jsonl.zst")
    assert not docs and [r.reason for r in rejected] == ["unreadable_file"]
