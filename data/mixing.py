"""Domain mixing plans per training phase.

A phase asks for `tokens` split by domain `weights`. Each domain's available tokens (of the
documents eligible for the phase: all of them for pretraining, the highest-quality slice for
annealing, the long ones for long context) fix its repeat factor: needed / available. A
factor above `max_repeats` cannot be met without overtraining on that source: an error that
says by how much, or (if allowed) a warning and a capped, smaller share.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

DEFAULT_PRETRAIN_WEIGHTS = {"general": 0.50, "math": 0.25, "code": 0.17, "multilingual": 0.08}


class PlanError(ValueError):
    pass


@dataclass
class DomainPlan:
    target_tokens: int
    available_tokens: int
    documents: int
    repeat: float
    realized_tokens: int
    shortfall_tokens: int = 0


@dataclass
class PhasePlan:
    tokens: int
    weights: dict[str, float]
    domains: dict[str, DomainPlan] = field(default_factory=dict)
    selection: dict = field(default_factory=dict)

    def realized_weights(self) -> dict[str, float]:
        total = sum(d.realized_tokens for d in self.domains.values()) or 1
        return {k: d.realized_tokens / total for k, d in self.domains.items()}


def check_weights(phase: str, weights: dict[str, float]) -> None:
    if not weights:
        raise PlanError(f"phase {phase}: no domain weights")
    if any(w < 0 for w in weights.values()):
        raise PlanError(f"phase {phase}: negative weight in {weights}")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        raise PlanError(f"phase {phase}: weights sum to {total:.4f}, not 1 ({weights})")


def plan_phase(phase: str, tokens: int, weights: dict[str, float], available: dict[str, int], documents: dict[str, int],
               max_repeats: float, allow_shortfall: bool) -> PhasePlan:
    """Repeat factors and realized tokens for one phase; raises PlanError when a weight
    cannot be met within `max_repeats` (unless `allow_shortfall`)."""
    check_weights(phase, weights)
    plan = PhasePlan(tokens, dict(weights))
    problems = []
    for domain, weight in sorted(weights.items()):
        target = int(round(tokens * weight))
        have = int(available.get(domain, 0))
        if target == 0:
            plan.domains[domain] = DomainPlan(0, have, documents.get(domain, 0), 0.0, 0)
            continue
        if have == 0:
            problems.append(f"domain {domain!r} has no documents for phase {phase} (needs {target:,} tokens)")
            plan.domains[domain] = DomainPlan(target, 0, 0, 0.0, 0, target)
            continue
        repeat = target / have
        if repeat > max_repeats:
            realized = int(have * max_repeats)
            problems.append(f"domain {domain!r} in phase {phase} needs {repeat:.2f} repeats of its {have:,} tokens "
                            f"(cap {max_repeats}): short by {target - realized:,} tokens")
            plan.domains[domain] = DomainPlan(target, have, documents.get(domain, 0), float(max_repeats), realized,
                                              target - realized)
        else:
            plan.domains[domain] = DomainPlan(target, have, documents.get(domain, 0), repeat, target)
    if problems:
        if not allow_shortfall:
            raise PlanError("; ".join(problems) + " (set allow_shortfall: true to accept a capped mix)")
        for p in problems:
            log.warning(p)
    return plan
