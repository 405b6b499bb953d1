"""Atomic, verified, rotating training checkpoints around DeepSpeed's own.

    <root>/step_00000100/      DeepSpeed's files (model, optimizer, scheduler; partitioned per
                               rank under ZeRO), rng/rank_NNNNN.pt, trainer_state.json
                               (step, tokens, loader state, model config, world size) and
                               checksums.json (sha256 of every other file), written last
    <root>/latest              the name of the newest complete checkpoint, written after it

Every rank writes into `.tmp-step_...`; rank 0 checksums, renames and only then points
`latest` at it, so a crash at any moment leaves the previous checkpoint intact. On resume a
latest that is missing files or fails its checksums is reported and the one before it used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
CHECKSUMS = "checksums.json"
LATEST = "latest"
TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    pass


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: Path) -> None:
    sums = {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS}
    tmp = folder / f"{CHECKSUMS}.partial"
    tmp.write_text(json.dumps(sums, indent=1))
    os.replace(tmp, folder / CHECKSUMS)


def verify(folder: Path, full: bool = True) -> str | None:
    """None when the checkpoint is complete and intact, else why not."""
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return "no checksums.json (the save did not finish)"
    for rel, digest in sums.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if full and sha256(path) != digest:
            return f"{rel} does not match its checksum"
    return None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointManager:
    def __init__(self, root: str | Path, keep: int = 3, verify_checksums: bool = True):
        self.root = Path(root)
        self.keep = keep
        self.verify_checksums = verify_checksums
        self.rank = dist.get_rank() if dist.is_initialized() else 0

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def clean_partial(self) -> None:
        """Removes half-written checkpoints a killed run left (rank 0, before anyone saves)."""
        if self.rank == 0 and self.root.exists():
            for tmp in self.root.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(tmp, ignore_errors=True)
        self._barrier()

    def save(self, engine, step: int, trainer_state: dict) -> Path:
        """Collective: every rank calls it at the same step."""
        name = step_name(step)
        tmp_tag = TMP_PREFIX + name
        self.root.mkdir(parents=True, exist_ok=True)
        engine.save_checkpoint(str(self.root), tag=tmp_tag, save_latest=False)
        tmp = self.root / tmp_tag
        (tmp / "rng").mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), tmp / "rng" / f"rank_{self.rank:05d}.pt")
        self._barrier()
        final = self.root / name
        if self.rank == 0:
            (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1, default=str))
            write_checksums(tmp)
            if final.exists():  # a checkpoint of the same step from before a crash
                shutil.rmtree(final)
            os.replace(tmp, final)
            latest_tmp = self.root / f"{LATEST}.partial"
            latest_tmp.write_text(name)
            os.replace(latest_tmp, self.root / LATEST)
            self._rotate()
        self._barrier()
        return final

    def _rotate(self) -> None:
        steps = sorted(p for p in self.root.glob("step_*") if p.is_dir())
        for old in steps[: max(0, len(steps) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)

    def find_resumable(self) -> Path | None:
        """The newest intact checkpoint, agreed by all ranks (rank 0 checks, then broadcasts)."""
        choice = [None]
        if self.rank == 0:
            choice[0] = self._newest_intact()
        if dist.is_initialized():
            dist.broadcast_object_list(choice, src=0)
        return Path(choice[0]) if choice[0] else None

    def _newest_intact(self) -> str | None:
        if not self.root.exists():
            return None
        latest = (self.root / LATEST).read_text().strip() if (self.root / LATEST).exists() else None
        candidates = sorted((p for p in self.root.glob("step_*") if p.is_dir()), reverse=True)
        if latest and (self.root / latest) not in candidates:
            log.warning("checkpoint %s named by %s does not exist", latest, self.root / LATEST)
        for folder in candidates:
            problem = verify(folder, full=self.verify_checksums)
            if problem is None:
                if latest and folder.name != latest:
                    log.warning("resuming from %s instead of the latest %s", folder.name, latest)
                return str(folder)
            log.warning("checkpoint %s is unusable (%s); trying the one before it", folder, problem)
        return None

    @staticmethod
    def read_state(folder: Path) -> dict:
        return json.loads((folder / STATE_FILE).read_text())

    def load(self, engine, folder: Path) -> dict:
        """Collective: restores the engine (model, optimizer, scheduler) and this rank's RNG."""
        path, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {folder}")
        rng_file = folder / "rng" / f"rank_{self.rank:05d}.pt"
        set_rng_state(torch.load(rng_file, weights_only=False))
        return self.read_state(folder)
