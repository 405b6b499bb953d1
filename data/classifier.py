"""fastText text classifiers for document quality and domain.

Training examples are documents read with `data.readers` (any format), one label per
input; a deterministic held-out split measures precision and recall per label.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from data.fasttext_models import load_model, precision_recall, train_supervised
from data.readers import ReadOptions, Rejected, list_input_files, read_file

_WHITESPACE = re.compile(r"\s+")


def one_line(text: str, max_chars: int) -> str:
    return _WHITESPACE.sub(" ", text[:max_chars]).strip()


def read_examples(paths: list[str | Path], opts: ReadOptions | None = None) -> list[str]:
    """Texts of every document under the given files or folders."""
    opts = opts or ReadOptions()
    texts = []
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"training input not found: {root}")
        for path in list_input_files(root)[0]:
            texts += [d["text"] for d in read_file(path, path.name, "train", opts) if not isinstance(d, Rejected)]
    return texts


def train_classifier(train: list[tuple[str, str]], output: Path, *, epochs: int = 20, lr: float = 0.5, dim: int = 64,
                     word_ngrams: int = 2, minn: int = 0, maxn: int = 0, max_chars: int = 20_000, seed: int = 0,
                     threads: int | None = None) -> Path:
    if len({label for label, _ in train}) < 2:
        raise ValueError("a classifier needs examples of at least two labels")
    rows = [(label, one_line(text, max_chars)) for label, text in train]
    return train_supervised(rows, output, seed=seed, threads=threads, epoch=epochs, lr=lr, dim=dim,
                            wordNgrams=word_ngrams, minn=minn, maxn=maxn)


class TextClassifier:
    def __init__(self, model_path: str | Path, max_chars: int = 20_000):
        self.model_path = str(model_path)
        if not Path(self.model_path).exists():
            raise FileNotFoundError(f"classifier model not found: {self.model_path}")
        self.max_chars = max_chars

    @property
    def labels(self) -> list[str]:
        return [l.replace("__label__", "") for l in load_model(self.model_path).get_labels()]

    def predict(self, texts: list[str]) -> list[str]:
        if not texts:
            return []
        labels, _ = load_model(self.model_path).predict([one_line(t, self.max_chars) for t in texts], k=1)
        return [l[0].replace("__label__", "") for l in labels]

    def probability(self, texts: list[str], label: str) -> np.ndarray:
        """P(label | text) for each text."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        model = load_model(self.model_path)
        labels, probs = model.predict([one_line(t, self.max_chars) for t in texts], k=-1)
        target = f"__label__{label}"
        return np.array([float(p[list(l).index(target)]) if target in l else 0.0 for l, p in zip(labels, probs)],
                        dtype=np.float32).clip(0.0, 1.0)

    def evaluate(self, valid: list[tuple[str, str]]) -> dict:
        return precision_recall([label for label, _ in valid], self.predict([t for _, t in valid]))
