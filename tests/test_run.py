"""`coordinator run/status/stage` end to end through the CLI, as a user runs them."""
import json
from pathlib import Path

from conftest import REPO, tree_bytes

from data.jsonl import read_shard

import pytest
import yaml

FULL_DEMO = str(REPO / "configs" / "demo.yaml")
DATA_STAGES = ["sample", "ingest", "url", "exact", "lines", "minhash", "language", "heuristics", "train_quality", "quality",
               "train_domain", "domain", "mix", "tokenizer", "shards"]
TRAIN_STAGES = ["pretrain", "long_context", "anneal"]


@pytest.fixture(scope="module")
def data_demo(tmp_path_factory) -> str:
    """The demo's curation stages only: what most tests here need, without the training."""
    raw = yaml.safe_load(open(FULL_DEMO))
    raw["stages"] = {k: v for k, v in raw["stages"].items() if k in DATA_STAGES}
    path = tmp_path_factory.mktemp("cfg") / "demo-data.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def manifests(run: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(run.glob("*/_manifest.json"))}


def test_demo_runs_then_reruns_nothing(tmp_path, cli):
    run = tmp_path / "demo"
    first = cli("run", FULL_DEMO, "--run-dir", str(run))
    assert "not run before" in first.stdout
    m1 = manifests(run)
    assert set(m1) == set(DATA_STAGES + TRAIN_STAGES) and all(m["status"] == "done" for m in m1.values())
    for m in m1.values():
        assert {"status", "fingerprint", "inputs", "stats", "started", "finished"} <= set(m)
    ingest = m1["ingest"]["stats"]
    assert ingest["docs_in"] == ingest["docs_out"] + sum(ingest["removed"].values())
    assert {"malformed_json", "invalid_utf8", "empty_text"} <= set(ingest["removed"])
    assert m1["exact"]["stats"]["removed"]["exact_duplicate"] > 0
    for name in ("url", "lines", "minhash", "language", "heuristics", "quality"):
        assert m1[name]["stats"]["removed"], name
    assert set(m1["domain"]["stats"]["domains"]) == {"general", "math", "code", "multilingual"}
    assert m1["shards"]["stats"]["tokens"] > 10_000 and m1["tokenizer"]["stats"]["vocab_size"] == 2000
    assert (run / "shards" / "pretrain" / "math" / "index.json").exists()
    assert m1["url"]["inputs"][0]["fingerprint"] == m1["ingest"]["fingerprint"]
    # every removed record is kept with its reason
    removed = [r for p in (run / "ingest" / "removed").glob("*.jsonl.zst") for r in read_shard(p)]
    assert len(removed) == sum(ingest["removed"].values()) and all(r["reason"] and r["file"] for r in removed)
    assert (run / "config.yaml").exists()
    # training: the loss falls, validation perplexity is measured before and after every stage
    losses = [json.loads(line)["loss"] for line in (run / "pretrain" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < losses[0] / 2
    for name in TRAIN_STAGES:
        stats = m1[name]["stats"]
        assert stats["complete"] and set(stats["val_ppl"]) == {"general", "math", "code", "multilingual"}, name
    assert m1["pretrain"]["stats"]["val_ppl"]["general"] < m1["pretrain"]["stats"]["val_before_ppl"]["general"] / 10
    assert set(m1["long_context"]["stats"]["passkey"]) == {"256", "512"}
    assert json.loads((run / "long_context" / "export" / "config.json").read_text())["rope_theta"] == 40000
    anneal_lr = [json.loads(line)["lr"] for line in (run / "anneal" / "metrics.jsonl").read_text().splitlines()
                 if "lr" in json.loads(line)]
    assert anneal_lr[-1] == 0.0 and anneal_lr == sorted(anneal_lr, reverse=True)
    assert "val_ppl={" in first.stdout

    before = tree_bytes(run)
    second = cli("run", FULL_DEMO, "--run-dir", str(run))
    assert "nothing to do" in second.stdout
    assert manifests(run) == m1 and tree_bytes(run) == before

    status = json.loads(cli("status", str(run), "--json").stdout)
    rows = {r["stage"]: r for r in status["stages"]}
    assert list(rows) == DATA_STAGES + TRAIN_STAGES
    assert rows["ingest"]["docs_out"] == ingest["docs_out"] and rows["exact"]["removed"]["exact_duplicate"] > 0
    assert rows["ingest"]["bytes_out"] > 0 and rows["ingest"]["seconds"] > 0
    table = cli("status", str(run)).stdout
    assert "exact_duplicate=" in table and "malformed_json=" in table


def test_changed_section_reruns_it_and_downstream_only(data_demo, tmp_path, cli):
    run = tmp_path / "demo"
    cli("run", data_demo, "--run-dir", str(run))
    m1 = manifests(run)
    out = cli("run", data_demo, "--run-dir", str(run), "stages.ingest.min_chars=40").stdout
    m2 = manifests(run)
    assert m2["sample"] == m1["sample"]
    assert m2["ingest"]["fingerprint"] != m1["ingest"]["fingerprint"]
    assert m2["exact"]["fingerprint"] != m1["exact"]["fingerprint"]
    assert m2["ingest"]["stats"]["removed"]["too_short"] > 0
    assert "sample       skip    up to date" in out
    # the saved config is the resolved one, overrides included
    assert "min_chars: 40" in (run / "config.yaml").read_text()


def test_only_from_force_and_dry_run(data_demo, tmp_path, cli):
    run = tmp_path / "demo"
    dry = cli("run", data_demo, "--run-dir", str(run), "--dry-run")
    assert "dry run" in dry.stdout and "exact" in dry.stdout and not run.exists()
    bad = cli("run", data_demo, "--run-dir", str(run), "--only", "exact", check=False)
    assert bad.returncode == 3 and "needs stage url" in bad.stderr
    cli("run", data_demo, "--run-dir", str(run), "--only", "sample")
    assert set(manifests(run)) == {"sample"}
    cli("run", data_demo, "--run-dir", str(run), "--from", "ingest")
    m1 = manifests(run)
    forced = cli("run", data_demo, "--run-dir", str(run), "--only", "exact", "--force")
    assert "exact        run     forced" in forced.stdout
    m2 = manifests(run)
    assert m2["ingest"] == m1["ingest"] and m2["exact"]["started"] >= m1["exact"]["started"]


def test_exit_codes_and_one_line_reasons(tmp_path, cli):
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("run: {name: x}\nstages:\n  ingest: {input: /no/such/path, taskz: 2}\n")
    proc = cli("run", str(bad_cfg), check=False)
    assert proc.returncode == 2 and "stages.ingest.taskz: unknown key" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    bad_cfg.write_text("run: {name: x}\nstages:\n  ingest: {input: /no/such/path}\n")
    proc = cli("run", str(bad_cfg), "--run-dir", str(tmp_path / "r"), check=False)
    assert proc.returncode == 3 and "/no/such/path" in proc.stderr
    assert cli("run", str(tmp_path / "none.yaml"), check=False).returncode == 2


def test_stage_standalone_on_real_data(tmp_path, cli, shared_data):
    out = tmp_path / "wiki"
    res = cli("stage", "ingest", "--input", str(shared_data / "wikitext2" / "valid.txt"), "--output", str(out),
              "text_split=pattern", "split_pattern=^ = [^=]", "tasks=1", "source=wikitext")
    docs = list(read_shard(out / "00000.jsonl.zst"))
    assert len(docs) == 60 and docs[0]["source"] == "wikitext" and docs[0]["id"] == "valid.txt#2"
    assert "done" in res.stdout
    again = cli("stage", "ingest", "--input", str(shared_data / "wikitext2" / "valid.txt"), "--output", str(out),
                "text_split=pattern", "split_pattern=^ = [^=]", "tasks=1", "source=wikitext")
    assert "up to date" in again.stdout
    # a second stage standalone on the first one's output folder
    cli("stage", "exact", "--input", str(out), "--output", str(tmp_path / "dedup"), "executor.workers=2")
    m = json.loads((tmp_path / "dedup" / "_manifest.json").read_text())
    assert m["stats"]["docs_in"] == 60


def test_stage_refuses_foreign_output_folder(tmp_path, cli, shared_data):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    proc = cli("stage", "ingest", "--input", str(shared_data / "shakespeare"), "--output", str(out), check=False)
    assert proc.returncode == 1 and "not a stage folder" in proc.stderr
    assert (out / "precious.txt").read_text() == "keep me"


def test_one_coordinator_per_run_folder(data_demo, tmp_path, cli):
    import fcntl

    run = tmp_path / "demo"
    run.mkdir()
    with open(run / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = cli("run", data_demo, "--run-dir", str(run), check=False)
    assert proc.returncode == 1 and "in use by another coordinator" in proc.stderr
    assert not (run / "sample").exists()
