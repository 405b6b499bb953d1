"""Exact dedup: normalized-text hashes, keep the first, same result for any task layout."""
import json

from conftest import tree_bytes

from data.dedup_keys import normalize_for_hash
from data.jsonl import ShardWriter, read_shard


def write_shards(root, shards):
    root.mkdir()
    for i, texts in enumerate(shards):
        with ShardWriter(root / f"{i:05d}.jsonl.zst") as w:
            for j, text in enumerate(texts):
                w.write({"id": f"d{i}-{j}", "text": text, "source": "t", "meta": {}})


def test_normalization():
    assert normalize_for_hash("Cafe\u0301  au\n\tlait ") == "Café au lait"
    assert normalize_for_hash("Hello, World!", lowercase=True, strip_punctuation=True) == "hello world"


def test_keeps_first_across_shards_and_records_duplicate_of(tmp_path, cli):
    shards = [["alpha beta", "gamma", "alpha  beta"], ["gamma", "delta", "Alpha beta"], ["alpha beta\n", "epsilon"]]
    write_shards(tmp_path / "in", shards)
    cli("stage", "exact", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "a"), "buckets=1")
    kept = [d["id"] for i in range(3) for d in read_shard(tmp_path / "a" / f"{i:05d}.jsonl.zst")]
    assert kept == ["d0-0", "d0-1", "d1-1", "d1-2", "d2-1"]
    removed = {d["id"]: d["duplicate_of"] for i in range(3) for d in read_shard(tmp_path / "a" / "removed" / f"{i:05d}.jsonl.zst")}
    assert removed == {"d0-2": "d0-0", "d1-0": "d0-1", "d2-0": "d0-0"}
    stats = json.loads((tmp_path / "a" / "_manifest.json").read_text())["stats"]
    assert stats["removed"] == {"exact_duplicate": 3} and stats["docs_in"] == 8 and stats["docs_out"] == 5
    # case folding makes "Alpha beta" a duplicate too; more buckets and workers change nothing else
    cli("stage", "exact", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "b"), "buckets=5",
        "lowercase=true", "executor.workers=2")
    removed = {d["id"] for i in range(3) for d in read_shard(tmp_path / "b" / "removed" / f"{i:05d}.jsonl.zst")}
    assert removed == {"d0-2", "d1-0", "d2-0", "d1-2"}


def test_bucket_count_does_not_change_output(tmp_path, cli):
    write_shards(tmp_path / "in", [[f"doc {k % 7}" for k in range(i, i + 20)] for i in range(4)])
    cli("stage", "exact", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "one"), "buckets=1")
    cli("stage", "exact", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "many"), "buckets=8")
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "many")
    assert sum(1 for i in range(4) for _ in read_shard(tmp_path / "one" / f"{i:05d}.jsonl.zst")) == 7


def test_empty_input_shards(tmp_path, cli):
    write_shards(tmp_path / "in", [[], ["only"], []])
    cli("stage", "exact", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "buckets=2")
    assert [d["text"] for d in read_shard(tmp_path / "o" / "00001.jsonl.zst")] == ["only"]
