"""Keyed deduplication (exact text, URL) as map-reduce over 64-bit keys.

map: each shard's documents -> a key hash and a preference per document, partitioned into
buckets by hash. reduce: per bucket, the most preferred document of each key is kept and
the others become its duplicates. filter: each shard drops its duplicates. No step holds
more than one bucket of keys, plus the (usually small) list of duplicates.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import datetime, timezone
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np

_WHITESPACE = re.compile(r"\s+")
_PUNCTUATION = re.compile(r"[^\w\s]", re.UNICODE)
OLDEST = np.iinfo(np.int64).min

# query parameters that name a campaign or a click, not a page
TRACKING_PARAMS = re.compile(r"^(utm_\w+|fbclid|gclid|dclid|msclkid|yclid|mc_cid|mc_eid|_ga|_gl|igshid|ref|ref_src|"
                             r"spm|share|si|cmpid|icid)$", re.IGNORECASE)


def normalize_for_hash(text: str, lowercase: bool = False, strip_punctuation: bool = False) -> str:
    """NFC, whitespace folded; optionally case- and punctuation-folded."""
    text = unicodedata.normalize("NFC", text)
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = _PUNCTUATION.sub("", text)
    return _WHITESPACE.sub(" ", text).strip()


def key_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def normalize_url(url: str) -> str:
    """One spelling per page: no scheme, no `www.`, no default port, fragment, tracking
    parameters or trailing slash; host lowercased, query parameters sorted."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if host.startswith("www."):
        host = host[4:]
    port = parts.port
    if port and not ((parts.scheme == "http" and port == 80) or (parts.scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    path = re.sub(r"/{2,}", "/", parts.path or "/")
    if path != "/" and path.endswith("/"):
        path = path.rstrip("/")
    if path.endswith(("/index.html", "/index.htm", "/index.php")):
        path = path.rsplit("/", 1)[0] or "/"
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not TRACKING_PARAMS.match(k))
    query_text = urlencode(query)
    return f"{host}{path}" + (f"?{query_text}" if query_text else "")


def date_rank(date: str | None) -> int:
    """Seconds since the epoch for ISO-like dates; OLDEST when missing or unparsable."""
    if not date:
        return OLDEST
    text = str(date).strip().replace("Z", "+00:00")
    for candidate in (text, text[:19], text[:10]):
        try:
            dt = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp())
    return OLDEST


def bucket_keys(hashes: np.ndarray, preference: np.ndarray, ids: list[str], num_buckets: int) -> dict[str, np.ndarray]:
    """Arrays per bucket: key hash, preference (higher wins), position in the shard, id."""
    positions = np.arange(len(hashes), dtype=np.int64)
    bucket_of = (hashes % np.uint64(num_buckets)).astype(np.int64)
    id_array = np.array(ids, dtype=str) if ids else np.array([], dtype="U1")
    out = {}
    for b in range(num_buckets):
        sel = bucket_of == b
        out[f"hash{b}"], out[f"pref{b}"] = hashes[sel], preference[sel]
        out[f"pos{b}"], out[f"id{b}"] = positions[sel], id_array[sel]
    return out


def find_duplicates(hashes, preference, shards, positions, ids):
    """Rows that lose to another row with the same key: (shard, position, winner's id).

    The winner has the highest preference; ties go to the first in (shard, position) order.
    """
    order = np.lexsort((positions, shards, -preference.astype(np.float64), hashes))
    hashes, shards, positions, ids = hashes[order], shards[order], positions[order], ids[order]
    is_first = np.ones(len(hashes), dtype=bool)
    is_first[1:] = hashes[1:] != hashes[:-1]
    winner = np.maximum.accumulate(np.where(is_first, np.arange(len(hashes)), 0))
    dup = ~is_first
    return shards[dup], positions[dup], ids[winner[dup]]
