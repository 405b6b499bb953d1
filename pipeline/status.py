"""`coordinator status`: per stage its status, fingerprint, counts, removals, bytes, time."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import worker
from pipeline.stage import MANIFEST_FILE


def collect(run_dir: Path) -> list[dict]:
    order = []
    config = run_dir / "config.yaml"
    if config.exists():
        import yaml

        order = list((yaml.safe_load(config.read_text()) or {}).get("stages", {}) or {})
    found = {p.parent.name for p in run_dir.glob(f"*/{MANIFEST_FILE}")}
    names = [n for n in order if n in found] + sorted(found - set(order))
    rows = []
    for name in names:
        m = worker.read_manifest(run_dir / name) or {}
        stats = m.get("stats", {})
        rows.append({
            "stage": name, "type": m.get("type"), "status": m.get("status"), "fingerprint": m.get("fingerprint"),
            "docs_in": stats.get("docs_in"), "docs_out": stats.get("docs_out"),
            "removed": stats.get("removed", {}), "bytes_in": stats.get("bytes_in"), "bytes_out": stats.get("bytes_out"),
            "seconds": m.get("seconds"), "started": m.get("started"), "finished": m.get("finished"), "stats": stats,
        })
    return rows


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024


STANDARD = {"docs_in", "docs_out", "removed", "bytes_in", "bytes_out", "seconds", "task_seconds"}


def details(stats: dict) -> str:
    """The stage's own figures (clusters, lines removed, ...) and its time per step."""
    parts = []
    for key, value in stats.items():
        if key in STANDARD:
            continue
        if isinstance(value, dict):
            value = "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
        elif isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{key}={value}")
    steps = stats.get("task_seconds") or {}
    if len(steps) > 1:
        parts.append("steps " + ", ".join(f"{k} {v:.1f}s" for k, v in steps.items()))
    return "  ".join(parts)


def table(rows: list[dict]) -> str:
    header = f"{'stage':<12} {'status':<10} {'fingerprint':<12} {'in':>8} {'out':>8} {'bytes out':>10} {'time':>8}  removed"
    lines = [header, "-" * len(header)]
    for r in rows:
        removed = ", ".join(f"{k}={v}" for k, v in sorted(r["removed"].items(), key=lambda kv: -kv[1])) or "-"
        t = f"{r['seconds']:.1f}s" if r["seconds"] is not None else "-"
        lines.append(f"{r['stage']:<12} {str(r['status']):<10} {str(r['fingerprint'])[:12]:<12} "
                     f"{'-' if r['docs_in'] is None else r['docs_in']:>8} {'-' if r['docs_out'] is None else r['docs_out']:>8} "
                     f"{_fmt_bytes(r['bytes_out']):>10} {t:>8}  {removed}")
        extra = details(r.get("stats") or {})
        if extra:
            lines.append(f"{'':<12} {extra}")
    return "\n".join(lines)


def to_json(rows: list[dict]) -> str:
    return json.dumps({"stages": rows}, indent=2)
