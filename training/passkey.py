"""Passkey retrieval: can a long-context model find a 5-digit key hidden in filler text?

The test of Landmark Attention (Mohtashami & Jaggi 2023) and LongLoRA, a simple form of the
"needle in a haystack" of Llama 3: repeated filler sentences, the sentence "The pass key is
12345. Remember it. 12345 is the pass key." inserted at a relative depth, and the question
"What is the pass key? The pass key is" at the end. Scoring is teacher-forced in one forward
pass over prompt + answer: a key counts as retrieved when the greedy (argmax) prediction at
every answer position is the answer token, which is what greedy decoding would produce, without
the cost of `generate`.

Every piece of text starts with a space and is tokenized on its own: the tokenizer has no dummy
prefix and splits before a space, so the concatenated ids are the ids of the whole text, and
prompts can be assembled to a token budget without re-encoding.
"""
from __future__ import annotations

import inspect
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

FILLER_SENTENCES = (" The grass is green.", " The sky is blue.", " The sun is yellow.", " Here we go.",
                    " There and back again.")
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
ANSWER = " {key}"

Encode = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class FixedPieces:
    """The token ids of the text that does not depend on the key, encoded once."""
    filler_sentences: tuple[tuple[int, ...], ...]
    question: tuple[int, ...]

    @classmethod
    def encode(cls, encode: Encode) -> "FixedPieces":
        *filler, question = encode([*FILLER_SENTENCES, QUESTION])
        return cls(tuple(tuple(s) for s in filler), tuple(question))


def random_keys(rng: np.random.Generator, n: int) -> list[str]:
    return [str(k) for k in rng.integers(10_000, 100_000, size=n)]


def encode_key_pieces(encode: Encode, keys: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """(needle ids, answer ids) for each key, in one call to the tokenizer."""
    ids = encode([NEEDLE.format(key=k) for k in keys] + [ANSWER.format(key=k) for k in keys])
    return ids[:len(keys)], ids[len(keys):]


def filler_tokens(pieces: FixedPieces, budget: int) -> tuple[list[int], list[int]]:
    """As many whole filler sentences (cycling) as fit in `budget` tokens: (ids, the offset at
    which each sentence starts, plus the end) so the needle can go between two sentences."""
    ids, starts = [], [0]
    sentence = 0
    while True:
        nxt = pieces.filler_sentences[sentence % len(pieces.filler_sentences)]
        if len(ids) + len(nxt) > budget:
            return ids, starts
        ids.extend(nxt)
        starts.append(len(ids))
        sentence += 1


def assemble_prompt(pieces: FixedPieces, needle: Sequence[int], length: int, depth: float) -> list[int]:
    """Filler, the needle at the sentence boundary nearest to `depth` of the filler's tokens,
    then the question; at most `length` tokens, short of it by less than one filler sentence."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    budget = length - len(needle) - len(pieces.question)
    if budget < 0:
        raise ValueError(f"length {length} is too short for the pass key sentence and the question "
                         f"({len(needle) + len(pieces.question)} tokens)")
    filler, starts = filler_tokens(pieces, budget)
    cut = min(starts, key=lambda s: abs(s - depth * len(filler)))
    return [*filler[:cut], *needle, *filler[cut:], *pieces.question]


def build_passkey_prompt(encode: Encode, length: int, depth: float, key: str | None = None,
                         seed=None) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) for one passkey trial. `key` defaults to a random 5-digit key
    drawn from `seed` (anything `np.random.default_rng` takes)."""
    if key is None:
        key = random_keys(np.random.default_rng(seed), 1)[0]
    (needle,), (answer,) = encode_key_pieces(encode, [key])
    return assemble_prompt(FixedPieces.encode(encode), needle, length, depth), list(answer)


@dataclass
class Trial:
    length: int
    depth: float
    prompt: list[int]
    answer: list[int]


def make_trials(encode: Encode, lengths: Sequence[int], depths: Sequence[float], trials: int,
                seed: int) -> list[Trial]:
    pieces = FixedPieces.encode(encode)
    grid = [(length, depth) for length in lengths for depth in depths for _ in range(trials)]
    needles, answers = encode_key_pieces(encode, random_keys(np.random.default_rng(seed), len(grid)))
    return [Trial(length, depth, assemble_prompt(pieces, needle, length, depth), list(answer))
            for (length, depth), needle, answer in zip(grid, needles, answers)]


def model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def answer_logits(model: torch.nn.Module, input_ids: torch.Tensor, answer_len: int) -> torch.Tensor:
    """Logits (b, answer_len, vocab) at the positions that predict the answer tokens (the last
    prompt token and all answer tokens but the last). Asks for only those logits when the model
    can (`logits_to_keep`): full logits over a long context and a large vocabulary are GBs."""
    keep = answer_len + 1
    accepts_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    kwargs = {"logits_to_keep": keep} if accepts_keep else {}
    logits = model(input_ids=input_ids, use_cache=False, **kwargs).logits
    return logits[:, -keep:-1].float()


def score_batch(model: torch.nn.Module, trials: Sequence[Trial], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(retrieved (b,) bool, answer log-probability (b,)) for trials of equal prompt and answer
    lengths, in one forward pass."""
    input_ids = torch.tensor([t.prompt + t.answer for t in trials], dtype=torch.long, device=device)
    answer = torch.tensor([t.answer for t in trials], dtype=torch.long, device=device)
    logits = answer_logits(model, input_ids, answer.shape[1])
    retrieved = (logits.argmax(dim=-1) == answer).all(dim=1)
    logprob = logits.log_softmax(dim=-1).gather(-1, answer[..., None]).squeeze(-1).sum(dim=1)
    return retrieved.cpu(), logprob.cpu()


def group_by_shape(trials: Sequence[Trial], batch_size: int) -> list[list[Trial]]:
    """Batches of trials with the same prompt and answer lengths, so no padding is needed (a
    recurrent state or a non-causal router would see the padding)."""
    groups = defaultdict(list)
    for trial in trials:
        groups[len(trial.prompt), len(trial.answer)].append(trial)
    return [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def summarize(scored: list[tuple[Trial, bool, float]], lengths: Sequence[int], depths: Sequence[float],
              trials: int, seed: int) -> dict:
    per_length = {}
    for length in lengths:
        rows = [(t, ok, lp) for t, ok, lp in scored if t.length == length]
        per_length[length] = {
            "accuracy": float(np.mean([ok for _, ok, _ in rows])),
            "answer_logprob": float(np.mean([lp for _, _, lp in rows])),
            "prompt_tokens": float(np.mean([len(t.prompt) for t, _, _ in rows])),
            "depths": {depth: float(np.mean([ok for t, ok, _ in rows if t.depth == depth])) for depth in depths},
        }
    return {"trials": trials, "seed": seed, "depths": list(depths), "lengths": per_length,
            "accuracy": float(np.mean([ok for _, ok, _ in scored]))}


def passkey_accuracy(model: torch.nn.Module, encode: Encode, lengths: Sequence[int], depths: Sequence[float],
                     trials: int, seed: int = 0, device=None, batch_size: int = 8) -> dict:
    """Passkey retrieval accuracy of a causal LM (`model(input_ids=..., use_cache=False).logits`).

    Returns {"lengths": {length: {"accuracy", "answer_logprob" (mean over trials of the summed
    log-probability of the answer tokens), "prompt_tokens" (mean), "depths": {depth: accuracy}}},
    "accuracy" (over everything), "trials", "seed", "depths"}. `trials` keys per length and depth.
    """
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    device = torch.device(device) if device is not None else model_device(model)
    all_trials = make_trials(encode, lengths, depths, trials, seed)
    was_training = model.training
    model.eval()
    scored = []
    try:
        with torch.no_grad():
            for batch in group_by_shape(all_trials, batch_size):
                retrieved, logprob = score_batch(model, batch, device)
                scored += zip(batch, retrieved.tolist(), logprob.tolist())
    finally:
        model.train(was_training)
    return summarize(scored, lengths, depths, trials, seed)


def format_passkey(result: dict) -> str:
    """A table: one row per context length, accuracy per depth, overall, answer log-prob."""
    depths = result["depths"]
    header = ["length", "tokens", *[f"d={d:g}" for d in depths], "all", "logp(answer)"]
    rows = [[str(length), f"{r['prompt_tokens']:.0f}", *[f"{r['depths'][d]:.2f}" for d in depths],
             f"{r['accuracy']:.2f}", f"{r['answer_logprob']:.2f}"] for length, r in result["lengths"].items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
    title = f"passkey retrieval ({result['trials']} keys per length and depth, seed {result['seed']}): " \
            f"accuracy {result['accuracy']:.2f}"
    return "\n".join([title, *lines])
