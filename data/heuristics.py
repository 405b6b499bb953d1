"""Heuristic quality rules: Gopher (quality, repetition), C4, FineWeb, and Llama 3's dirty
words and token-distribution outliers. Defaults follow the published values (as datatrove
implements them); every threshold is configurable and `None` switches a rule off.

`HeuristicFilter.check(text, lang)` returns (text, reason): the text may come back with
lines removed (C4's line rules), and `reason` names the first rule that failed, or None.
Words are whitespace tokens, or characters for languages written without spaces.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

CHAR_LANGUAGES = {"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"}
STOP_WORDS = {"the", "be", "to", "of", "and", "that", "have", "with"}
PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~«»“”‘’„…·–—¡¿、。，！？：；（）【】《》")
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？", "…")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
# A short default list; point `dirty_words_file` at a real one (one word or phrase a line).
# (words with innocent senses, such as "sex" or "cock", are left out on purpose)
DEFAULT_DIRTY_WORDS = ("porn", "porno", "pornhub", "xxx", "xvideos", "nude", "nudes", "fuck", "fucking", "pussy",
                       "milf", "hentai", "camgirl", "camgirls", "slut", "whore", "blowjob", "cumshot", "sexcam")
_P = np.uint64(0x100000001B3)


class HeuristicRules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Gopher quality
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    # Gopher repetition
    max_dup_line_fraction: float | None = 0.3
    max_dup_para_fraction: float | None = 0.3
    max_dup_line_char_fraction: float | None = 0.2
    max_dup_para_char_fraction: float | None = 0.2
    top_ngram_max_coverage: dict[int, float] | None = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    dup_ngram_max_coverage: dict[int, float] | None = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    # C4 (line rules remove lines; the others remove documents)
    c4_line_filters: bool = True
    c4_min_words_per_line: int | None = 3
    c4_max_word_length: int | None = 1000
    c4_min_sentences: int | None = 5
    c4_lorem_ipsum: bool = True
    c4_curly_bracket: bool = True
    # FineWeb
    min_line_punct_ratio: float | None = 0.12
    max_short_line_ratio: float | None = 0.67
    short_line_length: int = 30
    max_dup_line_char_ratio: float | None = 0.01
    max_newline_word_ratio: float | None = 0.3
    # Llama 3
    max_dirty_words: int | None = 2
    dirty_words_file: str | None = None
    max_token_kl: float | None = Field(None, description="KL(document words || corpus words) in nats; needs the corpus distribution")


_TOKENS = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


def split_words(text: str, lang: str | None = None) -> list[str]:
    """Word tokens, punctuation as tokens of its own (as a word tokenizer splits them)."""
    if lang in CHAR_LANGUAGES:
        return [c for c in text if not c.isspace() and c not in PUNCTUATION]
    return _TOKENS.findall(text)


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(how many items repeat an earlier one, their characters)."""
    seen, count, chars = set(), 0, 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        keys = np.zeros(len(ids) - n + 1, dtype=np.uint64)
        for k in range(n):  # over the n-gram order, not over words
            keys = keys * _P + ids[k : len(ids) - n + 1 + k]
    return keys


def ngram_coverages(words: list[str], text_len: int, top_ns, dup_ns) -> tuple[dict, dict]:
    """Gopher's n-gram repetition measures, vectorized with numpy.

    top: characters of the most frequent n-gram times its count / characters of the text.
    dup: characters of words inside repeated occurrences of any n-gram / characters of words.
    """
    top, dup = {}, {}
    if not words:
        return top, dup
    vocab, inverse = np.unique(np.array(words, dtype=object).astype(str), return_inverse=True)
    ids = inverse.astype(np.uint64) + np.uint64(1)
    lengths = np.char.str_len(vocab)[inverse]
    total = max(int(lengths.sum()), 1)
    for n in top_ns:
        if len(words) < n:
            continue
        keys = _ngram_keys(ids, n)
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        best = int(np.argmax(counts))
        if counts[best] > 1:
            chars = int(lengths[first[best] : first[best] + n].sum()) + n - 1
            top[n] = chars * int(counts[best]) / max(text_len, 1)
        else:
            top[n] = 0.0
    for n in dup_ns:
        if len(words) < n:
            continue
        keys = _ngram_keys(ids, n)
        _, first, inv = np.unique(keys, return_index=True, return_inverse=True)
        repeated = np.flatnonzero(np.arange(len(keys)) != first[inv])
        cover = np.zeros(len(words) + 1, dtype=np.int64)
        np.add.at(cover, repeated, 1)
        np.add.at(cover, repeated + n, -1)
        dup[n] = int(lengths[np.cumsum(cover[:-1]) > 0].sum()) / total
    return top, dup


class HeuristicFilter:
    def __init__(self, rules: HeuristicRules, corpus_distribution: tuple[dict[str, int], float] | None = None):
        self.r = rules
        words = DEFAULT_DIRTY_WORDS
        if rules.dirty_words_file:
            path = Path(rules.dirty_words_file)
            if not path.exists():
                raise FileNotFoundError(f"dirty_words_file not found: {path}")
            words = [w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
        self.dirty_words = frozenset(w for w in words if " " not in w)
        self.dirty_phrases = tuple(w for w in words if " " in w)
        self.corpus = corpus_distribution  # (word -> count, total) over the corpus's vocabulary

    # --- C4's line-level rules: return the kept lines
    def c4_lines(self, text: str) -> tuple[str, int]:
        r = self.r
        kept = []
        lines = text.split("\n")
        for line in lines:
            stripped = line.strip()
            if not stripped:
                kept.append(line)  # blank lines stay: they separate paragraphs
                continue
            low = stripped.lower()
            words = stripped.split()
            if r.c4_max_word_length and any(len(w) > r.c4_max_word_length for w in words):
                continue
            if not stripped.endswith(TERMINAL_PUNCTUATION) or stripped.endswith("..."):
                continue
            if r.c4_min_words_per_line and len(words) < r.c4_min_words_per_line:
                continue
            if "javascript" in low or any(p in low for p in POLICY_PHRASES):
                continue
            kept.append(line)
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
        return text, len(lines) - len(kept)

    def check(self, text: str, lang: str | None = None) -> tuple[str, str | None, int]:
        """(possibly shortened text, failing rule or None, lines removed by C4)."""
        r = self.r
        if not text.strip():
            return text, "empty", 0
        low = text.lower()
        # document-level C4 rules come first: they look at the page as crawled
        if r.c4_lorem_ipsum and "lorem ipsum" in low:
            return text, "c4_lorem_ipsum", 0
        if r.c4_curly_bracket and "{" in text:
            return text, "c4_curly_bracket", 0
        removed_lines = 0
        if r.c4_line_filters:
            text, removed_lines = self.c4_lines(text)
            if not text.strip():
                return text, "c4_no_lines_left", removed_lines
            if r.c4_min_sentences and len(re.findall(r"[.!?。！？](\s|$)", text)) < r.c4_min_sentences:
                return text, "c4_too_few_sentences", removed_lines
        reason = self._gopher_quality(text, lang) or self._gopher_repetition(text, lang) or \
            self._fineweb(text, lang) or self._llama3(text, lang)
        return text, reason, removed_lines

    def _gopher_quality(self, text, lang):
        r = self.r
        words = split_words(text, lang)
        content = [w for w in words if any(ch not in PUNCTUATION for ch in w)]
        n = len(content)
        if r.min_words is not None and n < r.min_words:
            return "gopher_short_doc"
        if r.max_words is not None and n > r.max_words:
            return "gopher_long_doc"
        if lang not in CHAR_LANGUAGES and n:
            mean = sum(map(len, content)) / n
            if r.min_mean_word_length is not None and mean < r.min_mean_word_length:
                return "gopher_below_avg_word_length"
            if r.max_mean_word_length is not None and mean > r.max_mean_word_length:
                return "gopher_above_avg_word_length"
        if r.max_symbol_word_ratio is not None and n:
            if text.count("#") / n > r.max_symbol_word_ratio:
                return "gopher_too_many_hashes"
            if (text.count("...") + text.count("…")) / n > r.max_symbol_word_ratio:
                return "gopher_too_many_ellipsis"
        lines = [l for l in text.split("\n") if l.strip()]
        if lines and r.max_bullet_lines_ratio is not None:
            bullets = sum(l.lstrip().startswith(("•", "-", "*", "‣", "◦")) for l in lines)
            if bullets / len(lines) > r.max_bullet_lines_ratio:
                return "gopher_too_many_bullets"
        if lines and r.max_ellipsis_lines_ratio is not None:
            if sum(l.rstrip().endswith(("...", "…")) for l in lines) / len(lines) > r.max_ellipsis_lines_ratio:
                return "gopher_too_many_end_ellipsis"
        if words and r.min_alpha_words_ratio is not None:
            if sum(any(ch.isalpha() for ch in w) for w in words) / len(words) < r.min_alpha_words_ratio:
                return "gopher_below_alpha_threshold"
        if r.min_stop_words is not None and (lang in (None, "en")):
            if sum(w.lower() in STOP_WORDS for w in words) < r.min_stop_words:
                return "gopher_enough_stop_words"
        return None

    def _gopher_repetition(self, text, lang):
        r = self.r
        lines = [l for l in text.split("\n") if l.strip()]
        paragraphs = [p for p in re.split(r"\n{2,}", text.strip()) if p.strip()]
        size = max(len(text), 1)
        if paragraphs:
            count, chars = _duplicates(paragraphs)
            if r.max_dup_para_fraction is not None and count / len(paragraphs) > r.max_dup_para_fraction:
                return "gopher_dup_para_frac"
            if r.max_dup_para_char_fraction is not None and chars / size > r.max_dup_para_char_fraction:
                return "gopher_dup_para_char_frac"
        if lines:
            count, chars = _duplicates(lines)
            if r.max_dup_line_fraction is not None and count / len(lines) > r.max_dup_line_fraction:
                return "gopher_dup_line_frac"
            if r.max_dup_line_char_fraction is not None and chars / size > r.max_dup_line_char_fraction:
                return "gopher_dup_line_char_frac"
        top_ns = r.top_ngram_max_coverage or {}
        dup_ns = r.dup_ngram_max_coverage or {}
        if top_ns or dup_ns:
            top, dup = ngram_coverages(split_words(text, lang), len(text), sorted(top_ns), sorted(dup_ns))
            for n, limit in sorted(top_ns.items()):
                if top.get(n, 0.0) > limit:
                    return f"gopher_top_{n}_gram"
            for n, limit in sorted(dup_ns.items()):
                if dup.get(n, 0.0) > limit:
                    return f"gopher_duplicated_{n}_n_grams"
        return None

    def _fineweb(self, text, lang):
        r = self.r
        lines = [l for l in text.split("\n") if l.strip()]
        if not lines:
            return None
        if r.min_line_punct_ratio is not None:
            if sum(l.rstrip().endswith(TERMINAL_PUNCTUATION) for l in lines) / len(lines) < r.min_line_punct_ratio:
                return "fineweb_line_punct_ratio"
        if r.max_short_line_ratio is not None:
            if sum(len(l.strip()) <= r.short_line_length for l in lines) / len(lines) > r.max_short_line_ratio:
                return "fineweb_short_line_ratio"
        if r.max_dup_line_char_ratio is not None:
            _, chars = _duplicates(lines)
            if chars / max(len(text.replace("\n", "")), 1) > r.max_dup_line_char_ratio:
                return "fineweb_char_dup_ratio"
        if r.max_newline_word_ratio is not None:
            words = split_words(text, lang)
            if words and text.count("\n") / len(words) > r.max_newline_word_ratio:
                return "fineweb_list_ratio"
        return None

    def _llama3(self, text, lang):
        r = self.r
        if r.max_dirty_words is not None:
            low = text.lower()
            words = re.findall(r"\w+", low)
            count = sum(w in self.dirty_words for w in words) + sum(low.count(p) for p in self.dirty_phrases)
            if count > r.max_dirty_words:
                return "llama3_dirty_words"
        if r.max_token_kl is not None and self.corpus is not None:
            if token_kl(split_words(text.lower(), lang), *self.corpus) > r.max_token_kl:
                return "llama3_token_outlier"
        return None


def token_kl(words: list[str], corpus_counts: dict[str, int], corpus_total: float) -> float:
    """KL(document || corpus) in nats over words; words outside the corpus vocabulary share
    one out-of-vocabulary bucket, and the corpus is add-one smoothed."""
    if not words:
        return 0.0
    counts = Counter(w if w in corpus_counts else "\0oov" for w in words)
    vocab = len(corpus_counts) + 1
    doc = np.array(list(counts.values()), dtype=np.float64) / len(words)
    ref = np.array([corpus_counts.get(w, 0) + 1 for w in counts], dtype=np.float64) / (corpus_total + vocab)
    return float(np.sum(doc * np.log(doc / ref)))


def word_counts(texts, lang_of=None, top: int = 200_000) -> Counter:
    counts = Counter()
    for i, text in enumerate(texts):
        counts.update(split_words(text.lower(), lang_of[i] if lang_of else None))
    return Counter(dict(counts.most_common(top)))


