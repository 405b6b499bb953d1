"""Distributed training with DeepSpeed ZeRO, as the trainer sets it up, against its peers.

Two measurements in one command, each on N ranks (default 2) that this script starts under
torch.distributed.run (gloo on CPU, nccl on GPUs), with the trainer's own pieces: the model
preset (training.engine.build_model), the client AdamW over the muP parameter groups
(build_optimizer) and the DeepSpeed config from a TrainConfig (deepspeed_config / initialize):

  memory      bytes of parameters, gradients and optimizer state that each rank holds after
              deepspeed.initialize, one training step and the next backward (all of it alive at
              once), ZeRO-3 against the peer ZeRO-0 (no partitioning), read from the engine's and
              optimizer's tensors, each storage counted once; the process RSS growth over the same
              span as a cross-check (on GPU also torch.cuda.memory_allocated's). Each stage runs in
              fresh processes, so one's allocations do not hide the other's.
  throughput  tokens/s of forward + backward + optimizer step, DeepSpeed ZeRO-2 against the
              peer plain torch DistributedDataParallel + torch.optim.AdamW over the same param
              groups (same model, micro batch, seed and batches; gradient clipping and the LR
              schedule as the trainer has them), after warm-up steps, median over the timed
              steps; the two alternate in rounds (A, B, A, B) since CPU timings drift.

Batches are real tokens: from MDS shards (`--shards DIR --plan plan.json`, read with
training.data.make_loader), otherwise WikiText-2 valid tokenized with a sentencepiece model
trained on the fly and packed to --seq; documents are masked as in training.

    python benchmarks/train.py                          # CPU, 2 gloo ranks: tiny preset, 4 x 256 tokens/rank, fp32
    python benchmarks/train.py --shards runs/x/shards --plan runs/x/mix/plan.json
    python benchmarks/train.py --device cuda --preset 125m --seq 2048 --micro-batch 8   # bf16, MFU

On GPU the peer trains fp32 weights under torch.autocast(bf16), DeepSpeed bf16 weights with fp32
master copies: both are the usual bf16 mixed precision of their framework.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # OpenMP spin-waits are ruinous on a busy 2-core box

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PIPELINE_SHARED_DATA", REPO.parent / "shared" / "datasets"))
sys.path.insert(0, str(REPO))

SCHEDULE_STEPS = 1000  # length of the LR schedule both sides follow; only its first steps run
MIB = 1 << 20
# gradient buffers of DeepSpeed's optimizer wrappers outside any .grad (ZeRO-3's reduced partition,
# the bf16 optimizer's fp32 accumulator)
GRADIENT_BUFFER_ATTRS = ("grad_partitions_flat_buffer", "fp32_groups_gradients_flat")
MODEL_STATE_KINDS = ("parameters: own partition", "parameters: full", "gradients", "fp32 master partition",
                     "optimizer state")
PHASES = ("memory:0", "memory:3", "throughput")


# ---------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--nproc", type=int, default=2, help="ranks (on cuda: GPUs, one each)")
    p.add_argument("--preset", default="tiny", help="configs/model preset name or YAML path")
    p.add_argument("--width", type=int, help="override hidden_size")
    p.add_argument("--layers", type=int, help="override num_hidden_layers (the preset's layer pattern repeats)")
    p.add_argument("--seq", type=int, help="tokens per row (default 256; with --shards, the shards' length)")
    p.add_argument("--micro-batch", type=int, default=4, help="rows per rank per step")
    p.add_argument("--vocab", type=int, default=8000, help="sentencepiece vocabulary when no shards are given")
    p.add_argument("--shards", help="MDS shard folder (<shards>/<phase>/<domain>/)")
    p.add_argument("--plan", help="mix plan.json for --shards")
    p.add_argument("--phase", default="pretrain", help="phase of the plan to read with --shards")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per framework before the rounds")
    p.add_argument("--steps", type=int, default=4, help="timed steps per framework per round (distinct batches)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deepspeed", type=json.loads, default={}, metavar="JSON",
                   help="merged into the DeepSpeed config, as a TrainConfig's deepspeed: mapping "
                        """(e.g. '{"zero_optimization": {"reduce_bucket_size": 2e7}}')""")
    p.add_argument("--worker", choices=PHASES, help=argparse.SUPPRESS)  # set when started under torchrun
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if bool(args.shards) != bool(args.plan):
        p.error("--shards and --plan go together")
    return args


# ---------------------------------------------------------------- orchestration (the command a user runs)
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:  # the user's options come from the file, not torchrun's command line (see launch)
        options = json.loads((Path(args.workdir) / "args.json").read_text())
        return worker(argparse.Namespace(**{**options, "worker": args.worker, "workdir": args.workdir}))
    if args.device == "cuda":
        import torch

        if torch.cuda.device_count() < args.nproc:
            raise SystemExit(f"--device cuda with --nproc {args.nproc} needs {args.nproc} GPUs, "
                             f"found {torch.cuda.device_count()} (try --nproc {max(1, torch.cuda.device_count())})")
    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    (workdir / "args.json").write_text(json.dumps(vars(args)))
    try:
        data_note = f"MDS shards {args.shards} ({args.phase})" if args.shards else prepare_text_batches(args, workdir)
        results = {phase: launch(args, phase, workdir) for phase in PHASES}
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"a benchmark phase failed ({err}); its log is in {workdir}") from None
    report(args, data_note, results)
    shutil.rmtree(workdir, ignore_errors=True)


def prepare_text_batches(args, workdir: Path) -> str:
    """WikiText-2 valid -> sentencepiece (trained here) -> rows packed to --seq, collated as the
    trainer's loader collates them; just enough rows for every rank's distinct batches."""
    from itertools import islice

    import numpy as np
    import torch

    from data.packing import pack
    from data.tokenizer import Encoder, train_sentencepiece
    from training.data import collate

    text = (SHARED / "wikitext2" / "valid.txt").read_text()
    docs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    encoder = Encoder(train_sentencepiece(docs, workdir / "tokenizer", args.vocab))
    seq = args.seq or 256
    rows_needed = args.nproc * args.steps * args.micro_batch
    packed = islice(pack(encoder.encode(docs), seq, encoder.eos_id, encoder.sp.pad_id(), dtype=np.int64), rows_needed)
    samples = [{"tokens": tokens, "doc_starts": starts, "length": length} for tokens, starts, length in packed]
    if len(samples) < rows_needed:
        raise SystemExit(f"WikiText-2 valid packs into {len(samples)} rows of {seq}, {rows_needed} are needed")
    torch.save({**collate(samples), "vocab_size": torch.tensor(encoder.vocab_size)}, workdir / "batches.pt")
    return f"WikiText-2 valid, sentencepiece BPE {encoder.vocab_size} trained here, packed to {seq}"


def launch(args, phase: str, workdir: Path) -> dict:
    """Runs one phase on fresh ranks under torch.distributed.run; -> what its rank 0 wrote.

    The options travel in args.json: torchrun's parser also reads the script's arguments and
    takes `--nproc` for an abbreviation of its own `--nproc-per-node`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           str(Path(__file__).resolve()), "--worker", phase, "--workdir", str(workdir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # so launch.dist picks gloo and DeepSpeed its CPU accelerator
    if phase.startswith("memory"):
        # glibc otherwise raises its mmap threshold as buffers are freed and keeps later frees in the
        # heap, so RSS would follow the allocator's history more than the tensors alive
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 << 10))
    log = workdir / f"{phase.replace(':', '-')}.log"
    print(f"[{phase}] running on {args.nproc} ranks ...", flush=True)
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        print(log.read_text()[-6000:], file=sys.stderr)
        raise subprocess.CalledProcessError(proc.returncode, f"phase {phase}")
    return json.loads((workdir / f"{phase.replace(':', '-')}.json").read_text())


# ---------------------------------------------------------------- on every rank
def worker(args) -> None:
    import logging

    import torch
    import torch.distributed as dist

    from launch.dist import init_distributed

    env = init_distributed("auto")
    for noisy in ("DeepSpeed", "deepspeed", "streaming"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    batches, vocab_size = rank_batches(args, env.rank, env.world_size, device)
    cfg = train_config(args, vocab_size)
    if args.worker == "throughput":
        result = measure_throughput(cfg, batches, args, device)
    else:
        result = measure_memory(cfg, int(args.worker.split(":")[1]), batches[0], device)
    per_rank = [None] * env.world_size
    dist.all_gather_object(per_rank, result)
    if env.is_main:
        summary = {"ranks": per_rank, "world_size": env.world_size, "backend": dist.get_backend(),
                   "device": device_name(device), "rows": list(batches[0]["input_ids"].shape),
                   "versions": versions(), "threads": torch.get_num_threads()}
        (Path(args.workdir) / f"{args.worker.replace(':', '-')}.json").write_text(json.dumps(summary))
    dist.barrier()
    # the results are written: skip the process group's and the interpreter's teardown, where a
    # C++ thread now and then aborts a rank ("terminate called without an active exception")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def rank_batches(args, rank: int, world: int, device) -> tuple[list[dict], int]:
    """This rank's `--steps` distinct micro batches as model inputs (the trainer's
    `model_inputs`: document masking, padding ignored) and the vocabulary every rank agrees on."""
    import torch
    import torch.distributed as dist

    from training.trainer import model_inputs

    if args.shards:
        from streaming.base.util import clean_stale_shared_memory

        from training.data import make_loader

        clean_stale_shared_memory()  # what a killed earlier run left in /dev/shm, as the trainer does
        loader = iter(make_loader(args.shards, args.plan, args.phase, batch_size=args.micro_batch, seed=args.seed))
        raw = [next(loader) for _ in range(args.steps)]
        seq = args.seq or raw[0]["input_ids"].shape[1]
        vocab = torch.tensor(max(int(b["input_ids"].max()) for b in raw) + 1)
        dist.all_reduce(vocab, op=dist.ReduceOp.MAX)  # the shard tokenizer's size is not recorded in the shards
    else:
        rows = torch.load(Path(args.workdir) / "batches.pt")
        vocab = rows.pop("vocab_size")
        mine = {k: v[rank::world] for k, v in rows.items()}  # disjoint rows per rank, as a sampler gives
        mb = args.micro_batch
        raw = [{k: v[i * mb:(i + 1) * mb] for k, v in mine.items()} for i in range(args.steps)]
        seq = raw[0]["input_ids"].shape[1]
    return [model_inputs(b, seq, True, device) for b in raw], int(vocab)


def train_config(args, vocab_size: int):
    """The TrainConfig a real run of this model would have (data paths unused here)."""
    import yaml

    from training.config import TrainConfig
    from training.engine import resolve_preset

    overrides = {}
    preset = yaml.safe_load(resolve_preset(args.preset).read_text())
    if vocab_size > preset.get("vocab_size", 0):  # the preset's own when the data's ids fit in it
        overrides["vocab_size"] = vocab_size
    if args.width:
        overrides["hidden_size"] = args.width
    if args.layers:
        overrides.update(repeated_layer_pattern(preset, args.layers))
    return TrainConfig(shards=args.shards or "-", plan=args.plan or "-", segments=[{"tokens": 1}],
                       model=args.preset, model_overrides=overrides, micro_batch_size=args.micro_batch,
                       deepspeed=args.deepspeed, precision="bf16" if args.device == "cuda" else "fp32", seed=args.seed)


def repeated_layer_pattern(preset: dict, layers: int) -> dict:
    """Per-layer settings of a preset stretched or cut to another depth (the pattern repeats)."""
    depth = preset["num_hidden_layers"]
    out = {"num_hidden_layers": layers}
    if isinstance(preset.get("ffn_types"), list):
        out["ffn_types"] = [preset["ffn_types"][i % depth] for i in range(layers)]
    if preset.get("mod_layers"):
        out["mod_layers"] = [i for i in range(layers) if i % depth in set(preset["mod_layers"])]
    return out


# ---------------------------------------------------------------- memory: ZeRO-3 against ZeRO-0
def measure_memory(cfg, stage: int, batch: dict, device) -> dict:
    """What a rank holds at the end of a steady-state backward: after deepspeed.initialize and one
    step (torch's AdamW creates its moments in its first step), the next step's gradients are
    there too, so all of the model's state is alive at once."""
    import psutil

    from training.config import ZeroConfig

    cfg = cfg.model_copy(update={"zero": ZeroConfig(stage=stage)})
    # the first engine of a process imports code (ZeRO-3: torch._inductor, networkx: ~50 MB) and
    # sets up communication; a narrow throwaway one pays for that before the baseline is read
    narrow = deepspeed_engine(cfg.model_copy(update={"model_overrides": {**cfg.model_overrides, "hidden_size": 64}}))
    train_step(narrow, batch)
    narrow.destroy()
    del narrow
    gc.collect()
    rss_before, cuda_before = psutil.Process().memory_info().rss, cuda_allocated(device)
    engine = deepspeed_engine(cfg)
    train_step(engine, batch)
    engine.backward(engine(**batch).loss)
    gc.collect()
    return {"held": model_state_bytes(engine),
            "rss_delta": psutil.Process().memory_info().rss - rss_before,
            "cuda_delta": cuda_allocated(device) - cuda_before if device.type == "cuda" else None,
            "reduce_bucket": reduce_bucket_bytes(engine.optimizer),
            "persistence_threshold": engine.zero_param_persistence_threshold()}


def deepspeed_engine(cfg):
    """deepspeed.initialize as the trainer calls it."""
    from training.engine import build_model, build_model_config, initialize

    return initialize(cfg, build_model(cfg, build_model_config(cfg, None)), SCHEDULE_STEPS)[0]


def train_step(engine, batch: dict) -> None:
    engine.backward(engine(**batch).loss)
    engine.step()


class StorageTally:
    """Bytes by kind, each storage once: views of one flat buffer (ZeRO's partitions, its
    gradient buffer) count as the buffer they live in, whichever view is seen first."""

    def __init__(self):
        self.seen: set[int] = set()
        self.bytes: dict[str, int] = {}

    def add(self, kind: str, tensor) -> None:
        if tensor is None or tensor.numel() == 0:  # ZeRO-3 leaves released parameters empty
            return
        storage = tensor.untyped_storage()
        if storage.data_ptr() in self.seen:
            return
        self.seen.add(storage.data_ptr())
        self.bytes[kind] = self.bytes.get(kind, 0) + storage.nbytes()


def model_state_bytes(engine) -> dict[str, int]:
    """What this rank holds of the model's state, read from the engine's objects."""
    import torch

    tally = StorageTally()
    for p in engine.module.parameters():
        tally.add("parameters: own partition", getattr(p, "ds_tensor", None))
        tally.add("parameters: full", p.data)  # ZeRO-3: only those under the persistence threshold
        tally.add("gradients", p.grad)
    wrapper = engine.optimizer
    for attr in GRADIENT_BUFFER_ATTRS:
        buffers = getattr(wrapper, attr, None)
        for buffer in buffers if isinstance(buffers, list) else [buffers]:
            tally.add("gradients", buffer)
    inner = wrapper
    while hasattr(inner, "optimizer"):  # DeepSpeed's wrappers -> the client AdamW
        inner = inner.optimizer
    # the AdamW state is keyed by what it updates: the wrappers' fp32 master copies (ZeRO's flat
    # partitions; at ZeRO-0 in fp32 the model's own parameters, already counted), which sit in
    # its param_groups only during a step
    for master, state in inner.state.items():
        tally.add("fp32 master partition", master)
        tally.add("gradients", master.grad)
        for value in state.values():
            if isinstance(value, torch.Tensor):
                tally.add("optimizer state", value)
    return tally.bytes


def reduce_bucket_bytes(optimizer) -> int:
    """ZeRO-3's gradient reduce buckets: torch.empty of reduce_bucket_size elements, reserved
    whatever the model's size (on CPU its untouched pages never become resident)."""
    buckets = getattr(optimizer, "ipg_buckets", {}) or {}
    buffers = [b.buffer for b in buckets.values() if getattr(b, "buffer", None) is not None]
    return sum(b.numel() * b.element_size() for b in buffers)


def cuda_allocated(device) -> int:
    import torch

    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


# ---------------------------------------------------------------- throughput: ZeRO-2 against DDP
def measure_throughput(cfg, batches: list[dict], args, device) -> dict:
    from training.config import ZeroConfig
    from training.flops import model_flops_per_token
    from training.model import scan_path

    cfg = cfg.model_copy(update={"zero": ZeroConfig(stage=2)})
    peer_step, model = ddp_step(cfg, device)
    steps = {"zero2": functools.partial(train_step, deepspeed_engine(cfg)), "ddp": peer_step}
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        for i in range(args.warmup):
            step(batches[i % len(batches)])
    for _ in range(args.rounds):
        for name, step in steps.items():
            for batch in batches:
                seconds[name].append(timed(step, batch, device))
    return {"seconds": seconds, "tokens_per_step": int(batches[0]["input_ids"].numel()), "scan_path": scan_path(),
            "params": sum(p.numel() for p in model.parameters()),
            "flops_per_token": model_flops_per_token(model, batches[0]["input_ids"].shape[1])}


def ddp_step(cfg, device):
    """The peer: what a plain PyTorch trainer of the same model does in one step; -> (step, model)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from training.engine import build_model, build_model_config, build_optimizer, use_bf16
    from training.schedules import lr_multiplier

    model = build_model(cfg, build_model_config(cfg, None)).to(device).train()
    optimizer = build_optimizer(cfg, model)
    s = cfg.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(
        s.kind, SCHEDULE_STEPS, s.warmup_steps, s.min_ratio, s.decay_fraction, s.decay_shape, s.gamma))
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    bf16 = use_bf16(cfg)

    def step(batch: dict) -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = ddp(**batch).loss
        loss.backward()
        if cfg.gradient_clipping:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.gradient_clipping)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return step, model


def timed(step, batch: dict, device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


# ---------------------------------------------------------------- small helpers
def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def versions() -> dict:
    import deepspeed
    import torch

    return {"torch": torch.__version__, "deepspeed": deepspeed.__version__}


# ---------------------------------------------------------------- the report
def report(args, data_note: str, results: dict) -> None:
    tp = results["throughput"]
    v, stats = tp["versions"], tp["ranks"][0]
    print(f"\ndevice={tp['device']} ranks={tp['world_size']} ({tp['backend']}) threads/rank={tp['threads']} "
          f"precision={'bf16' if args.device == 'cuda' else 'fp32'} torch={v['torch']} deepspeed={v['deepspeed']}")
    shape = "".join(f" {k}={getattr(args, k)}" for k in ("width", "layers") if getattr(args, k))
    print(f"model={args.preset}{shape} params={stats['params'] / 1e6:.2f}M  "
          f"micro batch={tp['rows'][0]} rows x {tp['rows'][1]} tokens per rank")
    print(f"data: {data_note}")
    report_memory(results["memory:0"], results["memory:3"])
    report_throughput(args, tp)


def report_memory(zero0: dict, zero3: dict) -> None:
    stages = {"ZeRO-0": zero0["ranks"], "ZeRO-3": zero3["ranks"]}
    header = "".join(f"{f'{name} r{r}':>11s}" for name, ranks in stages.items() for r in range(len(ranks)))
    print("\nper-rank model state after deepspeed.initialize, 1 step and the next backward "
          "(MiB, each storage counted once)")
    print(f"{'':30s}{header}{'ZeRO-3/ZeRO-0':>15s}")

    def row(label: str, value) -> None:
        """`value(rank result) -> bytes`; the ratio is of the sums over ranks."""
        zero0_values, zero3_values = ([value(r) for r in ranks] for ranks in stages.values())
        ratio = f"{sum(zero3_values) / sum(zero0_values):15.3f}" if sum(zero0_values) else f"{'-':>15s}"
        print(f"{label:30s}" + "".join(f"{x / MIB:11.2f}" for x in zero0_values + zero3_values) + ratio)

    for kind in MODEL_STATE_KINDS:
        row(kind, lambda r: r["held"].get(kind, 0))
    row("total", lambda r: sum(r["held"].values()))
    row("process RSS growth", lambda r: r["rss_delta"])
    if zero0["ranks"][0]["cuda_delta"] is not None:
        row("cuda memory_allocated growth", lambda r: r["cuda_delta"])
    row("reduce buckets (not in total)", lambda r: r["reduce_bucket"])
    print(f"ZeRO-3 keeps parameters of under {zero3['ranks'][0]['persistence_threshold']:,} elements whole on every "
          f"rank (stage3_param_persistence_threshold): 'parameters: full'.\nIts reduce buckets are torch.empty of "
          f"reduce_bucket_size elements whatever the model's size; on CPU the pages the gradients pass through become "
          f"resident, which RSS shows.")


def report_throughput(args, tp: dict) -> None:
    world, tokens = tp["world_size"], tp["ranks"][0]["tokens_per_step"]
    per_rank = [r["seconds"] for r in tp["ranks"]]
    names = {"zero2": "DeepSpeed ZeRO-2", "ddp": "DDP + torch AdamW"}
    n = len(per_rank[0]["zero2"])
    print(f"\ntraining throughput: forward+backward+step, {world} ranks x {tokens} tokens per step, median of {n} "
          f"timed steps each ({args.rounds} alternating rounds of {args.steps}, after {args.warmup} warm-up)")
    rate = {}
    for key, name in names.items():
        step_seconds = [max(r[key][i] for r in per_rank) for i in range(n)]  # a step ends when its slowest rank does
        median = statistics.median(step_seconds)
        rate[key] = world * tokens / median
        line = (f"{name:20s} {rate[key]:11,.0f} tokens/s   step {median * 1e3:8.1f} ms "
                f"(min {min(step_seconds) * 1e3:.1f}, max {max(step_seconds) * 1e3:.1f})")
        if args.device == "cuda":
            from training.flops import peak_tflops

            peak = peak_tflops(tp["device"])
            if peak:
                mfu = tp["ranks"][0]["flops_per_token"] * rate[key] / (world * peak * 1e12)
                line += f"   MFU {100 * mfu:5.1f}% (of {peak:.0f} TFLOP/s bf16 per GPU)"
        print(line)
    print(f"mamba2 scan path: {tp['ranks'][0]['scan_path']}")
    print(f"\nratio ZeRO-2 / DDP tokens/s: {rate['zero2'] / rate['ddp']:.2f}x")


if __name__ == "__main__":
    main()
