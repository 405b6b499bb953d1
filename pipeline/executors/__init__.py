"""Executors run a stage's tasks; they never know what a stage computes."""
from pipeline.executors.local import LocalExecutor
from pipeline.executors.slurm import SlurmExecutor


def make_executor(config):
    if config.kind == "slurm":
        return SlurmExecutor(config)
    return LocalExecutor(config)


__all__ = ["LocalExecutor", "SlurmExecutor", "make_executor"]
