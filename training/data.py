"""The mixed token loader: mosaicml-streaming over the packed MDS streams of one phase.

One `Stream` per domain folder, with the plan's realized weights as proportions (streaming
then up- or down-samples each domain to match); deterministic for a seed; disjoint samples
across ranks (read from RANK / WORLD_SIZE, as torchrun sets them); mid-epoch resume through
the data loader's own state dict. Each sample is a packed sequence of token ids with the
positions where documents start.
"""
from __future__ import annotations

import json
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
