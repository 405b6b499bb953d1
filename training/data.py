"""The mixed token loader: mosaicml-streaming over the packed MDS streams of one phase.

One `Stream` per domain folder, with the plan's realized weights as proportions (streaming
then up- or down-samples each domain to match); deterministic for a seed; disjoint samples
across ranks (read from RANK / WORLD_SIZE, as torchrun sets them); mid-epoch resume through
the data loader's own state dict. Each sample is a packed sequence of token ids with the
positions where documents start.

Validation: `shards` with `valid_fraction` writes one held-out stream per domain under
`valid/<domain>/` (documents never in any training stream); `validation_streams` finds them and
`make_eval_loader` reads one in a fixed order. `segment_batch` cuts packed sequences into shorter
ones (evaluate at a training phase's shorter length) and `position_ids_from_documents` gives
RoPE positions that restart at every document.
"""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import numpy as np
import torch


def phase_streams(shards_dir: str | Path, plan_path: str | Path, phase: str) -> list[tuple[Path, float]]:
    """(stream folder, proportion) for each domain of the phase that has data."""
    plan = json.loads(Path(plan_path).read_text())
    if phase not in plan:
        raise KeyError(f"phase {phase!r} not in the mix plan {plan_path} (phases: {list(plan)})")
    weights = plan[phase]["realized_weights"]
    streams = [(Path(shards_dir) / phase / d, w) for d, w in sorted(weights.items())
               if w > 0 and (Path(shards_dir) / phase / d / "index.json").exists()]
    if not streams:
        raise FileNotFoundError(f"no MDS streams for phase {phase} under {shards_dir}")
    total = sum(w for _, w in streams)
    return [(p, w / total) for p, w in streams]


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Batch of packed sequences: input_ids, a validity mask, and per-position document ids
    (the model masks attention across documents with them)."""
    tokens = torch.from_numpy(np.stack([s["tokens"].astype(np.int64) for s in samples]))
    seq_len = tokens.shape[1]
    doc_ids = np.zeros((len(samples), seq_len), dtype=np.int64)
    valid = np.zeros((len(samples), seq_len), dtype=bool)
    for i, s in enumerate(samples):
        starts = s["doc_starts"][s["doc_starts"] < seq_len]
        marks = np.zeros(seq_len, dtype=np.int64)
        marks[starts[1:]] = 1
        doc_ids[i] = np.cumsum(marks)
        valid[i, : int(s["length"])] = True
    return {"input_ids": tokens, "document_ids": torch.from_numpy(doc_ids), "attention_mask": torch.from_numpy(valid)}


def make_loader(shards_dir: str | Path, plan_path: str | Path, phase: str, batch_size: int, seed: int = 0,
                epoch_size: int | None = None, shuffle: bool = True, num_workers: int = 0):
    """A `StreamingDataLoader` (has state_dict/load_state_dict) over the phase's streams."""
    from streaming import Stream, StreamingDataLoader, StreamingDataset

    streams = [Stream(local=str(p), proportion=w) for p, w in phase_streams(shards_dir, plan_path, phase)]
    dataset = StreamingDataset(streams=streams, batch_size=batch_size, shuffle=shuffle, shuffle_seed=seed,
                               epoch_size=epoch_size, num_canonical_nodes=1, sampling_method="balanced",
                               allow_unsafe_types=False)
    return StreamingDataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)


VALID_DIR = "valid"  # the shards stage's held-out streams: <shards>/valid/<domain>/


def validation_streams(shards_dir: str | Path) -> dict[str, Path]:
    """domain -> held-out stream folder (`<shards_dir>/valid/<domain>`), for those that have data
    (an index.json); empty when the shards were built without `valid_fraction`."""
    root = Path(shards_dir) / VALID_DIR
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "index.json").is_file()}


class EvalLoader:
    """Iterates a `StreamingDataLoader` over one stream, stopping after `max_batches` batches.

    Each `iter()` starts again from the first sample (no shuffling: every pass sees the same
    batches in the same order), so one loader can be built once and evaluated every N steps.
    """

    def __init__(self, loader, max_batches: int | None):
        self.loader = loader
        self.dataset = loader.dataset
        self.max_batches = max_batches

    def __iter__(self):
        it = iter(self.loader)
        return islice(it, self.max_batches) if self.max_batches is not None else it

    def __len__(self) -> int:
        n = len(self.loader)
        return n if self.max_batches is None else min(n, self.max_batches)


def make_eval_loader(stream_dir: str | Path, batch_size: int, max_batches: int | None = None,
                     num_workers: int = 0) -> EvalLoader:
    """A deterministic, unshuffled loader over one MDS stream (e.g. a `validation_streams` value),
    batches from `collate`, at most `max_batches` of them per pass.

    Under torch.distributed with several ranks, StreamingDataset splits the samples across ranks
    (rank r reads samples r, r + world, ...), so each rank sees only its part: the caller sums the
    loss and the token count on each rank and all-reduces both before dividing. Every rank gets
    the same number of batches (collectives such as ZeRO-3's stay in step); to make that so,
    streaming repeats up to world_size - 1 samples when the stream's size does not divide by the
    world size, so a full pass is exact only then (a negligible bias otherwise).
    """
    from streaming import StreamingDataLoader, StreamingDataset

    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be at least 1 (or None for the whole stream), got {max_batches}")
    path = Path(stream_dir)
    if not (path / "index.json").is_file():
        raise FileNotFoundError(f"no MDS stream (index.json) in {path}")
    dataset = StreamingDataset(local=str(path), batch_size=batch_size, shuffle=False, num_canonical_nodes=1,
                               allow_unsafe_types=False)
    return EvalLoader(StreamingDataLoader(dataset, batch_size=batch_size, collate_fn=collate,
                                          num_workers=num_workers), max_batches)


def segment_batch(batch: dict, seq_len: int) -> dict:
    """Cuts a collated batch of packed sequences of length L into sequences of length `seq_len`.

    `input_ids` and `attention_mask` (and any other (b, L, ...) tensor) go from (b, L) to
    (b * L / seq_len, seq_len), row-major, so row k of the result is the k-th cut in reading
    order. `document_ids` are renumbered per new row (minus the row's first id) so each row starts
    at 0 and stays non-decreasing; a document that spans a cut continues as document 0 of the
    next row. Rows that are all padding are kept (their attention_mask is all False).
    Values that are not tensors pass through unchanged. Raises ValueError when L is not a
    multiple of seq_len.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    ids = batch["input_ids"]
    b, length = ids.shape[0], ids.shape[1]
    if length % seq_len:
        raise ValueError(f"packed length {length} is not a multiple of seq_len {seq_len}")
    k = length // seq_len
    out = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            out[key] = value
            continue
        if value.dim() < 2 or tuple(value.shape[:2]) != (b, length):
            raise ValueError(f"cannot segment {key!r} of shape {tuple(value.shape)}: expected ({b}, {length}, ...)")
        out[key] = value.reshape(b * k, seq_len, *value.shape[2:])
    if "document_ids" in out:
        docs = out["document_ids"]
        out["document_ids"] = docs - docs[:, :1]
    return out


def position_ids_from_documents(document_ids: torch.Tensor) -> torch.LongTensor:
    """Per token, its position within its document: 0 at each document start (where the id
    changes, and at the start of every row), counting up until the next. Any leading shape
    (..., L); vectorized. For per-document RoPE positions with document-masked attention."""
    docs = torch.as_tensor(document_ids)
    length = docs.shape[-1]
    pos = torch.arange(length, device=docs.device).expand(docs.shape)
    starts = torch.ones(docs.shape, dtype=torch.bool, device=docs.device)
    if length > 1:
        starts[..., 1:] = docs[..., 1:] != docs[..., :-1]
    start_pos = torch.where(starts, pos, torch.zeros_like(pos))
    return (pos - torch.cummax(start_pos, dim=-1).values).long()
