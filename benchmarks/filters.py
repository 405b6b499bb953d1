"""Heuristic filters, side by side: our `heuristics` stage against datatrove's C4QualityFilter
+ GopherRepetitionFilter + GopherQualityFilter + FineWebQualityFilter with the same
thresholds (their defaults, which are ours), one worker each, alternating over rounds.

Corpus: WikiText-2 paragraphs, the 110 crawled pages of web-html (text extracted by our
ingest) and lid-sentences grouped six to a document (75 languages). Reported: documents/s
for both, the ratio, and the agreement of keep/remove decisions. Language ID is compared
separately: datatrove's LanguageFilter downloads its model at run time, which fails here.

    python benchmarks/filters.py [--rounds 2] [--peer-python /tmp/peer-datatrove/bin/python]
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PIPELINE_SHARED_DATA", REPO.parent / "shared" / "datasets"))
sys.path.insert(0, str(Path(__file__).parent))
from dedup import run_measured  # noqa: E402

PEER = r"""
import gzip, json, resource, sys, time
from pathlib import Path
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
shards, out = sys.argv[1], Path(sys.argv[2])
start = time.perf_counter()
LocalPipelineExecutor([JsonlReader(shards, glob_pattern="*.jsonl.zst", compression="zstd"), C4QualityFilter(),
                       GopherRepetitionFilter(), GopherQualityFilter(), FineWebQualityFilter(),
                       JsonlWriter(str(out / "kept"))], tasks=1, workers=1, logging_dir=str(out / "logs")).run()
work = time.perf_counter() - start
kept = sorted(json.loads(l)["id"] for p in (out / "kept").glob("*.jsonl.gz") for l in gzip.open(p, "rt"))
print(json.dumps({"work_s": work, "kept": kept, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

OURS = r"""
import json, resource, sys, time
from pathlib import Path
from pipeline.cli import main
shards, out = sys.argv[1], Path(sys.argv[2])
start = time.perf_counter()
main(["-q", "stage", "heuristics", "--input", shards, "--output", str(out), "executor.workers=1", "--force",
      "rules.max_dirty_words=null"])
work = time.perf_counter() - start
from data.jsonl import read_shard
kept = sorted(d["id"] for p in out.glob("*.jsonl.zst") for d in read_shard(p))
print(json.dumps({"work_s": work, "kept": kept, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_corpus(raw: Path) -> None:
    raw.mkdir(parents=True)
    wiki = [p.strip() for p in re.split(r"\n\s*\n", (SHARED / "wikitext2" / "valid.txt").read_text()) if len(p) > 200]
    docs = [{"id": f"wiki-{i}", "text": t} for i, t in enumerate(wiki)]
    for path in sorted((SHARED / "lid-sentences").glob("*.txt")):
        lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
        docs += [{"id": f"{path.stem}-{i}", "text": " ".join(lines[i:i + 6])} for i in range(0, len(lines) - 5, 6)]
    with open(raw / "docs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    shutil.copytree(SHARED / "web-html", raw / "web")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peer-python", default="/tmp/peer-datatrove/bin/python")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-filters-"))
    build_corpus(tmp / "raw")
    subprocess.run([sys.executable, "-m", "pipeline", "-q", "stage", "ingest", "--input", str(tmp / "raw"),
                    "--output", str(tmp / "shards"), "tasks=1", "source=b"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    n_docs = json.loads((tmp / "shards" / "_manifest.json").read_text())["stats"]["docs_out"]
    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        runs = {"ours": lambda: run_measured([sys.executable, "-c", OURS, str(tmp / "shards"), str(tmp / "ours")],
                                             {"PYTHONPATH": str(REPO)})}
        if Path(args.peer_python).exists():
            def peer():
                shutil.rmtree(tmp / "dt", ignore_errors=True)
                return run_measured([args.peer_python, "-c", PEER, str(tmp / "shards"), str(tmp / "dt")])
            runs["datatrove"] = peer
        for name, fn in runs.items():
            r = fn()
            if name not in results or r["work_s"] < results[name]["work_s"]:
                results[name] = r
    print(f"\ncorpus: {n_docs} documents (WikiText paragraphs, crawled pages, 75-language sentence groups); "
          f"1 worker; best of {args.rounds}\n")
    print(f"{'contender':<12} {'work s':>8} {'docs/s':>9} {'peak MB':>8} {'kept':>6}")
    for name, r in results.items():
        print(f"{name:<12} {r['work_s']:>8.2f} {n_docs / r['work_s']:>9.0f} {r['max_rss_mb']:>8.0f} {len(r['kept']):>6}")
    if "datatrove" in results:
        ours, dt = results["ours"], results["datatrove"]
        a, b = set(ours["kept"]), set(dt["kept"])
        agree = n_docs - len(a ^ b)
        print(f"\nours / datatrove documents/s: {dt['work_s'] / ours['work_s']:.2f}x  (goal >= 3x)")
        print(f"keep/remove agreement: {agree / n_docs:.3f} ({len(a - b)} kept only by ours, {len(b - a)} only by datatrove)")


if __name__ == "__main__":
    main()
