"""Local executor: a process pool of `workers` processes on this machine."""
from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import sys
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

import tqdm as tqdm_module
from tqdm import tqdm

from pipeline import worker
from pipeline.errors import StageFailed

log = logging.getLogger(__name__)
tqdm_module.tqdm.monitor_interval = 0  # no monitor thread: workers are forked from this process


class LocalExecutor:
    kind = "local"

    def __init__(self, config):
        self.workers = config.workers
        self._pool: ProcessPoolExecutor | None = None

    def pool(self, preload: tuple[str, ...] = ()) -> ProcessPoolExecutor:
        """One pool for the run: starting workers costs more than most tasks. Workers are
        forked (where the OS can), so modules the parent has imported cost them nothing: a
        stage's `preload_modules` (e.g. mosaicml-streaming, ~4 s to import) are imported here
        once, and the pool is re-forked when they were not loaded yet."""
        missing = [m for m in preload if m not in sys.modules]
        if missing:
            for module in missing:
                importlib.import_module(module)
            self.close()
        if self._pool is None:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context(method),
                                             initializer=worker.worker_init)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run_step(self, stage_dir: Path, stage_name: str, step: str, tasks: list[int],
                 preload: tuple[str, ...] = ()) -> None:
        if not tasks:
            return
        bar = tqdm(total=len(tasks), desc=f"{stage_name}/{step}", unit="task", leave=False, disable=None)
        try:
            if self.workers == 1 or len(tasks) == 1:
                for t in tasks:
                    self._run_one(stage_dir, stage_name, step, t)
                    bar.update()
                return
            pool = self.pool(preload)
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
