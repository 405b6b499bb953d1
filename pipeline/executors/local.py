"""Local executor: a process pool of `workers` processes on this machine."""
from __future__ import annotations

import logging
import multiprocessing as mp
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

from pipeline import worker
from pipeline.errors import StageFailed

log = logging.getLogger(__name__)


class LocalExecutor:
    kind = "local"

    def __init__(self, config):
        self.workers = config.workers
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor:
        """One pool for the whole run: starting workers costs more than most tasks."""
        if self._pool is None:
            ctx = mp.get_context("spawn")  # no inherited locks or threads from the coordinator
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=worker.worker_init)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run_step(self, stage_dir: Path, stage_name: str, step: str, tasks: list[int]) -> None:
        if not tasks:
            return
        bar = tqdm(total=len(tasks), desc=f"{stage_name}/{step}", unit="task", leave=False, disable=None)
        try:
            if self.workers == 1 or len(tasks) == 1:
                for t in tasks:
                    self._run_one(stage_dir, stage_name, step, t)
                    bar.update()
                return
            pool = self.pool()
            futures = {pool.submit(worker.run_task, str(stage_dir), step, t): t for t in tasks}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    err = fut.exception()
                    if err is not None:
                        for other in pending:
                            other.cancel()
                        wait(pending)
                        raise StageFailed(
                            f"stage {stage_name}: step {step} task {futures[fut]} failed: {type(err).__name__}: {err}"
                        ) from err
                    bar.update()
        finally:
            bar.close()

    def _run_one(self, stage_dir: Path, stage_name: str, step: str, task: int) -> None:
        try:
            worker.run_task(stage_dir, step, task)
        except Exception as err:
            raise StageFailed(f"stage {stage_name}: step {step} task {task} failed: {type(err).__name__}: {err}") from err
