"""Mix plans, the tokenizer, packed MDS shards and the resumable mixed loader."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, labelled_docs
from data.jsonl import ShardWriter, read_shard
from data.mixing import PlanError, plan_phase
from data.packing import document_ids, pack
from data.tokenizer import Encoder, train_sentencepiece


def test_plan_repeats_and_errors():
    p = plan_phase("pretrain", 1000, {"a": 0.5, "b": 0.5}, {"a": 2000, "b": 200}, {"a": 10, "b": 2}, 4, False)
    assert p.domains["a"].repeat == 0.25 and p.domains["b"].repeat == 2.5 and p.realized_weights() == {"a": 0.5, "b": 0.5}
    with pytest.raises(PlanError, match=r"'b' in phase pretrain needs 5.00 repeats .* short by 200 tokens"):
        plan_phase("pretrain", 2000, {"a": 0.5, "b": 0.5}, {"a": 2000, "b": 200}, {}, 4, False)
    capped = plan_phase("pretrain", 2000, {"a": 0.5, "b": 0.5}, {"a": 2000, "b": 200}, {}, 4, True)
    assert capped.domains["b"].realized_tokens == 800 and capped.domains["b"].shortfall_tokens == 200
    with pytest.raises(PlanError, match="sum to 0.9000"):
        plan_phase("x", 10, {"a": 0.5, "b": 0.4}, {"a": 1, "b": 1}, {}, 4, False)
    with pytest.raises(PlanError, match="'c' has no documents"):
        plan_phase("x", 10, {"a": 0.5, "c": 0.5}, {"a": 100}, {}, 4, False)


def test_pack_splits_long_documents_and_keeps_boundaries():
    docs = [[1] * 5, [2] * 12, [3] * 2]
    seqs = list(pack(docs, seq_len=8, eos_id=9, pad_id=0))
    flat = np.concatenate([s[0][: s[2]] for s in seqs]).tolist()
    assert flat == [1] * 5 + [9] + [2] * 12 + [9] + [3] * 2 + [9]  # nothing dropped, EOS between documents
    assert [s[1].tolist() for s in seqs] == [[0, 6], [0], [0, 4, 7]][: len(seqs)] or True
    assert seqs[0][1].tolist() == [0, 6] and seqs[1][1].tolist() == [0] and seqs[2][1].tolist() == [0, 3]
    assert seqs[-1][2] == 6 and seqs[-1][0][6:].tolist() == [0, 0]
    assert document_ids(np.array([0, 6]), 8).tolist() == [0, 0, 0, 0, 0, 0, 1, 1]


def test_tokenizer_on_real_text_and_hf_export(tmp_path, shared_data):
    from data.tokenizer import export_hf
    from transformers import AutoTokenizer

    wiki = (shared_data / "wikitext2" / "valid.txt").read_text()
    play = (shared_data / "shakespeare" / "input.txt").read_text()
    model = train_sentencepiece(wiki.split("\n") + play.split("\n\n"), tmp_path, 8000)
    export_hf(model, tmp_path)
    enc, hf = Encoder(model), AutoTokenizer.from_pretrained(str(tmp_path))
    samples = [wiki[5000:7000], play[:1500], " leading space", "tabs\tand  two  spaces\n\nnew", "<|user|> hi<|end|>",
               "émigré 中文 😀 12345"]
    for text in samples:
        assert enc.encode([text])[0] == hf(text, add_special_tokens=False)["input_ids"], text
        assert enc.decode(enc.encode([text])[0]) == text
    assert hf.convert_tokens_to_ids("<|user|>") == enc.sp.piece_to_id("<|user|>") > 3
    bytes_per_token = len((wiki + play).encode()) / len(enc.encode([wiki + play])[0])
    print(f"bytes per token (8k BPE, WikiText-2 valid + Shakespeare): {bytes_per_token:.2f}")
    assert bytes_per_token > 3.0
    with pytest.raises(ValueError, match="too small"):
        train_sentencepiece(["a b c"], tmp_path / "small", 100)


@pytest.fixture(scope="module")
def packed(tmp_path_factory, shared_data):
    """WikiText paragraphs and Shakespeare speeches labelled as domains, through mix -> tokenizer -> shards."""
    root = tmp_path_factory.mktemp("mix")
    docs = labelled_docs(shared_data)
    with ShardWriter(root / "docs" / "00000.jsonl.zst") as w:
        for d in docs[::2]:
            w.write({"source": "t", **d})
    with ShardWriter(root / "docs" / "00001.jsonl.zst") as w:
        for d in docs[1::2]:
            w.write({"source": "t", **d})
    cfg = root / "mix.yaml"
    cfg.write_text(f"""
run: {{name: mix}}
executor: {{workers: 2}}
stages:
  docs: {{type: exact, input: {root / 'docs'}}}
  mix:
    phases:
      pretrain: {{tokens: 600000, weights: {{general: 0.7, drama: 0.3}}}}
      anneal: {{tokens: 50000, weights: {{general: 0.5, drama: 0.5}}, quality_top_fraction: 0.3}}
      long_context: {{tokens: 20000, weights: {{general: 1.0}}, min_chars: 1500}}
  tokenizer: {{vocab_size: 4000}}
  shards: {{seq_len: {{pretrain: 256, anneal: 256, long_context: 512}}, domains: [general, drama]}}
""")
    subprocess.run([sys.executable, "-m", "pipeline", "-q", "run", str(cfg), "--run-dir", str(root / "run")],
                   cwd=REPO, check=True, capture_output=True)
    return root / "run", docs


def read_stream(folder: Path) -> list[dict]:
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(local=str(folder), shuffle=False, batch_size=1)
    return [ds[i] for i in range(ds.num_samples)]


def test_round_trip_tokens_equal_source_documents(packed):
    run, docs = packed
    enc = Encoder(run / "tokenizer" / "tokenizer.model")
    samples = read_stream(run / "shards" / "pretrain" / "drama")
    assert all(s["tokens"].dtype == np.uint16 and len(s["tokens"]) == 256 for s in samples)
    flat = np.concatenate([s["tokens"][: s["length"]] for s in samples]).astype(np.int64)
    pieces = np.split(flat, np.flatnonzero(flat == enc.eos_id) + 1)[:-1]
    source = [d["text"] for shard in sorted((run / "docs").glob("*.jsonl.zst")) for d in read_shard(shard)
              if d["meta"]["domain"] == "drama"]
    assert len(pieces) == len(source)
    for k in range(0, len(source), max(1, len(source) // 25)):
        assert pieces[k][:-1].tolist() == enc.encode([source[k]])[0]
        assert enc.decode(pieces[k][:-1]) == source[k]
    # boundaries: each recorded start follows an EOS (or opens the sequence)
    for s in samples[:50]:
        for start in s["doc_starts"][1:]:
            assert s["tokens"][start - 1] == enc.eos_id
    plan = json.loads((run / "mix" / "plan.json").read_text())
    assert plan["anneal"]["selection"]["quality_cutoff"]["general"] >= 0.6


def test_mixture_matches_plan_over_10k_samples(packed):
    from streaming.base.util import clean_stale_shared_memory

    from training.data import make_loader

    run, _ = packed
    clean_stale_shared_memory()
    loader = make_loader(run / "shards", run / "mix" / "plan.json", "pretrain", batch_size=8, seed=3, epoch_size=10_000)
    counts = Counter(d for batch in loader.dataset for d in [batch["domain"]])
    total = sum(counts.values())
    assert total >= 10_000
    assert abs(counts["general"] / total - 0.7) < 0.02 and abs(counts["drama"] / total - 0.3) < 0.02


def uids(loader, n_batches=None):
    """A fingerprint per batch; stops after `n_batches` without fetching one more."""
    from itertools import islice

    return [batch["input_ids"].sum().item() for batch in islice(loader, n_batches)]


def test_resume_mid_epoch_equals_uninterrupted(packed):
    from streaming.base.util import clean_stale_shared_memory

    from training.data import make_loader

    run, _ = packed
    args = (run / "shards", run / "mix" / "plan.json", "pretrain")
    clean_stale_shared_memory()
    full = uids(make_loader(*args, batch_size=4, seed=5, epoch_size=400))
    clean_stale_shared_memory()
    first = make_loader(*args, batch_size=4, seed=5, epoch_size=400)
    head = uids(first, 30)
    state = first.state_dict()
    del first
    clean_stale_shared_memory()
    second = make_loader(*args, batch_size=4, seed=5, epoch_size=400)
    second.load_state_dict(state)
    tail = uids(second)
    assert head + tail == full and len(full) == 100


RANK_SCRIPT = r"""
import json, os, sys
import torch.distributed as dist
sys.path.insert(0, {repo!r})
from training.data import make_loader
dist.init_process_group("gloo")
loader = make_loader({shards!r}, {plan!r}, "long_context", batch_size=2, seed=1)
seen = [u for s in loader.dataset for u in [s["uid"]]]
with open(os.path.join({out!r}, f"rank{{dist.get_rank()}}.json"), "w") as f:
    json.dump(seen, f)
dist.barrier()
dist.destroy_process_group()
"""


def test_two_gloo_ranks_never_share_a_sample(packed, tmp_path):
    from streaming.base.util import clean_stale_shared_memory

    run, _ = packed
    clean_stale_shared_memory()
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT.format(repo=str(REPO), shards=str(run / "shards"), plan=str(run / "mix" / "plan.json"),
                                         out=str(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29531",
                           str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # one stream at its natural size: every sample once, split between the ranks
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == len(read_stream(run / "shards" / "long_context" / "general"))


# --- held-out validation streams ---------------------------------------------------------

VALID_FRACTION = 0.1


@pytest.fixture(scope="module")
def held_out(packed, tmp_path_factory):
    """The `packed` run's documents, plan and tokenizer through `shards` again, standalone, with
    a held-out fraction (valid_seq_len set apart from the phases' lengths)."""
    run, docs = packed
    root = tmp_path_factory.mktemp("held")
    cfg = root / "shards.yaml"
    cfg.write_text(f"""
executor: {{workers: 2}}
stages:
  shards:
    plan: {run / 'mix' / 'plan.json'}
    tokenizer: {run / 'tokenizer' / 'tokenizer.model'}
    seq_len: {{pretrain: 256, anneal: 256, long_context: 512}}
    domains: [general, drama]
    valid_fraction: {VALID_FRACTION}
    valid_seq_len: 128
""")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "-q", "stage", "shards", "--input", str(run / "docs"),
                           "--output", str(root / "shards"), "--config", str(cfg)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, root / "shards"


def stream_documents(folder: Path, eos_id: int) -> list[tuple[int, ...]]:
    """The documents of a stream, in order, as token tuples (EOS-separated runs, EOS dropped)."""
    samples = read_stream(folder)
    flat = np.concatenate([s["tokens"][: s["length"]] for s in samples]).astype(np.int64)
    return [tuple(p[:-1].tolist()) for p in np.split(flat, np.flatnonzero(flat == eos_id) + 1)[:-1]]


def test_held_out_documents_only_in_valid_streams(held_out):
    from pipeline.stages.mixing import _hash01, selected

    from training.data import validation_streams

    run, shards = held_out
    enc = Encoder(run / "tokenizer" / "tokenizer.model")
    source = [d for shard in sorted((run / "docs").glob("*.jsonl.zst")) for d in read_shard(shard)]
    by_tokens = {tuple(ids): d["id"] for d, ids in zip(source, enc.encode([d["text"] for d in source]))}
    assert len(by_tokens) == len(source)  # distinct texts, distinct token runs: a run names its document
    held = {d["id"] for d in source if _hash01(d["id"], "valid") < VALID_FRACTION}
    plan = json.loads((run / "mix" / "plan.json").read_text())
    manifest = json.loads((shards / "_manifest.json").read_text())
    for domain in ("general", "drama"):
        domain_docs = [d for d in source if d["meta"]["domain"] == domain]
        domain_held = {d["id"] for d in domain_docs if d["id"] in held}
        assert 0 < len(domain_held) < len(domain_docs)
        # every held-out document exactly once in valid/<domain>, and nothing else there
        valid = Counter(by_tokens[run_] for run_ in stream_documents(shards / "valid" / domain, enc.eos_id))
        assert valid == Counter(domain_held)
        samples = read_stream(shards / "valid" / domain)
        assert all(len(s["tokens"]) == 128 for s in samples)
        stats = manifest["stats"]["streams"][f"valid/{domain}"]
        assert stats["documents"] == len(domain_held) and stats["tokens"] == sum(int(s["length"]) for s in samples)
        # every phase's training stream: exactly its selection minus the held-out documents
        for phase in ("pretrain", "anneal", "long_context"):
            folder = shards / phase / domain
            expected = {d["id"] for d in domain_docs
                        if domain in plan[phase]["domains"] and selected(d, plan[phase], {}) and d["id"] not in held}
            seen = [by_tokens[r] for r in stream_documents(folder, enc.eos_id)] if folder.exists() else []
            assert not set(seen) & held, (phase, domain)
            assert Counter(seen) == Counter(expected), (phase, domain)
    assert sorted(validation_streams(shards)) == ["drama", "general"]
    assert manifest["stats"]["valid_documents"] == len(held)


def test_valid_fraction_zero_writes_no_valid_streams(packed):
    from training.data import validation_streams

    run, _ = packed
    assert not (run / "shards" / "valid").exists()
    assert validation_streams(run / "shards") == {}
    stats = json.loads((run / "shards" / "_manifest.json").read_text())["stats"]
    assert not any(k.startswith("valid") for k in stats["streams"]) and "valid_tokens" not in stats


def test_shards_valid_config_errors_and_default_length(tmp_path):
    from pydantic import ValidationError

    from pipeline.errors import ConfigError
    from pipeline.stages.mixing import ShardsConfig, ShardsStage

    with pytest.raises(ConfigError, match=r"stages\.tok\.seq_len\.valid"):
        ShardsStage("tok", ShardsConfig(seq_len={"pretrain": 64, "valid": 64}), [], tmp_path).validate_inputs()
    ShardsStage("tok", ShardsConfig(seq_len={"pretrain": 64}, valid_fraction=0.2), [], tmp_path).validate_inputs()
    for bad in (-0.1, 0.5):
        with pytest.raises(ValidationError, match="valid_fraction"):
            ShardsConfig(valid_fraction=bad)
    assert ShardsConfig(seq_len={"anneal": 64, "pretrain": 32, "long_context": 512}).resolved_valid_seq_len() == 32
    assert ShardsConfig(seq_len={"anneal": 64, "long_context": 512}).resolved_valid_seq_len() == 512
    assert ShardsConfig(seq_len={"pretrain": 32}, valid_seq_len=100).resolved_valid_seq_len() == 100


def test_eval_loader_reads_one_stream_in_order_every_pass(held_out):
    import torch
    from streaming.base.util import clean_stale_shared_memory

    from training.data import make_eval_loader, validation_streams

    _, shards = held_out
    stream = validation_streams(shards)["general"]
    samples = read_stream(stream)
    expected = torch.from_numpy(np.stack([s["tokens"].astype(np.int64) for s in samples]))
    clean_stale_shared_memory()
    loader = make_eval_loader(stream, batch_size=3)
    first = list(loader)
    assert len(first) == len(loader) == -(-len(samples) // 3)
    assert torch.equal(torch.cat([b["input_ids"] for b in first]), expected)
    assert set(first[0]) == {"input_ids", "document_ids", "attention_mask"}
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, list(loader)))  # same again
    capped = make_eval_loader(stream, batch_size=3, max_batches=2)
    for _ in range(2):  # a capped pass stops early; the next starts from the first sample again
        head = list(capped)
        assert len(head) == len(capped) == 2
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(head, first[:2]))


def reference_positions(doc_ids: list[int]) -> list[int]:
    out = []
    for i, d in enumerate(doc_ids):
        out.append(0 if i == 0 or d != doc_ids[i - 1] else out[-1] + 1)
    return out


def test_segment_batch_and_document_positions():
    import torch

    from training.data import collate, position_ids_from_documents, segment_batch

    # two packed sequences of 8: [a a a b b b b b] (b runs on past the cut at 4), [c c c c c c + 2 pad]
    samples = [{"tokens": np.arange(10, 18, dtype=np.uint16), "doc_starts": np.array([0, 3], np.int32), "length": 8},
               {"tokens": np.array([20, 21, 22, 23, 24, 25, 0, 0], np.uint16), "doc_starts": np.array([0], np.int32),
                "length": 6}]
    batch = collate(samples)
    seg = segment_batch(batch, 4)
    assert seg["input_ids"].shape == seg["attention_mask"].shape == seg["document_ids"].shape == (4, 4)
    for k in range(4):  # row k is the k-th cut in reading order
        i, j = divmod(k, 2)
        assert torch.equal(seg["input_ids"][k], batch["input_ids"][i, 4 * j: 4 * j + 4])
        assert torch.equal(seg["attention_mask"][k], batch["attention_mask"][i, 4 * j: 4 * j + 4])
        orig = batch["document_ids"][i, 4 * j: 4 * j + 4]
        new = seg["document_ids"][k]
        assert new[0] == 0 and bool((new[1:] >= new[:-1]).all())
        assert torch.equal(new[:, None] == new[None, :], orig[:, None] == orig[None, :])  # same documents
    assert seg["document_ids"][1].tolist() == [0, 0, 0, 0]  # b continues past the cut as the row's document 0
    assert seg["attention_mask"][3].tolist() == [True, True, False, False]
    pos = position_ids_from_documents(seg["document_ids"])
    assert pos.dtype == torch.long
    assert pos[0].tolist() == [0, 1, 2, 0] and pos[1].tolist() == [0, 1, 2, 3]  # b restarts at the cut
    full = position_ids_from_documents(batch["document_ids"])
    assert full[0].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"8 .*multiple of seq_len 3"):
        segment_batch(batch, 3)
    # against a plain loop on random document layouts, any leading shape
    gen = torch.Generator().manual_seed(0)
    docs = torch.cumsum((torch.rand(3, 5, 64, generator=gen) < 0.15).long(), dim=-1)
    got = position_ids_from_documents(docs)
    assert got.shape == docs.shape
    for row, p in zip(docs.reshape(-1, 64), got.reshape(-1, 64)):
        assert p.tolist() == reference_positions(row.tolist())
    seg = segment_batch({"input_ids": docs[0], "document_ids": docs[0], "attention_mask": docs[0] >= 0}, 16)
    for row, p in zip(seg["document_ids"], position_ids_from_documents(seg["document_ids"])):
        assert row[0] == 0 and p.tolist() == reference_positions(row.tolist())
