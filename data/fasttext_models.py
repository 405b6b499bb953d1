"""What every fastText model here shares: loading (cached), a deterministic held-out split,
supervised training with an atomic save, and precision/recall on held-out examples."""
from __future__ import annotations

import functools
import hashlib
import os
import random
import tempfile
from collections import Counter
from pathlib import Path


@functools.lru_cache(maxsize=4)
def load_model(path: str):
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None  # silence its load warning
    return fasttext.load_model(path)


def hash_split(examples: dict[str, list[str]], valid_fraction: float) -> tuple[list, list]:
    """([(label, text)] train, [(label, text)] held out), split by a hash of each text."""
    train, valid = [], []
    for label, texts in sorted(examples.items()):
        for text in texts:
            h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little") / 2**32
            (valid if h < valid_fraction else train).append((label, text))
    return train, valid


def train_supervised(rows: list[tuple[str, str]], output: Path, *, seed: int = 0, threads: int | None = None,
                     **params) -> Path:
    """Trains on (label, one-line text) rows, shuffled so SGD sees labels interleaved, and
    saves the model under a temporary name renamed into place."""
    import fasttext

    rows = list(rows)
    random.Random(seed).shuffle(rows)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.writelines(f"__label__{label} {text}\n" for label, text in rows)
        name = f.name
    try:
        model = fasttext.train_supervised(input=name, loss="softmax", seed=seed, verbose=0,
                                          thread=threads or os.cpu_count() or 1, **params)
    finally:
        os.unlink(name)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    model.save_model(str(tmp))
    os.replace(tmp, output)
    load_model.cache_clear()
    return output


def precision_recall(gold: list[str], predicted: list[str]) -> dict:
    """Overall accuracy and per-label precision/recall/support."""
    gold_counts, pred_counts = Counter(gold), Counter(predicted)
    hits = Counter(g for g, p in zip(gold, predicted) if g == p)
    per = {label: {"precision": hits[label] / pred_counts[label] if pred_counts[label] else 0.0,
                   "recall": hits[label] / gold_counts[label], "support": gold_counts[label]}
           for label in sorted(gold_counts)}
    return {"accuracy": sum(hits.values()) / max(len(gold), 1), "per_language": per}
