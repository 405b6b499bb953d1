"""Environment -> torch.distributed, the same for every launcher.

torchrun (alone or one per node under `srun`, c10d rendezvous) and the `deepspeed` launcher
all export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain `python` run
has none of them and is world size 1. The backend is NCCL when the process has a GPU and
gloo otherwise; DeepSpeed is told to use its CPU accelerator before it is first imported
when there is no GPU.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_env() -> DistEnv:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return DistEnv(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")), local_world)


def init_distributed(backend: str = "auto", timeout_minutes: float = 30) -> DistEnv:
    """Initializes the default process group (also for one process, so collectives work the
    same everywhere) and pins the local GPU. Returns the rank layout."""
    import torch

    env = read_env()
    has_gpu = torch.cuda.is_available()
    if not has_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if backend == "auto":
        backend = "nccl" if has_gpu else "gloo"
    if has_gpu:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    os.environ.setdefault("RANK", str(env.rank))
    os.environ.setdefault("WORLD_SIZE", str(env.world_size))
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(env.local_world_size))
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_minutes),
                               verbose=False)
    log.info("rank %d of %d (local %d) on %s, backend %s", env.rank, env.world_size, env.local_rank,
             "cuda" if has_gpu else "cpu", backend)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
