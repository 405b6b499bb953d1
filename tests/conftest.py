"""Shared fixtures: real data from ../shared/datasets, the CLI in a subprocess, and a real
single-machine SLURM cluster (slurmctld + slurmd + munge) started for the session."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# small matmuls slow down by ~80x when OpenMP threads spin while another process holds a core
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PIPELINE_SHARED_DATA", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.fail(f"real test data not found at {SHARED}; set PIPELINE_SHARED_DATA")
    return SHARED


def coordinator(*args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `python -m pipeline ARGS` as a user would, from the repository root."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"coordinator {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and it avoids OpenMP spin-waiting (tens of times
    slower) when the other core is busy with another process."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli():
    return coordinator


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every output file of a run folder (no manifests, logs or control files) -> its bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(("_", ".")) for part in rel.parts) and rel.name != "config.yaml":
            out[rel.as_posix()] = path.read_bytes()
    return out


# ---------------------------------------------------------------- training data
def labelled_docs(shared: Path) -> list[dict]:
    """WikiText-2 paragraphs (domain general) and Shakespeare speeches (domain drama), with
    made-up quality scores, as documents for mix -> tokenizer -> shards."""
    import re

    wiki = [p.strip() for p in re.split(r"\n\s*\n", (shared / "wikitext2" / "valid.txt").read_text()) if len(p) > 200]
    play = [p.strip() for p in (shared / "shakespeare" / "input.txt").read_text().split("\n\n") if len(p) > 100]
    docs = [{"id": f"w{i}", "text": t, "meta": {"domain": "general", "quality": (i % 10) / 10}} for i, t in enumerate(wiki)]
    docs += [{"id": f"p{i}", "text": t, "meta": {"domain": "drama", "quality": (i % 7) / 7}} for i, t in enumerate(play)]
    return docs


@pytest.fixture(scope="session")
def train_corpus(tmp_path_factory, shared_data):
    """WikiText-2 paragraphs (general) and Shakespeare speeches (drama) -> mix -> tokenizer ->
    shards with 10% of the documents held out for validation."""
    from data.jsonl import ShardWriter

    root = tmp_path_factory.mktemp("train")
    with ShardWriter(root / "docs" / "00000.jsonl.zst") as w:
        for d in labelled_docs(shared_data):
            w.write({"source": "t", **d})
    cfg = root / "data.yaml"
    cfg.write_text(f"""
run: {{name: data}}
executor: {{workers: 2}}
stages:
  docs: {{type: exact, input: {root / 'docs'}}}
  mix:
    phases:
      pretrain: {{tokens: 300000, weights: {{general: 0.7, drama: 0.3}}}}
      anneal: {{tokens: 30000, weights: {{general: 0.5, drama: 0.5}}, quality_top_fraction: 0.3}}
      long_context: {{tokens: 30000, weights: {{general: 1.0}}, min_chars: 1500}}
  tokenizer: {{vocab_size: 1000, sample_chars: 400000}}
  shards: {{seq_len: {{pretrain: 64, anneal: 64, long_context: 128}}, domains: [general, drama], valid_fraction: 0.1}}
""")
    subprocess.run([sys.executable, "-m", "pipeline", "-q", "run", str(cfg), "--run-dir", str(root / "run")],
                   cwd=REPO, check=True, capture_output=True)
    return root / "run"


# ---------------------------------------------------------------- SLURM
SLURM_CONF = """\
ClusterName=ci
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
NodeName={host} CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_munge(tmp: Path) -> None:
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True)
    for _ in range(50):
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("munged did not start")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real slurmctld + slurmd on this machine; yields the environment to reach it."""
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(b) is None]
    if missing or os.geteuid() != 0:
        why = f"SLURM not available (missing {missing})" if missing else "SLURM test needs root"
        if os.environ.get("CI"):
            pytest.fail(why + "; CI must run the SLURM tests (make slurm-deps installs slurm-wlm + munge)")
        pytest.skip(why + "; `make slurm-deps` installs it")
    tmp = tmp_path_factory.mktemp("slurm")
    (tmp / "state").mkdir()
    (tmp / "spool").mkdir()
    _start_munge(tmp)
    host = socket.gethostname().split(".")[0]
    conf = tmp / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, dir=tmp, cpus=os.cpu_count(), ctld_port=_free_port(), d_port=_free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["slurmctld", "-c", "-i"], env=env, check=True)
    subprocess.run(["slurmd", "-c"], env=env, check=True)
    os.environ["SLURM_CONF"] = str(conf)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()
            if out in ("idle", "mixed", "allocated"):
                break
            time.sleep(0.5)
        else:
            logs = "".join((tmp / f).read_text()[-2000:] for f in ("slurmctld.log", "slurmd.log") if (tmp / f).exists())
            raise RuntimeError(f"SLURM node never became idle (sinfo: {out!r})\n{logs}")
        yield env
    finally:
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            pid = tmp / pid_file
            if pid.exists():
                subprocess.run(["kill", pid.read_text().strip()], check=False)
        os.environ.pop("SLURM_CONF", None)
