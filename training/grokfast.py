"""Grokfast (Lee et al. 2024): an EMA low-pass filter of the gradients, added back to them, so
the slow components of the gradient are amplified: g <- g + lamb * ema(g).

Built into the optimizer rather than run after backward, because under ZeRO-2/3 the
gradients live in DeepSpeed's flat partitions, not in `p.grad`: DeepSpeed hands its
partitions (with their reduced, clipped gradients) to the client optimizer's `step`, so the
filter works per element of whatever each rank owns. The EMA is optimizer state, so it is
partitioned, checkpointed and restored with the rest (exact resume).
"""
from __future__ import annotations

import torch


class GrokfastAdamW(torch.optim.AdamW):
    def __init__(self, params, *, grokfast_alpha: float = 0.98, grokfast_lamb: float = 2.0, **adamw_kwargs):
        if not 0.0 <= grokfast_alpha < 1.0:
            raise ValueError(f"grokfast alpha must be in [0, 1), got {grokfast_alpha}")
        super().__init__(params, **adamw_kwargs)
        self.grokfast_alpha, self.grokfast_lamb = grokfast_alpha, grokfast_lamb

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        new_ema = []
        for p in params:
            grad = p.grad.float()
            ema = self.state[p].get("grokfast_ema")
            # the EMA starts at the first gradient, as in the reference implementation
            ema = grad.clone() if ema is None else ema.mul(self.grokfast_alpha).add_(grad, alpha=1 - self.grokfast_alpha)
            new_ema.append(ema)
            p.grad.add_(ema.to(p.grad.dtype), alpha=self.grokfast_lamb)
        loss = super().step(closure)
        # stored after AdamW's step: AdamW initializes a parameter's state only when it is empty
        for p, ema in zip(params, new_ema):
            self.state[p]["grokfast_ema"] = ema
        return loss
