"""Learning-rate schedules as multipliers of the peak LR, a function of the optimizer step.

- `cosine`: linear warmup, then cosine decay to `min_ratio` (GPT-3, Llama).
- `wsd`: warmup-stable-decay (MiniCPM, DeepSeek): flat after warmup, decay over the last
  `decay_fraction` of the steps to `min_ratio`, linearly or as 1 - sqrt.
- `bignas`: BigNAS's exponential decay with a constant end: the LR falls by `gamma` per step
  until it reaches `min_ratio` of the peak and then stays there.
- `linear`: warmup, then linear decay to `min_ratio` at the last step (annealing: to 0).
- `constant`: warmup, then flat.
"""
from __future__ import annotations

import math
from typing import Callable

SCHEDULES = ("cosine", "wsd", "bignas", "linear", "constant")


def lr_multiplier(kind: str, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0,
                  decay_fraction: float = 0.2, decay_shape: str = "linear", gamma: float | None = None
                  ) -> Callable[[int], float]:
    """A function step -> LR / peak LR for `total_steps` optimizer steps (step 0 is the first)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown LR schedule {kind!r} (known: {', '.join(SCHEDULES)})")
    total = max(1, total_steps)
    warmup = min(warmup_steps, total)

    def warm(step: int) -> float | None:
        return (step + 1) / warmup if step < warmup else None

    def after(step: int) -> float:
        """Progress in [0, 1] over the post-warmup steps."""
        return min(1.0, (step - warmup) / max(1, total - warmup - 1))

    if kind == "constant":
        return lambda step: warm(step) or 1.0
    if kind == "cosine":
        return lambda step: warm(step) or min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * after(step)))
    if kind == "linear":
        return lambda step: warm(step) or 1.0 - (1 - min_ratio) * after(step)
    if kind == "wsd":
        if decay_shape not in ("linear", "sqrt", "cosine"):
            raise ValueError(f"decay_shape must be linear, sqrt or cosine, got {decay_shape!r}")
        decay_steps = max(1, round(decay_fraction * (total - warmup)))
        decay_start = total - decay_steps

        def wsd(step: int) -> float:
            w = warm(step)
            if w is not None:
                return w
            if step < decay_start:
                return 1.0
            p = min(1.0, (step - decay_start + 1) / decay_steps)
            shape = {"linear": p, "sqrt": math.sqrt(p), "cosine": 0.5 * (1 - math.cos(math.pi * p))}[decay_shape]
            return 1.0 - (1 - min_ratio) * shape
        return wsd
    # bignas: by default gamma is chosen so the floor is reached at the last step
    floor = max(min_ratio, 1e-8)
    g = gamma if gamma is not None else floor ** (1.0 / max(1, total - warmup - 1))
    return lambda step: warm(step) or max(floor, g ** (step - warmup))
