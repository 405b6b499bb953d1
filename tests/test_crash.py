"""A real `kill -9` of a real run: the rerun does only what is missing and the result is
byte-identical to an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, tree_bytes


def config(tmp_path: Path, shared: Path) -> Path:
    cfg = tmp_path / "crash.yaml"
    cfg.write_text(f"""
run: {{name: crash}}
executor: {{kind: local, workers: 2}}
stages:
  ingest:
    input: [{shared / 'web-html'}, {shared / 'wikitext2'}]
    tasks: 24
  exact:
    buckets: 3
""")
    return cfg


def done_markers(run: Path) -> list[Path]:
    return sorted(run.glob("ingest/_tasks/main/*.done"))


def test_kill_9_then_resume_is_identical(tmp_path, cli, shared_data):
    cfg = config(tmp_path, shared_data)
    reference = tmp_path / "reference"
    cli("run", str(cfg), "--run-dir", str(reference))

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "-q", "run", str(cfg), "--run-dir", str(run)],
                            cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(done_markers(run)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its pool workers, mid-flight
    proc.wait()
    finished_before = len(done_markers(run))
    assert 0 < finished_before < 24, "the kill must land mid-stage"
    manifest = json.loads((run / "ingest" / "_manifest.json").read_text())
    assert manifest["status"] == "running"

    resumed = cli("run", str(cfg), "--run-dir", str(run))
    assert f"interrupted: {finished_before} of 24 tasks done" in resumed.stdout
    assert not list(run.rglob(".*.tmp-*"))
    assert tree_bytes(run) == tree_bytes(reference)
    assert json.loads((run / "exact" / "_manifest.json").read_text())["status"] == "done"
