"""SLURM executor: one `sbatch --array` job per stage step, `afterok` between them.

Scripts are rendered from the templates in `slurm/` with every value shell-quoted and
written to `<stage>/_slurm/` before submission, so what ran can always be read back.
Dependencies go on the sbatch command line, so a script is the same whether submitted
now or printed by `--dry-run`. `--kill-on-invalid-dep` cancels everything downstream of
a failed task, and the coordinator reports the stage whose logs to read.
"""
from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError, StageFailed

log = logging.getLogger(__name__)
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "slurm"
PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")


def render(template_name: str, values: dict[str, str]) -> str:
    """Fills `{{ name }}` placeholders; values must already be quoted where needed."""
    text = (TEMPLATE_DIR / template_name).read_text()

    def fill(m: re.Match) -> str:
        if m.group(1) not in values:
            raise PipelineError(f"slurm/{template_name}: no value for {{{{ {m.group(1)} }}}}")
        return values[m.group(1)]

    return PLACEHOLDER.sub(fill, text)


def array_spec(tasks: list[int], max_parallel: int | None) -> str:
    """Compact array indices: 0-7 or 1,3,5-6, with an optional %throttle."""
    ranges, start = [], None
    for i, t in enumerate(tasks):
        if start is None:
            start = t
        if i + 1 == len(tasks) or tasks[i + 1] != t + 1:
            ranges.append(f"{start}-{t}" if t != start else str(t))
            start = None
    spec = ",".join(ranges)
    return f"{spec}%{max_parallel}" if max_parallel else spec


@dataclass
class Submission:
    """One job: its script, the sbatch arguments, and what it waits for."""

    name: str
    script_path: Path
    script: str
    args: list[str]
    depends_on: list[str]
    job_id: str | None = None

    def command(self, ids: dict[str, str] | None = None) -> str:
        deps = [ids.get(d, f"<{d}>") if ids else f"<{d}>" for d in self.depends_on]
        dep = [f"--dependency=afterok:{':'.join(deps)}"] if deps else []
        return shlex.join(["sbatch", "--parsable", *self.args, *dep, str(self.script_path)])


class SlurmExecutor:
    kind = "slurm"

    def __init__(self, config):
        self.config = config.slurm
        self.python = self.config.python or sys.executable

    def _options(self, cpus: int | None = None) -> list[str]:
        c = self.config
        opts = [f"--cpus-per-task={cpus or c.cpus_per_task}", f"--time={c.time}"]
        for key, value in (("partition", c.partition), ("account", c.account), ("qos", c.qos), ("mem", c.mem)):
            if value:
                opts.append(f"--{key}={value}")
        return opts + list(c.extra_sbatch)

    def _common(self, job_name: str, log_path: Path) -> dict[str, str]:
        q = shlex.quote
        return {
            "job_name": q(job_name),
            "log_path": q(str(log_path)),
            "sbatch_options": "\n".join(f"#SBATCH {q(o)}" for o in self._options()),
            "workdir": q(str(Path.cwd())),
            "setup": "\n".join(self.config.setup),
            "python": q(self.python),
        }

    def plan_stage(self, run_name: str, stage_name: str, stage_dir: Path, steps: list[tuple[str, list[int]]],
                   upstream: list[str], launch=None) -> list[Submission]:
        """The jobs for one stage: one array per step with pending tasks (a training stage: one
        multi-node torchrun job per task), then a finalize job.

        `upstream` names the jobs (as `<stage>/finalize`) this stage waits for.
        """
        q = shlex.quote
        slurm_dir = stage_dir / "_slurm"
        subs: list[Submission] = []
        previous = list(upstream)
        for step, tasks in steps:
            if not tasks:
                continue
            if launch is not None:
                jobs = [self._training_submission(run_name, stage_name, stage_dir, step, t, launch, previous)
                        for t in tasks]
                subs += jobs
                previous = [j.name for j in jobs]
                continue
            values = self._common(f"{run_name}-{stage_name}-{step}", slurm_dir / f"{step}-%A_%a.out")
            values.update(stage_dir=q(str(stage_dir)), step=q(step))
            script = render("task_array.sbatch", values)
            name = f"{stage_name}/{step}"
            subs.append(Submission(name, slurm_dir / f"{step}.sbatch", script,
                                   [f"--array={array_spec(tasks, self.config.max_parallel)}"], previous))
            previous = [name]
        values = self._common(f"{run_name}-{stage_name}-finalize", slurm_dir / "finalize-%j.out")
        values.update(stage_dir=q(str(stage_dir)))
        subs.append(Submission(f"{stage_name}/finalize", slurm_dir / "finalize.sbatch",
                               render("finalize.sbatch", values), [], previous))
        return subs

    def training_script(self, run_name: str, stage_name: str, stage_dir: Path, nodes: int, procs_per_node: int,
                        entry_module: str, entry_args: list[str], gpus_per_node: int | None = None,
                        job_suffix: str = "") -> str:
        """The multi-node script of a training job: one srun task per node runs torchrun, with
        the c10d rendezvous on the first node of the allocation."""
        q = shlex.quote
        values = self._common(f"{run_name}-{stage_name}{job_suffix}", stage_dir / "_slurm" / f"train{job_suffix}-%j.out")
        options = self._options(max(self.config.cpus_per_task, procs_per_node))
        if gpus_per_node:
            options.append(f"--gpus-per-node={gpus_per_node}")
        values.update(sbatch_options="\n".join(f"#SBATCH {q(o)}" for o in options), nodes=q(str(nodes)),
                      procs_per_node=q(str(procs_per_node)), entry_module=q(entry_module),
                      entry_args=" ".join(q(a) for a in entry_args))
        return render("train_multinode.sbatch", values)

    def _training_submission(self, run_name, stage_name, stage_dir, step, task, launch, depends_on) -> Submission:
        args = ["--stage-dir", str(stage_dir), "--step", step, "--task", str(task), "--backend", launch.backend,
                "--mark-done"]
        script = self.training_script(run_name, stage_name, stage_dir, launch.nodes, launch.procs_per_node,
                                      "launch.train", args, launch.gpus_per_node, f"-{step}-{task}")
        return Submission(f"{stage_name}/{step}-{task}", stage_dir / "_slurm" / f"{step}-{task}.sbatch", script, [],
                          list(depends_on))

    def submit(self, subs: list[Submission], ids: dict[str, str]) -> None:
        for sub in subs:
            sub.script_path.parent.mkdir(parents=True, exist_ok=True)
            sub.script_path.write_text(sub.script)
            cmd = shlex.split(sub.command(ids))
            try:
                out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            except FileNotFoundError:
                raise PipelineError("sbatch not found: is this a SLURM login node? (executor.kind=slurm)") from None
            except subprocess.CalledProcessError as err:
                raise PipelineError(f"sbatch failed for {sub.name}: {err.stderr.strip()}") from None
            sub.job_id = out.stdout.strip().split(";")[0]
            ids[sub.name] = sub.job_id
            log.info("submitted %s as job %s", sub.name, sub.job_id)

    def queued(self, job_ids: list[str]) -> list[str]:
        """The jobs among `job_ids` that are still pending or running."""
        if not job_ids:
            return []
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]

    def wait(self, job_ids: list[str], timeout: float | None = None) -> None:
        """Blocks until none of the jobs is pending or running."""
        start = time.time()
        while True:
            out = subprocess.run(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(job_ids)],
                                 capture_output=True, text=True)
            alive = [line for line in out.stdout.splitlines() if line.strip()]
            if out.returncode != 0 and "Invalid job id" not in out.stderr:
                raise PipelineError(f"squeue failed: {out.stderr.strip()}")
            if not alive:
                return
            if timeout and time.time() - start > timeout:
                raise StageFailed(f"SLURM jobs still running after {timeout:.0f}s: {alive[:5]}")
            time.sleep(self.config.poll_seconds)


def render_training_job(executor_config, run_name: str, stage_name: str, stage_dir: Path, nodes: int,
                        procs_per_node: int, entry_module: str, entry_args: list[str], gpus_per_node: int | None = None) -> str:
    """The multi-node script for a training stage (torchrun per node, c10d rendezvous)."""
    return SlurmExecutor(executor_config).training_script(run_name, stage_name, stage_dir, nodes, procs_per_node,
                                                          entry_module, entry_args, gpus_per_node)
