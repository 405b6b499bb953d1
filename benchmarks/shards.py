"""Tokenize + pack into MDS, side by side: our `shards` stage against `datasets.Dataset.map`
(batched, same sentencepiece model, same number of processes) followed by packing and
`streaming.MDSWriter`. One corpus (WikiText-2 valid + Shakespeare, repeated to ~17 MB),
alternating over rounds; prints tokens/s for both and the ratio.

    python benchmarks/shards.py [--copies 8] [--workers 2] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PIPELINE_SHARED_DATA", REPO.parent / "shared" / "datasets"))
sys.path.insert(0, str(REPO))

PEER = r"""
import json, sys, time
import numpy as np
import sentencepiece as spm
from datasets import load_dataset
from streaming import MDSWriter
sys.path.insert(0, sys.argv[4])
from data.packing import pack
src, model, out, _, workers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
start = time.perf_counter()
ds = load_dataset("json", data_files=src, split="train")
def encode(batch):
    sp = spm.SentencePieceProcessor(model_file=model)
    return {"ids": sp.encode(batch["text"])}
ds = ds.map(encode, batched=True, batch_size=512, num_proc=workers, remove_columns=ds.column_names)
sp = spm.SentencePieceProcessor(model_file=model)
tokens = 0
with MDSWriter(out=out, columns={"tokens": "ndarray:uint16", "doc_starts": "ndarray:int32", "length": "int"},
               compression="zstd") as w:
    for seq, starts, length in pack((r["ids"] for r in ds), 2048, sp.eos_id(), sp.pad_id()):
        w.write({"tokens": seq, "doc_starts": starts, "length": length})
        tokens += length
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": tokens}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from data.jsonl import ShardWriter
    from data.tokenizer import train_sentencepiece

    tmp = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    wiki = (SHARED / "wikitext2" / "valid.txt").read_text()
    play = (SHARED / "shakespeare" / "input.txt").read_text()
    docs = [p for p in re.split(r"\n\s*\n", wiki) if p.strip()] + [p for p in play.split("\n\n") if p.strip()]
    docs = docs * args.copies
    n_shards = 2 * args.workers
    for s in range(n_shards):  # our input: document shards, as the pipeline has them
        with ShardWriter(tmp / "docs" / f"{s:05d}.jsonl.zst") as w:
            for i, t in enumerate(docs[s::n_shards]):
                w.write({"id": f"{s}-{i}", "text": t, "source": "b", "meta": {"domain": "general"}})
    with open(tmp / "docs.jsonl", "w") as f:  # the peer's input: the same documents as JSONL
        f.writelines(json.dumps({"text": t}) + "\n" for t in docs)
    model = train_sentencepiece(docs[: len(docs) // args.copies], tmp / "tok", 8000)
    (tmp / "mix").mkdir()
    (tmp / "mix" / "plan.json").write_text(json.dumps({"pretrain": {"tokens": 1, "weights": {"general": 1.0},
        "selection": {}, "realized_weights": {"general": 1.0}, "domains": {"general": {}}}}))
    size_mb = sum(len(t.encode()) for t in docs) / 1e6
    results: dict[str, list[dict]] = {"ours": [], "datasets.map + MDSWriter": []}
    for _ in range(args.rounds):
        shutil.rmtree(tmp / "ours", ignore_errors=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "-q", "stage", "shards", "--input", str(tmp / "docs"),
                        "--output", str(tmp / "ours"), f"plan={tmp / 'mix' / 'plan.json'}", f"tokenizer={model}",
                        "seq_len={pretrain: 2048}", "domains=[general]", f"executor.workers={args.workers}"],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        took = time.perf_counter() - start
        tokens = json.loads((tmp / "ours" / "_manifest.json").read_text())["stats"]["tokens"]
        results["ours"].append({"seconds": took, "tokens": tokens})
        shutil.rmtree(tmp / "peer", ignore_errors=True)
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", PEER, str(tmp / "docs.jsonl"), str(model), str(tmp / "peer"),
                              str(REPO), str(args.workers)], check=True, capture_output=True, text=True,
                             env={**os.environ, "HF_DATASETS_CACHE": str(tmp / "hf-cache")}).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results["datasets.map + MDSWriter"].append({"seconds": time.perf_counter() - start, "tokens": r["tokens"]})
    print(f"\ncorpus: {len(docs)} documents, {size_mb:.1f} MB; sentencepiece BPE 8k; {args.workers} workers; "
          f"pack to 2048; best of {args.rounds} (wall time of the whole command)\n")
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in results.items()}
    for name, r in best.items():
        print(f"{name:<26} {r['seconds']:>7.2f} s {r['tokens'] / r['seconds']:>12,.0f} tokens/s  ({r['tokens']:,} tokens)")
    ours, peer = best["ours"], best["datasets.map + MDSWriter"]
    print(f"\nours / peer tokens/s: {(ours['tokens'] / ours['seconds']) / (peer['tokens'] / peer['seconds']):.2f}x")


if __name__ == "__main__":
    main()
