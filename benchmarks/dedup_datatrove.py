"""datatrove's four-step MinHash dedup on our shards, for benchmarks/dedup.py (runs in the
peer's own venv). Prints one JSON line: work seconds, removed ids, peak RSS."""
import gzip
import json
import resource
import sys
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

shards, out = sys.argv[1], Path(sys.argv[2])
config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
start = time.perf_counter()
LocalPipelineExecutor([JsonlReader(shards, glob_pattern="*.jsonl.zst", compression="zstd"),
                       MinhashDedupSignature(str(out / "sigs"), config=config)],
                      tasks=1, workers=1, logging_dir=str(out / "logs1")).run()
LocalPipelineExecutor([MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"), config=config)],
                      tasks=config.num_buckets, workers=1, logging_dir=str(out / "logs2")).run()
LocalPipelineExecutor([MinhashDedupCluster(str(out / "buckets"), str(out / "remove"), config=config)],
                      tasks=1, workers=1, logging_dir=str(out / "logs3")).run()
LocalPipelineExecutor([JsonlReader(shards, glob_pattern="*.jsonl.zst", compression="zstd"),
                       MinhashDedupFilter(str(out / "remove"), exclusion_writer=JsonlWriter(str(out / "removed"))),
                       JsonlWriter(str(out / "kept"))],
                      tasks=1, workers=1, logging_dir=str(out / "logs4")).run()
work = time.perf_counter() - start
removed = sorted(json.loads(line)["id"].split("/", 1)[1]
                 for p in (out / "removed").glob("*.jsonl.gz") for line in gzip.open(p, "rt"))
print(json.dumps({"work_s": work, "removed": removed,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
