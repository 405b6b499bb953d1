"""The training loop: DeepSpeed ZeRO over the packed MDS streams, with exact resume.

Called on every rank after torch.distributed is initialized (launch/train.py does that).
One run is a list of segments (sequence length, tokens, RoPE base): pretraining has one,
long-context staging several; the LR schedule spans them all. Every `checkpoint.every_steps`
optimizer steps, on SIGTERM/SIGUSR1 and at the end, the engine, the loader's position and
every rank's RNG are saved; a restarted run continues from the newest intact checkpoint and
logs the same loss at every step as a run that was never stopped.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from training.checkpoint import CheckpointError, CheckpointManager, step_name
from training.config import TrainConfig
from training.metrics import MetricsLogger, RoutingStats, progress_line

log = logging.getLogger("training")
# model config keys that may differ between a checkpoint and the run resuming it
VOLATILE_CONFIG_KEYS = {"transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype",
                        "rope_theta", "use_cache", "_attn_implementation_autoset"}
INTERRUPTED_EXIT_CODE = 143


class TrainingInterrupted(Exception):
    """A signal asked the run to stop; it checkpointed first."""


@dataclass
class SegmentPlan:
    seq_len: int
    steps: int
    first_step: int
    rope_theta: float


class StopSignals:
    """SIGTERM (what torchrun forwards, and SLURM sends at the time limit) and SIGUSR1 (SLURM's
    `--signal` warning) set a flag; the loop checks it, agreed across ranks, between steps."""

    def __init__(self):
        self.received: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = signum

    def any_rank(self, device) -> bool:
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def comparable_config(model_config) -> dict:
    """The architecture as JSON sees it (so a config read back from a checkpoint compares equal)."""
    import json

    return json.loads(json.dumps({k: v for k, v in model_config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}))


def check_resumable(state: dict, folder: Path, model_config, world_size: int, zero_stage: int) -> None:
    """Refuses, before any weight is loaded, a checkpoint this run cannot continue exactly."""
    saved, now = state["model_config"], comparable_config(model_config)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        raise CheckpointError(f"checkpoint {folder} is of a different model ({diffs}); use a new output folder, "
                              f"or start from its export with init_from")
    if state["world_size"] != world_size:
        raise CheckpointError(
            f"checkpoint {folder} was written by {state['world_size']} ranks and this run has {world_size}: its ZeRO "
            f"partitions and per-rank data positions do not carry over exactly; resume with {state['world_size']} "
            f"ranks, or start a new stage from its export (init_from)")
    if state["zero_stage"] != zero_stage:
        raise CheckpointError(f"checkpoint {folder} was written with ZeRO stage {state['zero_stage']}, this run uses "
                              f"{zero_stage}; resume with the same zero.stage")


def plan_segments(cfg: TrainConfig, shard_len: int, tokens_per_step_per_len: int, base_rope: float) -> list[SegmentPlan]:
    plans, first, rope = [], 0, base_rope
    for i, seg in enumerate(cfg.segments):
        seq_len = seg.seq_len or shard_len
        if shard_len % seq_len:
            raise ValueError(f"segments[{i}].seq_len {seq_len} must divide the shards' sequence length {shard_len} "
                             f"(pack the shards at the longest length of the run)")
        rope = seg.rope_theta or rope
        steps = max(1, math.ceil(seg.tokens / (tokens_per_step_per_len * shard_len)))
        plans.append(SegmentPlan(seq_len, steps, first, rope))
        first += steps
    return plans


class Batches:
    """The training stream, endless: a new epoch starts when one ends."""

    def __init__(self, loader):
        self.loader = loader
        self.it = iter(loader)

    def next(self) -> dict:
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)


def model_inputs(batch: dict, seq_len: int, document_masking: bool, device) -> dict:
    """Packed rows -> model kwargs: labels ignore padding and, with document masking, the
    prediction of each document's first token from the previous document."""
    from training.data import position_ids_from_documents, segment_batch

    if batch["input_ids"].shape[1] != seq_len:
        batch = segment_batch(batch, seq_len)
    ids = batch["input_ids"]
    valid = batch["attention_mask"].bool()
    labels = ids.masked_fill(~valid, -100)
    kwargs = {}
    if document_masking:
        docs = batch["document_ids"]
        labels[:, 1:] = labels[:, 1:].masked_fill(docs[:, 1:] != docs[:, :-1], -100)
        kwargs = {"seq_idx": docs.to(device), "position_ids": position_ids_from_documents(docs).to(device)}
    if not bool(valid.all()):
        kwargs["attention_mask"] = valid.to(device)
    return {"input_ids": ids.to(device), "labels": labels.to(device), "use_cache": False, **kwargs}


def real_tokens(inputs: dict, like: torch.Tensor) -> torch.Tensor:
    """Tokens that are not padding (what `tokens` and tokens/s count)."""
    if "attention_mask" in inputs:
        return inputs["attention_mask"].sum().to(like)
    return like.new_tensor(float(inputs["input_ids"].numel()))


@torch.no_grad()
def evaluate(engine, eval_sets: dict[str, list], document_masking: bool, device) -> dict:
    engine.eval()
    out = {}
    for name, batches in eval_sets.items():
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for batch in batches:
            inputs = model_inputs(batch, batch["input_ids"].shape[1], document_masking, device)
            n = (inputs["labels"][:, 1:] != -100).sum()
            total += torch.stack([engine(**inputs).loss.double() * n, n.double()])
        dist.all_reduce(total)
        loss = (total[0] / total[1].clamp(min=1)).item()
        out[name] = {"loss": round(loss, 6), "ppl": round(math.exp(min(loss, 50)), 4), "tokens": int(total[1].item())}
    engine.train()
    return out


def load_eval_sets(shards: str, batch_size: int, max_batches: int, device) -> dict[str, list]:
    """Held-out streams (`<shards>/valid/<domain>`), read once: every evaluation sees the same
    batches. All ranks keep the same count, so ZeRO-3's collectives stay in step."""
    from training.data import make_eval_loader, validation_streams

    sets = {}
    for domain, stream in validation_streams(shards).items():
        batches = list(make_eval_loader(stream, batch_size, max_batches))
        n = torch.tensor([len(batches)], device=device)  # NCCL reduces only GPU tensors
        dist.all_reduce(n, op=dist.ReduceOp.MIN)
        if int(n):
            sets[f"valid/{domain}"] = batches[: int(n)]
    return sets


def _clean_shared_memory() -> None:
    """mosaicml-streaming leaves /dev/shm entries behind when a run is killed (streaming #781).
    Every rank calls it: local rank 0 cleans, and it holds a barrier of its own."""
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()


def train(cfg: TrainConfig, out_dir: str | Path) -> dict:
    from data.tokenizer import Encoder
    from training.data import make_loader, phase_streams
    from training.engine import build_model, build_model_config, initialize, lr_schedule
    from training.flops import model_flops_per_token, peak_tflops

    out_dir = Path(out_dir)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = _device()
    try:
        phase_streams(cfg.shards, cfg.plan, cfg.phase)
    except (FileNotFoundError, KeyError) as err:
        raise ValueError(f"shards/plan: {err}") from None
    tokenizer_model = Path(cfg.tokenizer) / "tokenizer.model" if cfg.tokenizer else None
    if tokenizer_model is not None and not tokenizer_model.exists():
        raise ValueError(f"tokenizer: no tokenizer.model in {cfg.tokenizer}")
    encoder = Encoder(tokenizer_model) if tokenizer_model else None
    model_config = build_model_config(cfg, encoder.vocab_size if encoder else None)
    if encoder and model_config.vocab_size < encoder.vocab_size:
        raise ValueError(f"model vocab_size {model_config.vocab_size} is smaller than the tokenizer's {encoder.vocab_size}")

    _clean_shared_memory()
    loader = make_loader(cfg.shards, cfg.plan, cfg.phase, batch_size=cfg.micro_batch_size, seed=cfg.seed)
    shard_len = int(loader.dataset[0]["tokens"].shape[0])
    segments = plan_segments(cfg, shard_len, cfg.micro_batch_size * cfg.grad_accum * world, model_config.rope_theta)
    total_steps = segments[-1].first_step + segments[-1].steps

    checkpoints = CheckpointManager(out_dir / "checkpoints", cfg.checkpoint.keep, cfg.checkpoint.verify)
    checkpoints.clean_partial()
    resume = checkpoints.find_resumable()
    state = {"step": 0, "tokens": 0}
    if resume is not None:
        state = checkpoints.read_state(resume)
        check_resumable(state, resume, model_config, world, cfg.zero.stage)

    model = build_model(cfg, model_config)
    model_config = model.config  # from_pretrained keeps a copy: RoPE changes must reach the one the model reads
    flops = {s.seq_len: model_flops_per_token(model, s.seq_len) for s in segments}  # before ZeRO-3 partitions it
    engine, optimizer, scheduler = initialize(cfg, model, total_steps)
    if resume is not None:
        state = checkpoints.load(engine, resume)
        loader.load_state_dict(state["loader"])
        if rank == 0:
            log.info("resumed from %s at step %d (%d tokens)", resume, state["step"], state["tokens"])
    else:
        torch.manual_seed(cfg.seed + rank)
    multiplier = lr_schedule(cfg, total_steps)  # the scheduler's own, for the logged LR

    metrics = MetricsLogger(out_dir, rank == 0, cfg.tensorboard, resume_step=state["step"])
    routing = RoutingStats(engine.module)
    stop = StopSignals()
    eval_sets = load_eval_sets(cfg.shards, cfg.eval.batch_size or cfg.micro_batch_size, cfg.eval.batches, device)
    if rank == 0 and not eval_sets:
        log.warning("no held-out streams under %s/valid (shards.valid_fraction is 0): no validation loss", cfg.shards)
    peak = cfg.peak_tflops or (peak_tflops(torch.cuda.get_device_name()) if device.type == "cuda" else None)
    result = {"total_steps": total_steps, "segments": [vars(s) for s in segments], "world_size": world,
              "resumed_from": str(resume) if resume else None}

    def trainer_state(step: int, tokens: int) -> dict:
        return {"step": step, "tokens": tokens, "loader": loader.state_dict(), "world_size": world,
                "zero_stage": cfg.zero.stage, "model_config": comparable_config(model_config),
                "micro_batch_size": cfg.micro_batch_size, "grad_accum": cfg.grad_accum, "total_steps": total_steps}

    def save(step: int, tokens: int) -> Path:
        return checkpoints.save(engine, step, trainer_state(step, tokens))

    step, tokens = state["step"], state["tokens"]
    if step == 0 and eval_sets:
        result["val_before"] = evaluate(engine, eval_sets, cfg.document_masking, device)
        metrics.write({"step": 0, "tokens": 0, "eval": result["val_before"]})
    batches = Batches(loader)
    started, window_start, window_tokens, start_step = time.time(), time.time(), 0, step
    last_saved = step if resume is not None else -1
    engine.train()
    for seg_index, seg in enumerate(segments):
        end = seg.first_step + seg.steps
        if step >= end:
            continue
        engine.module.config.rope_theta = seg.rope_theta
        if rank == 0:
            log.info("segment %d: seq_len %d, RoPE base %g, steps %d..%d", seg_index, seg.seq_len, seg.rope_theta,
                     seg.first_step + 1, end)
        while step < end:
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # lm loss, aux loss, real tokens
            for _ in range(cfg.grad_accum):
                inputs = model_inputs(batches.next(), seg.seq_len, cfg.document_masking, device)
                out = engine(**inputs)
                engine.backward(out.loss)
                engine.step()
                aux = out.aux_loss.detach().double() if out.aux_loss is not None else sums.new_zeros(())
                sums += torch.stack([out.loss.detach().double() - aux, aux, real_tokens(inputs, sums)])
            dist.all_reduce(sums)
            step += 1
            step_tokens = int(sums[2].item())
            tokens += step_tokens
            window_tokens += step_tokens
            if step % cfg.log_every_steps == 0 or step == end:
                elapsed = max(time.time() - window_start, 1e-9)
                record = {"step": step, "tokens": tokens, "seq_len": seg.seq_len,
                          "loss": sums[0].item() / (cfg.grad_accum * world),
                          "aux_loss": sums[1].item() / (cfg.grad_accum * world),
                          "lr": cfg.optimizer.lr * multiplier(step - 1), "grad_norm": _grad_norm(engine),
                          "tokens_per_s": round(window_tokens / elapsed, 1)}
                record["mfu"] = (flops[seg.seq_len] * record["tokens_per_s"] / (world * peak * 1e12)) if peak else None
                record.update(routing.read())
                metrics.write(record)
                if rank == 0:
                    log.info(progress_line(record, total_steps, started, start_step))
                window_start, window_tokens = time.time(), 0
            if eval_sets and step % cfg.eval.every_steps == 0 and step != total_steps:
                metrics.write({"step": step, "tokens": tokens, "eval": evaluate(engine, eval_sets, cfg.document_masking, device)})
            if step % cfg.checkpoint.every_steps == 0:
                save(step, tokens)
                last_saved = step
            if stop.any_rank(device):
                if last_saved != step:
                    save(step, tokens)
                metrics.close()
                raise TrainingInterrupted(f"stopped by signal at step {step} after checkpointing; rerun to resume")
            if cfg.stop_after_steps and step >= cfg.stop_after_steps:
                metrics.close()
                return {**result, "step": step, "tokens": tokens, "complete": False}
        if cfg.passkey:
            result.setdefault("passkey", {})[str(seg.seq_len)] = run_passkey(cfg, engine, encoder, seg.seq_len, step, metrics)

    final = save(step, tokens) if last_saved != step else checkpoints.root / step_name(step)
    result.update(step=step, tokens=tokens, complete=True, checkpoint=str(final), seconds=round(time.time() - started, 3))
    if eval_sets:
        result["val"] = evaluate(engine, eval_sets, cfg.document_masking, device)
        metrics.write({"step": step, "tokens": tokens, "eval": result["val"]})
    result["export"] = str(export(cfg, engine, model_config, final, out_dir / "export"))
    metrics.close()
    return result


def run_passkey(cfg: TrainConfig, engine, encoder, seq_len: int, step: int, metrics: MetricsLogger) -> dict:
    """Passkey retrieval at this segment's length and the configured ones up to it (all ranks
    run the same prompts: ZeRO-3 needs every rank in every forward)."""
    from training.passkey import format_passkey, passkey_accuracy

    p = cfg.passkey
    lengths = sorted({L for L in p.get("lengths", []) if L <= seq_len} | {seq_len})
    res = passkey_accuracy(engine.module, encoder.encode, lengths, p.get("depths", [0.1, 0.5, 0.9]),
                           p.get("trials", 4), seed=p.get("seed", 0), device=_device())
    engine.train()
    metrics.write({"step": step, "passkey": res})
    if dist.get_rank() == 0:
        log.info("passkey retrieval after seq_len %d:\n%s", seq_len, format_passkey(res))
    return res


def _grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    if norm is None:
        return None
    norm = float(norm.item() if isinstance(norm, torch.Tensor) else norm)
    return round(norm, 6) if math.isfinite(norm) else norm


def export(cfg: TrainConfig, engine, model_config, checkpoint: Path, out: Path) -> Path:
    """Rank 0 writes the consolidated model; the others wait."""
    from training.export import consolidated_state_dict, export_model

    if dist.get_rank() == 0:
        state = consolidated_state_dict(checkpoint, cfg.zero.stage, engine)
        export_model(state, model_config, out, cfg.tokenizer)
    dist.barrier()
    return out
