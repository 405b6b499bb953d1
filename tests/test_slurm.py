"""The SLURM executor against a real single-machine cluster (slurmctld + slurmd + munge)."""
import json
import subprocess
from pathlib import Path

import pytest

from conftest import tree_bytes
from pipeline.config import ExecutorConfig
from pipeline.executors.slurm import array_spec, render_training_job


def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text("""
run: {name: ci}
executor:
  kind: local
  workers: 2
  slurm: {time: "00:10:00", mem: 500M, poll_seconds: 0.5}
stages:
  sample: {files: 6, docs_per_file: 30}
  ingest: {tasks: 3}
  exact: {buckets: 2}
""")
    return cfg


def test_array_spec():
    assert array_spec([0, 1, 2, 3], None) == "0-3"
    assert array_spec([1, 3, 4, 5, 9], 2) == "1,3-5,9%2"


def test_dry_run_prints_scripts_and_changes_nothing(tmp_path, cli):
    run = tmp_path / "run"
    out = cli("run", str(config(tmp_path)), "--run-dir", str(run), "--dry-run", "executor.kind=slurm",
              "executor.slurm.partition=debug", "executor.slurm.setup=['source /opt/env/bin/activate']").stdout
    assert not run.exists()
    assert "#SBATCH --partition=debug" in out and "source /opt/env/bin/activate" in out
    assert "--array=0-5 " in out and "--array=0-2 " in out and "--array=0-1 " in out
    assert "--dependency=afterok:<sample/finalize>" in out and "--dependency=afterok:<exact/reduce>" in out
    assert out.count("-m pipeline task") == 5 and out.count("-m pipeline finalize") == 3


def test_values_are_shell_quoted(tmp_path):
    script = render_training_job(ExecutorConfig(slurm={"setup": ["module load cuda"]}), "r; rm -rf /", "pretrain",
                                 tmp_path / "dir with space", nodes=2, procs_per_node=8,
                                 entry_module="launch.train", entry_args=["--config", "a b.yaml"])
    assert "--job-name='r; rm -rf /-pretrain'" in script
    assert "'a b.yaml'" in script and "--nproc-per-node=8" in script and "--rdzv-backend=c10d" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.slurm
def test_pipeline_on_real_slurm_equals_local(tmp_path, cli, slurm_cluster):
    cfg = config(tmp_path)
    local = tmp_path / "local"
    cli("run", str(cfg), "--run-dir", str(local))
    run = tmp_path / "slurm"
    out = cli("run", str(cfg), "--run-dir", str(run), "executor.kind=slurm", env=slurm_cluster, timeout=900).stdout
    assert "sample: submitted jobs" in out and "exact: submitted jobs" in out
    manifests = {p.parent.name: json.loads(p.read_text()) for p in run.glob("*/_manifest.json")}
    assert {k: m["status"] for k, m in manifests.items()} == {"sample": "done", "ingest": "done", "exact": "done"}
    assert manifests["exact"]["executor"] == "slurm" and "exact/keys" in manifests["exact"]["slurm_jobs"]
    assert (run / "ingest" / "_slurm" / "main.sbatch").exists()
    assert tree_bytes(run) and tree_bytes(run) == tree_bytes(local)
    local_stats = json.loads((local / "exact" / "_manifest.json").read_text())["stats"]
    assert manifests["exact"]["stats"]["removed"] == local_stats["removed"]
    # a rerun submits nothing
    again = cli("run", str(cfg), "--run-dir", str(run), "executor.kind=slurm", env=slurm_cluster).stdout
    assert "nothing to do" in again


@pytest.mark.slurm
def test_failed_task_on_slurm_is_reported(tmp_path, cli, slurm_cluster):
    cfg = config(tmp_path)
    run = tmp_path / "slurm"
    cli("run", str(cfg), "--run-dir", str(run), "--only", "sample")
    # the ingest array's tasks die as on a broken node; the stage after it is cancelled by SLURM
    bad = cli("run", str(cfg), "--run-dir", str(run), "executor.kind=slurm",
              """executor.slurm.setup=['[ "$SLURM_JOB_NAME" != ci-ingest-main ] || exit 3']""",
              env=slurm_cluster, check=False, timeout=900)
    assert bad.returncode == 1 and "stage ingest did not finish on SLURM" in bad.stderr
    assert json.loads((run / "ingest" / "_manifest.json").read_text())["status"] == "submitted"
    assert json.loads((run / "exact" / "_manifest.json").read_text())["status"] == "submitted"
    assert not list((run / "exact" / "_tasks").glob("*/*.done"))


@pytest.mark.slurm
def test_two_process_training_job_on_real_slurm(tmp_path, cli, slurm_cluster, train_corpus):
    """A pretrain stage as a SLURM job: srun runs torchrun (2 gloo ranks, c10d rendezvous on the
    first node), rank 0 writes the done marker, the finalize job merges it; the losses equal a
    local run's step for step."""
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"""
run: {{name: ci}}
executor:
  slurm: {{time: "00:10:00", mem: 3G, poll_seconds: 0.5}}
stages:
  pretrain:
    shards: {train_corpus / 'shards'}
    plan: {train_corpus / 'mix' / 'plan.json'}
    tokenizer: {train_corpus / 'tokenizer'}
    tokens: 10240
    micro_batch_size: 2
    zero: {{stage: 2}}
    log_every_steps: 1
    checkpoint: {{every_steps: 5}}
    launch: {{procs_per_node: 2}}
""")
    local, remote = tmp_path / "local", tmp_path / "slurm"
    cli("run", str(cfg), "--run-dir", str(local))
    dry = cli("run", str(cfg), "--run-dir", str(remote), "executor.kind=slurm", "--dry-run").stdout
    assert "--rdzv-backend=c10d" in dry and "-m launch.train --stage-dir" in dry and "--mark-done" in dry
    assert "#SBATCH --nodes=1" in dry and "#SBATCH --cpus-per-task=2" in dry
    out = cli("run", str(cfg), "--run-dir", str(remote), "executor.kind=slurm", env=slurm_cluster, timeout=900).stdout
    assert "pretrain: submitted jobs pretrain/train-0=" in out
    manifest = json.loads((remote / "pretrain" / "_manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["stats"]["complete"] and manifest["stats"]["steps"] == 40
    assert (remote / "pretrain" / "export" / "model.safetensors").exists()
    log = next((remote / "pretrain" / "_slurm").glob("train-train-0-*.out")).read_text()
    assert "[rank 0] INFO training: step 40/40" in log

    def losses(run):
        lines = (run / "pretrain" / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]
    assert losses(remote) == losses(local) and len(losses(local)) == 40
