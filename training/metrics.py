"""Training metrics: a JSONL log, TensorBoard, a progress line, and MoD/MoE routing stats.

Only rank 0 writes. After a resume the log keeps the records up to the checkpoint's step
and drops the ones a killed run wrote after it (TensorBoard is told the same with
`purge_step`), so the log always reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch

log = logging.getLogger("training")


class MetricsLogger:
    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
            except ImportError:
                log.warning("tensorboard is not installed: metrics go to %s only", self.path)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["step"]
            for key, value in _flatten(record).items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def progress_line(r: dict, total_steps: int, started: float, start_step: int) -> str:
    done = r["step"] - start_step
    eta = (time.time() - started) / max(done, 1) * (total_steps - r["step"])
    parts = [f"step {r['step']}/{total_steps}", f"seq {r['seq_len']}", f"loss {r['loss']:.4f}",
             f"lr {r['lr']:.2e}", f"gnorm {r['grad_norm']:.3f}" if r.get("grad_norm") is not None else "gnorm -",
             f"{r['tokens_per_s'] / 1e3:.1f}k tok/s"]
    if r.get("mfu") is not None:
        parts.append(f"MFU {100 * r['mfu']:.1f}%")
    if "mod_routed" in r:
        parts.append(f"MoD {r['mod_routed']:.2f}")
    if "moe_max_load" in r:
        parts.append(f"MoE max/mean {r['moe_max_load']:.2f}")
    parts.append(f"eta {int(eta) // 60}m{int(eta) % 60:02d}s")
    return " | ".join(parts)


class RoutingStats:
    """Forward hooks on the MoD routers and MoE gates: the fraction of tokens each MoD layer
    routed through its block, and each MoE layer's expert load (max over mean: 1.0 is a
    perfect balance). Accumulated on device, read (and reset) at log steps."""

    def __init__(self, model):
        from training.model.mode import MoDRouter, MoE

        self.mod = {}
        self.moe = {}
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, MoDRouter):
                self.handles.append(module.register_forward_hook(self._mod_hook(name)))
            elif isinstance(module, MoE):  # a pre-hook: under ZeRO-3 the router weight is gathered by then
                self.handles.append(module.register_forward_pre_hook(self._moe_hook(name)))

    def _mod_hook(self, name):
        def hook(module, args, output):
            if module.training:
                chosen = output[0].detach().float().mean()
                total, n = self.mod.get(name, (0.0, 0))
                self.mod[name] = (total + chosen, n + 1)
        return hook

    def _moe_hook(self, name):
        def hook(module, args):
            if module.training:
                with torch.no_grad():
                    logits = torch.nn.functional.linear(args[0], module.router.weight)
                top = logits.topk(min(module.top_k, logits.shape[-1]), dim=-1).indices
                load = torch.bincount(top.reshape(-1), minlength=logits.shape[-1]).float()
                self.moe[name] = self.moe.get(name, 0) + load
        return hook

    def read(self) -> dict:
        out = {}
        if self.mod:
            out["mod_routed"] = float(torch.stack([t / n for t, n in self.mod.values()]).mean())
        if self.moe:
            ratios = [float(load.max() / load.mean().clamp(min=1e-9)) for load in self.moe.values()]
            out["moe_max_load"] = max(ratios)
            out["moe_layers_max_load"] = {k.split(".model.")[-1] if ".model." in k else k: round(r, 4)
                                          for k, r in zip(self.moe, ratios)}
        self.mod, self.moe = {}, {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
