"""A sentencepiece tokenizer trained on the mix, exported as a transformers tokenizer.

Byte fallback is on (no unknown bytes), digits are split, text is taken as it is (no dummy
prefix, no whitespace folding: what makes the fast export agree id for id), and ids 0..3 are pad, unk, bos,
eos; chat-role tokens follow as user-defined symbols so finetuning can use them. The export
is a `LlamaTokenizerFast` built from the same model, so `AutoTokenizer.from_pretrained(dir)`
encodes the same ids.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import numpy as np

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
MIN_PIECES = 256 + 4  # byte fallback needs every byte, plus the four specials


def train_sentencepiece(texts: Iterable[str], output_dir: Path, vocab_size: int, model_type: str = "bpe",
                        chat_tokens: tuple[str, ...] = CHAT_TOKENS, threads: int = 2, seed_sentence_size: int = 2_000_000) -> Path:
    import sentencepiece as spm

    needed = MIN_PIECES + len(chat_tokens)
    if vocab_size < needed:
        raise ValueError(f"vocab_size {vocab_size} is too small: byte fallback and the special tokens need {needed}")
    output_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(t.replace("\n", " ") for t in texts if t.strip()), model_writer=model,
        vocab_size=vocab_size, model_type=model_type, byte_fallback=True, split_digits=True,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
        user_defined_symbols=list(chat_tokens), character_coverage=0.9995, num_threads=threads,
        input_sentence_size=seed_sentence_size, shuffle_input_sentence=True, max_sentence_length=1 << 16,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False, train_extremely_large_corpus=False,
        minloglevel=2)
    path = output_dir / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


def export_hf(model_path: Path, output_dir: Path, chat_tokens: tuple[str, ...] = CHAT_TOKENS) -> Path:
    """Writes a transformers tokenizer folder (fast tokenizer built from the sentencepiece model)."""
    from transformers import LlamaTokenizerFast

    # sentencepiece reads "<unk>" or "</s>" inside text as text, but matches the chat tokens
    # (user-defined symbols): so split_special_tokens, and the chat tokens as plain added tokens
    tok = LlamaTokenizerFast(vocab_file=str(model_path), unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                             add_bos_token=False, add_eos_token=False, legacy=False, add_prefix_space=False,
                             from_slow=True, split_special_tokens=True)
    tok.add_tokens(list(chat_tokens))
    tok.save_pretrained(str(output_dir))
    return output_dir


class Encoder:
    """Batched sentencepiece encoding (the C++ library threads over a batch)."""

    def __init__(self, model_path: str | Path, threads: int = 1):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_path), num_threads=threads)
        self.eos_id = self.sp.eos_id()
        self.vocab_size = self.sp.get_piece_size()
        self.dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])
