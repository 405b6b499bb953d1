"""The demo corpus is deterministic and carries something for every later filter to remove."""
from collections import Counter

from data import sample


def test_deterministic_and_varied():
    a, b = sample.documents(3, 300), sample.documents(3, 300)
    assert a == b and a != sample.documents(4, 300)
    kinds = Counter(d["meta"]["planted"] for d in a)
    for kind in ("prose", "math", "code", "boilerplate", "junk", "exact_duplicate", "near_duplicate"):
        assert kinds[kind] > 0, kind
    assert sum(kinds[k] for k in kinds if k.startswith("prose_")) > 0
    texts = [d["text"] for d in a]
    assert len(set(texts)) < len(texts)


def test_html_page_wraps_boilerplate():
    doc = sample.documents(0, 5)[0]
    page = sample.html_page(doc)
    assert sample.NAV.split(" | ")[0] in page and sample.COOKIE in page and "<article>" in page
