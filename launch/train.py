"""The training entry point, the same under every launcher:

    torchrun --nproc-per-node=8 -m launch.train --config job.yaml --output runs/x/pretrain
    srun torchrun --nnodes=$N --rdzv-backend=c10d ... -m launch.train --stage-dir runs/x/pretrain
    deepspeed --num_gpus=8 --module launch.train --config job.yaml --output out

`--config` is a TrainConfig YAML (see training/config.py); `--stage-dir` runs a planned
training stage of a pipeline run (its `_plan.json` says everything), and `--mark-done` has
rank 0 write the stage task's done marker, which is how a SLURM job reports success.
Exit codes: 0 done, 2 bad config or checkpoint, 143 stopped by a signal after checkpointing.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="TrainConfig YAML")
    src.add_argument("--stage-dir", help="a planned training stage folder")
    p.add_argument("--output", help="with --config: where checkpoints, metrics and the export go")
    p.add_argument("--step", default="train", help="with --stage-dir: the stage step")
    p.add_argument("--task", type=int, default=0, help="with --stage-dir: the task (e.g. an ablation candidate)")
    p.add_argument("--mark-done", action="store_true", help="write the stage task's done marker at the end")
    p.add_argument("--backend", default="auto", help="auto (nccl on GPU, gloo on CPU), nccl or gloo")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    return p


def load_job(args):
    """-> (TrainConfig, output folder, stage or None)."""
    from pydantic import ValidationError

    from training.config import TrainConfig

    if args.stage_dir:
        from pipeline.worker import load_stage

        stage = load_stage(args.stage_dir)
        cfg, out = stage.train_job(args.step, args.task)
        return cfg, Path(out), stage
    import yaml

    if not args.output:
        raise SystemExit("launch.train: --output is required with --config")
    try:
        return TrainConfig.model_validate(yaml.safe_load(Path(args.config).read_text()) or {}), Path(args.output), None
    except ValidationError as err:
        keys = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise SystemExit(f"launch.train: {args.config}: {keys}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from launch.dist import init_distributed

    env = init_distributed(args.backend)
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {env.rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("DeepSpeed", "deepspeed", "streaming"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from training.checkpoint import CheckpointError
    from training.trainer import INTERRUPTED_EXIT_CODE, TrainingInterrupted

    import torch.distributed as dist

    try:
        return _run(args, env)
    except TrainingInterrupted as err:
        logging.getLogger("launch").warning("%s", err)
        return INTERRUPTED_EXIT_CODE
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"launch.train: error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(args, env) -> int:
    import torch.distributed as dist

    from training.trainer import train

    cfg, out, stage = load_job(args)
    result = train(cfg, out)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        from data.jsonl import atomic_write_json

        atomic_write_json(out / "result.json", result)
        if args.mark_done and stage is not None:
            from pipeline.stage import write_marker

            write_marker(stage.task_marker(args.step, args.task), stage.task_stats(result, args.task))
    dist.barrier()
    return 0


if __name__ == "__main__":
    code = main()
    # skip interpreter teardown: gloo / DeepSpeed threads torn down in arbitrary order sometimes
    # abort a finished rank ("terminate called without an active exception")
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
