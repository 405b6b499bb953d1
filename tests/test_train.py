"""The trainer end to end on real text: 2 gloo ranks under torchrun, DeepSpeed ZeRO, kill -9 and
SIGTERM mid-run then resume (same loss at every step), export, and the refusals."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO

STEPS = 40


def job(corpus: Path, **overrides) -> dict:
    """A TrainConfig for the tiny preset on the corpus: 40 steps, a checkpoint every 4."""
    cfg = {
        "shards": str(corpus / "shards"), "plan": str(corpus / "mix" / "plan.json"), "tokenizer": str(corpus / "tokenizer"),
        "model": "tiny", "segments": [{"tokens": STEPS * 2 * 2 * 64}], "micro_batch_size": 2,
        "optimizer": {"lr": 0.01}, "schedule": {"kind": "cosine", "warmup_steps": 3},
        "zero": {"stage": 2}, "checkpoint": {"every_steps": 4, "keep": 2}, "eval": {"every_steps": 8, "batches": 2},
        "log_every_steps": 1, "tensorboard": False,
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def launch(tmp_path: Path, cfg: dict, out: Path, procs: int = 2) -> subprocess.Popen:
    """torchrun -m launch.train in its own session (so the whole tree can be signalled)."""
    path = tmp_path / f"job-{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           "-m", "launch.train", "--config", str(path), "--output", str(out)]
    log = open(out.parent / f"{out.name}.log", "a")
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def finish(proc: subprocess.Popen, out: Path, expect: int = 0, timeout: float = 600) -> None:
    code = proc.wait(timeout=timeout)
    if code != expect:
        log = (out.parent / f"{out.name}.log").read_text()
        raise AssertionError(f"training exited {code}, expected {expect}\n{log[-4000:]}")


def losses(out: Path) -> dict[int, tuple[float, float]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in records if "loss" in r}


def kill_tree(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """kill -9 on torchrun and every rank (torchrun starts each rank in a session of its own)."""
    import psutil

    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in victims:
        p.send_signal(sig)
    proc.wait()
    psutil.wait_procs(victims, timeout=30)


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "metrics.jsonl").exists() and max(losses(out), default=0) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended (exit {proc.returncode}) before step {step}")
        time.sleep(0.02)
    raise AssertionError(f"no step {step} within {timeout}s")


@pytest.fixture(scope="module")
def uninterrupted(train_corpus, tmp_path_factory):
    """Reference runs, one per ZeRO stage, never stopped."""
    tmp = tmp_path_factory.mktemp("reference")
    runs = {}
    for stage in (2, 3):
        out = tmp / f"zero{stage}"
        proc = launch(tmp, job(train_corpus, zero={"stage": stage}), out)
        finish(proc, out)
        runs[stage] = out
    return runs


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_kill_9_then_resume_gives_the_same_loss_at_every_step(train_corpus, uninterrupted, tmp_path, zero_stage):
    reference = losses(uninterrupted[zero_stage])
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert reference[STEPS][0] < reference[1][0] - 1.0  # it learns
    out = tmp_path / "run"
    proc = launch(tmp_path, job(train_corpus, zero={"stage": zero_stage}), out)
    wait_for_step(out, 10, proc)
    kill_tree(proc)
    logged = max(losses(out))
    saved = int((out / "checkpoints" / "latest").read_text().split("_")[1])
    assert not (out / "export").exists() and logged < STEPS
    assert saved % 4 == 0 and 8 <= saved <= logged
    finish(launch(tmp_path, job(train_corpus, zero={"stage": zero_stage}), out), out)
    resumed = losses(out)
    assert sorted(resumed) == list(range(1, STEPS + 1))  # what the killed run logged after its checkpoint is gone
    assert resumed == reference
    result = json.loads((out / "result.json").read_text())
    assert result["resumed_from"].endswith(f"step_{saved:08d}") and result["complete"]
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000036", "step_00000040"]


def test_sigterm_checkpoints_at_once_and_resumes_exactly(train_corpus, uninterrupted, tmp_path):
    out = tmp_path / "run"
    cfg = job(train_corpus, zero={"stage": 2}, checkpoint={"every_steps": 100, "keep": 2})
    proc = launch(tmp_path, cfg, out)
    wait_for_step(out, 5, proc)
    os.kill(proc.pid, signal.SIGTERM)  # to torchrun, which forwards it to the ranks, as SLURM does
    proc.wait(timeout=120)
    assert proc.returncode != 0
    saved = (out / "checkpoints" / "latest").read_text()
    stopped_at = int(saved.split("_")[1])
    assert 5 <= stopped_at < STEPS
    log = (out.parent / "run.log").read_text()
    assert f"stopped by signal at step {stopped_at} after checkpointing" in log
    finish(launch(tmp_path, cfg, out), out)
    assert losses(out) == losses(uninterrupted[2])


def test_export_loads_with_auto_classes_and_matches_training(train_corpus, uninterrupted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import training.model  # noqa: F401  (registers the Auto classes)
    from training.data import make_eval_loader, validation_streams
    from training.trainer import model_inputs

    out = uninterrupted[3]  # ZeRO-3: the parameters were partitioned over the ranks
    export = out / "export"
    assert (export / "model.safetensors").exists() and (export / "config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(str(export)).eval()
    tok = AutoTokenizer.from_pretrained(str(export))
    assert tok("the king", add_special_tokens=False)["input_ids"]
    result = json.loads((out / "result.json").read_text())
    # the export's loss on a held-out stream equals what the trainer measured on its weights
    stream = validation_streams(train_corpus / "shards")["drama"]
    total = count = 0.0
    with torch.no_grad():
        for batch in make_eval_loader(stream, batch_size=2, max_batches=4):
            inputs = model_inputs(batch, batch["input_ids"].shape[1], True, torch.device("cpu"))
            n = (inputs["labels"][:, 1:] != -100).sum().item()
            total += model(**inputs).loss.item() * n
            count += n
    assert count == result["val"]["valid/drama"]["tokens"]
    assert abs(total / count - result["val"]["valid/drama"]["loss"]) < 1e-4
    assert result["val"]["valid/drama"]["ppl"] < result["val_before"]["valid/drama"]["ppl"] / 2


def test_refusals_before_training(train_corpus, uninterrupted, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted[2] / "checkpoints", out / "checkpoints")
    # a different model
    wider = job(train_corpus, model_overrides={"hidden_size": 96})
    proc = launch(tmp_path, wider, out)
    finish(proc, out, expect=1)
    log = (out.parent / "run.log").read_text()
    assert "is of a different model (" in log and "hidden_size: 64 -> 96" in log
    # a different world size
    finish(launch(tmp_path, job(train_corpus), out, procs=1), out, expect=1)
    assert "was written by 2 ranks and this run has 1" in (out.parent / "run.log").read_text()
    # a corrupted latest: the one before it is used, with a warning
    latest = out / "checkpoints" / "step_00000040"
    victim = next(p for p in latest.rglob("*optim_states.pt"))
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    finish(launch(tmp_path, job(train_corpus), out), out)
    log = (out.parent / "run.log").read_text()
    assert "step_00000040 is unusable" in log and "does not match its checksum" in log
    assert json.loads((out / "result.json").read_text())["resumed_from"].endswith("step_00000036")
    # a shard folder that does not exist
    bad = job(train_corpus, shards=str(tmp_path / "nowhere"))
    finish(launch(tmp_path, bad, tmp_path / "bad"), tmp_path / "bad", expect=1)
    assert "shards/plan: no MDS streams for phase pretrain" in (tmp_path / "bad.log").read_text()


def test_anneal_ablation_compares_two_data_sets_from_one_checkpoint(train_corpus, uninterrupted, tmp_path, cli):
    cfg = tmp_path / "ablation.yaml"
    cfg.write_text(f"""
run: {{name: ablation}}
stages:
  anneal:
    shards: {train_corpus / 'shards'}
    plan: {train_corpus / 'mix' / 'plan.json'}
    tokenizer: {train_corpus / 'tokenizer'}
    init_from: {uninterrupted[2] / 'export'}
    tokens: 2560
    micro_batch_size: 2
    optimizer: {{lr: 0.003}}
    log_every_steps: 1
    candidates: {{high_quality: {{phase: anneal}}, web_mix: {{phase: pretrain}}}}
""")
    out = cli("run", str(cfg), "--run-dir", str(tmp_path / "run")).stdout
    stats = json.loads((tmp_path / "run" / "anneal" / "_manifest.json").read_text())["stats"]
    runs = stats["candidates"]
    assert set(runs) == {"high_quality", "web_mix"} and all(r["complete"] and r["steps"] == 20 for r in runs.values())
    # the same starting checkpoint, measured on the same held-out sets
    assert runs["high_quality"]["val_before_ppl"] == runs["web_mix"]["val_before_ppl"]
    mean = {k: sum(r["val_ppl"].values()) / 2 for k, r in runs.items()}
    assert stats["best_candidate"] == min(mean, key=mean.get) and "best_candidate=" in out
    for name in runs:
        folder = tmp_path / "run" / "anneal" / "candidates" / name
        lr = [json.loads(line)["lr"] for line in (folder / "metrics.jsonl").read_text().splitlines() if "lr" in line]
        assert lr[-1] == 0.0 and lr == sorted(lr, reverse=True)  # linear to zero over the anneal's tokens
        assert (folder / "export" / "model.safetensors").exists()


def test_the_deepspeed_launcher_runs_the_same_training(train_corpus, uninterrupted, tmp_path, cli):
    """`launch.launcher: deepspeed` starts the ranks with DeepSpeed's own launcher instead of
    torchrun; same data, same steps (its ranks keep OpenMP's default threads, so the last bits
    of a float may differ)."""
    cfg = job(train_corpus)
    cfg.pop("segments")
    section = {**cfg, "tokens": STEPS * 2 * 2 * 64, "launch": {"procs_per_node": 2, "launcher": "deepspeed"}}
    (tmp_path / "ds.yaml").write_text(yaml.safe_dump({"run": {"name": "ds"}, "stages": {"pretrain": section}}))
    cli("run", str(tmp_path / "ds.yaml"), "--run-dir", str(tmp_path / "run"))
    ours, ref = losses(tmp_path / "run" / "pretrain"), losses(uninterrupted[2])
    assert sorted(ours) == sorted(ref)
    assert all(abs(ours[s][0] - ref[s][0]) < 1e-4 for s in ref)
    assert "deepspeed" in (tmp_path / "run" / "pretrain" / "train.log").read_text().lower()


def test_activation_checkpointing_changes_nothing_and_options_train(train_corpus, tmp_path):
    """Recomputing activations in backward gives the same losses; Grokfast, ZeRO-Offload and
    gradient accumulation run through DeepSpeed and learn."""
    runs = {}
    for name, extra in {"plain": {}, "recompute": {"activation_checkpointing": True},
                        "options": {"grokfast": {"alpha": 0.9, "lamb": 1.0}, "grad_accum": 2,
                                    "zero": {"stage": 2, "offload_optimizer": True}}}.items():
        out = tmp_path / name
        cfg = job(train_corpus, segments=[{"tokens": 12 * 2 * 64}], **extra)
        finish(launch(tmp_path, cfg, out, procs=1), out)
        runs[name] = losses(out)
    assert runs["recompute"] == runs["plain"] and len(runs["plain"]) == 12
    options = runs["options"]
    assert len(options) == 6  # two micro steps per optimizer step
    assert options[6][0] < options[1][0] - 0.3
    # the gradient EMA is optimizer state, saved in every rank's ZeRO partition
    import torch

    folder = tmp_path / "options" / "checkpoints" / "step_00000006"
    state = torch.load(next(folder.glob("*optim_states.pt")), weights_only=False)
    assert "grokfast_ema" in repr(state["optimizer_state_dict"])
