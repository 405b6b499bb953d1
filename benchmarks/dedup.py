"""MinHash dedup, side by side: ours (the full map-reduce stage, disk and all) against
datatrove's four-step MinHash dedup and a plain in-memory datasketch baseline.

Same corpus (lid-sentences in 75 languages grouped into documents, plus planted near
duplicates), same shingles (word 5-grams), 112 permutations as 14 bands x 8 rows, one
worker each. Each contender runs in its own process, alternating over rounds; reported:
best wall time, peak memory (max RSS), removed documents, recall on the planted pairs,
overlap of the removed sets, and the ratios.

    python benchmarks/dedup.py [--rounds 2] [--peer-python /tmp/peer-datatrove/bin/python]

The peer goes in its own venv (datatrove 0.10 wants a newer huggingface-hub than ours):
    python3 -m venv /tmp/peer-datatrove && /tmp/peer-datatrove/bin/pip install "datatrove[processing]" orjson spacy zstandard
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PIPELINE_SHARED_DATA", REPO.parent / "shared" / "datasets"))
PEER_SCRIPT = Path(__file__).with_name("dedup_datatrove.py")


def build_corpus(out: Path, sentences_per_doc: int = 6, planted: int = 440, seed: int = 0) -> dict[str, str]:
    """Writes docs.jsonl; returns {planted copy id: original id}."""
    rng = random.Random(seed)
    docs = []
    for path in sorted((SHARED / "lid-sentences").glob("*.txt")):
        lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
        for i in range(0, len(lines) - sentences_per_doc + 1, sentences_per_doc):
            docs.append({"id": f"{path.stem}-{i // sentences_per_doc:04d}", "text": " ".join(lines[i:i + sentences_per_doc])})
    copies = {}
    for k, original in enumerate(rng.sample(docs, planted)):
        words = original["text"].split()
        for _ in range(rng.randint(1, 2)):
            words[rng.randrange(len(words))] = f"x{rng.randrange(10**6)}"
        copies[f"zz-copy-{k:04d}"] = original["id"]
        docs.append({"id": f"zz-copy-{k:04d}", "text": " ".join(words)})
    rng.shuffle(docs)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "docs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    return copies


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Runs cmd; returns its JSON result line plus wall time and peak RSS of the process tree."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/env", *cmd], capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads([l for l in proc.stdout.splitlines() if l.startswith("{")][-1])
    result["wall_s"] = wall
    return result


OURS = r"""
import json, resource, sys, time
from pathlib import Path
from pipeline.cli import main
shards, out = sys.argv[1], Path(sys.argv[2])
start = time.perf_counter()
code = main(["-q", "stage", "minhash", "--input", shards, "--output", str(out), "executor.workers=1",
             "ngram=5", "bands=14", "rows=8", "--force"])
work = time.perf_counter() - start
from data.jsonl import read_shard
removed = sorted(d["id"].split("/", 1)[1] for p in (out / "removed").glob("*.jsonl.zst") for d in read_shard(p))
print(json.dumps({"work_s": work, "removed": removed, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BASELINE = r"""
import json, re, resource, sys, time, unicodedata
import numpy as np
from datasketch import MinHash, MinHashLSH
docs = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
start = time.perf_counter()
def shingles(text, n=5):
    text = re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", unicodedata.normalize("NFC", text).lower())).strip()
    w = text.split(" ")
    return {" ".join(w[i:i + n]).encode() for i in range(max(len(w) - n + 1, 1))}
sigs = MinHash.bulk([shingles(d["text"]) for d in docs], num_perm=112)
lsh = MinHashLSH(num_perm=112, params=(14, 8))
for d, m in zip(docs, sigs):
    lsh.insert(d["id"], m)
parent = {}
def find(x):
    while parent.get(x, x) != x:
        parent[x] = parent.get(parent[x], parent[x]); x = parent[x]
    return x
for d, m in zip(docs, sigs):
    for other in lsh.query(m):
        a, b = find(d["id"]), find(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
removed = sorted(d["id"] for d in docs if find(d["id"]) != d["id"])
print(json.dumps({"work_s": time.perf_counter() - start, "removed": removed,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def found_pairs(removed: list[str], copies: dict[str, str]) -> set[str]:
    """Planted pairs of which one side was removed (keepers differ: datatrove keeps the first
    read, ours the smallest id, so removed ids are not comparable one to one)."""
    gone = set(removed)
    return {c for c, o in copies.items() if c in gone or o in gone}


def recall(removed: list[str], copies: dict[str, str]) -> float:
    return len(found_pairs(removed, copies)) / len(copies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peer-python", default="/tmp/peer-datatrove/bin/python")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    copies = build_corpus(tmp / "raw")
    size_mb = (tmp / "raw" / "docs.jsonl").stat().st_size / 1e6
    n_docs = sum(1 for _ in open(tmp / "raw" / "docs.jsonl"))
    # ingest once (not timed): the shards both dedups read
    subprocess.run([sys.executable, "-m", "pipeline", "-q", "stage", "ingest", "--input", str(tmp / "raw"),
                    "--output", str(tmp / "shards"), "tasks=1", "source=b"], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    shards = tmp / "shards"
    contenders = {
        "ours": lambda: run_measured([sys.executable, "-c", OURS, str(shards), str(tmp / "ours")], {"PYTHONPATH": str(REPO)}),
        "in-memory datasketch": lambda: run_measured([sys.executable, "-c", BASELINE, str(tmp / "raw" / "docs.jsonl")]),
    }
    if Path(args.peer_python).exists():
        def datatrove():
            shutil.rmtree(tmp / "dt", ignore_errors=True)  # datatrove skips tasks it finds completed
            return run_measured([args.peer_python, str(PEER_SCRIPT), str(shards), str(tmp / "dt")])
        contenders["datatrove"] = datatrove
    else:
        print(f"(datatrove not found at {args.peer_python}: peer skipped)")
    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            r = fn()
            best = results.get(name)
            if best is None or r["wall_s"] < best["wall_s"]:
                results[name] = r
    print(f"\ncorpus: {n_docs} docs, {size_mb:.1f} MB, {len(copies)} planted near-duplicates; 5-grams, 14x8 bands, 1 worker;"
          f" best of {args.rounds} rounds\n")
    print(f"{'contender':<22} {'wall s':>8} {'work s':>8} {'peak MB':>8} {'removed':>8} {'recall':>7}")
    for name, r in results.items():
        print(f"{name:<22} {r['wall_s']:>8.2f} {r['work_s']:>8.2f} {r['max_rss_mb']:>8.0f} {len(r['removed']):>8}"
              f" {recall(r['removed'], copies):>7.3f}")
    ours = results["ours"]
    base = results["in-memory datasketch"]
    print(f"\nours / in-memory baseline, wall: {ours['wall_s'] / base['wall_s']:.2f}x  (goal <= 1.5x)")
    if "datatrove" in results:
        dt = results["datatrove"]
        print(f"datatrove / ours, wall: {dt['wall_s'] / ours['wall_s']:.2f}x faster  (goal >= 5x); "
              f"work: {dt['work_s'] / ours['work_s']:.2f}x; peak memory ours/datatrove: {ours['max_rss_mb'] / dt['max_rss_mb']:.2f}")
        a, b = found_pairs(ours["removed"], copies), found_pairs(dt["removed"], copies)
        print(f"planted pairs found: {len(a & b)} by both, {len(a - b)} only by ours, {len(b - a)} only by datatrove")


if __name__ == "__main__":
    main()
