"""The cleaning rules in every language: per-language settings, words in scripts without spaces,
real prose kept and real spam dropped (../shared/data)."""

from __future__ import annotations

import collections
import json

import pytest

from gristmill.config import ConfigError, GristmillConfig, load_config
from gristmill.documents import new_document
from gristmill.pipelines import filters, language_table, words
from gristmill.pipelines.clean import Cleaner, rules_for

from .conftest import shared

PREVIOUS_DEFAULT = {"clean": {
    "language_table": "none",
    "gopher_quality": {"languages": ["en"]},
    "c4_lines": {"languages": ["en"], "require_terminal_punctuation": True},
    "fineweb_quality": {"enabled": False},
}}


@pytest.fixture(scope="module")
def leipzig() -> dict[str, list[str]]:
    """Documents of 16 real sentences (4 lines of 4) per language, from the Leipzig corpora."""
    sentences: dict[str, list[str]] = collections.defaultdict(list)
    with open(shared("lid/lingua_testdata_sentences.tsv"), encoding="utf-8") as f:
        next(f)
        for row in f:
            lang, _, text = row.rstrip("\n").partition("\t")
            sentences[lang].append(text)
    out = {}
    for lang, sents in sentences.items():
        sep = "" if lang in ("zh", "ja") else " "
        out[lang] = ["\n".join(sep.join(sents[d * 16 + i * 4: d * 16 + i * 4 + 4]) for i in range(4))
                     for d in range(min(25, len(sents) // 16))]
    return out


def _kept(cleaner: Cleaner, texts: list[str]) -> int:
    return sum(1 for i, t in enumerate(texts) if cleaner.process(new_document(str(i), t, "t"))["reason"] is None)


# --- words ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["zh", "ja", "th"])
def test_scripts_without_spaces_are_segmented_into_words(leipzig, lang):
    text = leipzig[lang][0]
    spaced = filters.tokenize_words(text)  # whitespace chunks: a Chinese line is one "word"
    segmented = words.tokens_of(text, lang)
    assert len(segmented) > 2 * len(spaced)  # Thai puts spaces between sentences: fewer per chunk
    word_tokens = [t for t in segmented if any(c.isalpha() for c in t)]
    mean = sum(map(len, word_tokens)) / len(word_tokens)
    assert 1.0 <= mean <= 5.0, mean  # FineWeb-2's bounds for zh / ja / th words are 1-5, 1-?, 2-10
    assert "".join(segmented) == "".join(text.split())  # nothing lost, nothing invented
    assert not any(t != t.strip() or not t for t in segmented)


def test_word_rules_count_segmented_words_in_chinese():
    prose = "今天我们在公园里散步，天气是很好的。孩子们在草地上玩耍，老人们在树下下棋。" * 3
    # one whitespace-free line: as "words" it is one token, far under Gopher's 50 words
    assert filters.gopher_quality(prose, GristmillConfig().clean.gopher_quality).reason == "short_doc"
    zh = dict(rules_for(GristmillConfig(), "zh"))["gopher_quality"]
    v = filters.gopher_quality(prose, zh, words.tokens_of(prose, "zh"))
    assert v.keep, v
    assert v.signals["n_words"] > 50 and v.signals["stop_words"] >= 2


def test_languages_written_with_spaces_keep_hyphenated_words_whole_except_english():
    assert words.tokens_of("E-post och Saudi-Arabien.", "sv") == ("E-post", "och", "Saudi-Arabien", ".")
    assert words.tokens_of("an e-mail.", "en") == ("an", "e", "-", "mail", ".")
    assert words.tokens_of("l'homme et dell'anno", "fr")[:2] == ("l'", "homme")


def test_sentence_ends_in_any_script():
    ends = set(words.terminal_punctuation())
    assert {".", "!", "?", "。", "！", "？", "।", "။", "።", "؟"} <= ends
    assert not {",", ";", ":", '"', "'"} & ends
    assert words.sentence_counter("th")("ประโยคแรก ประโยคที่สอง ประโยคที่สาม") == 3  # a space ends a Thai sentence
    assert words.sentence_counter("en")("one two three") == 1


# --- settings per language -----------------------------------------------------------------------


def test_rules_resolve_per_language_settings_in_order():
    table = language_table.load("fineweb2")
    cfg = load_config(None, ["clean.gopher_quality.per_language={de: {max_avg_word_length: 40}}"])
    en, de, zh = (dict(rules_for(cfg, lang)) for lang in ("en", "de", "zh"))
    assert list(en) == ["gopher_repetition", "gopher_quality", "c4_lines", "fineweb_quality"]
    assert en["gopher_quality"] == cfg.clean.gopher_quality  # English: the sections' own (FineWeb's) values
    assert de["gopher_quality"].max_avg_word_length == 40  # per_language beats the table ...
    assert de["gopher_quality"].min_alpha_words_ratio == table["gopher_quality"]["de"]["min_alpha_words_ratio"]
    # ... and the table the section's value
    assert de["fineweb_quality"].line_punct_thr == table["fineweb_quality"]["de"]["line_punct_thr"]
    assert zh["gopher_quality"].stop_words == table["gopher_quality"]["zh"]["stop_words"]
    assert "的" in zh["gopher_quality"].stop_words
    # no stop words known for a language: no stop-word rule (English's would drop all of it)
    assert "xmf" not in table["gopher_quality"]
    assert dict(rules_for(cfg, "xmf"))["gopher_quality"].min_stop_words is None
    # Korean: FineWeb-2's stop words are particles its tokenizer splits off; gristmill splits at spaces
    assert dict(rules_for(cfg, "ko"))["gopher_quality"].min_stop_words is None
    # no table: every language gets the sections' values
    plain = load_config(None, ["clean.language_table=none"])
    assert dict(rules_for(plain, "de"))["gopher_quality"].max_avg_word_length == 10


def test_a_script_without_a_segmenter_here_gets_no_word_rules():
    km = dict(rules_for(GristmillConfig(), "km"))
    assert "gopher_quality" not in km
    assert km["gopher_repetition"].top_n_grams == () and km["gopher_repetition"].dup_n_grams == ()
    assert km["gopher_repetition"].dup_line_frac is not None  # the line rules still hold
    assert km["c4_lines"].min_words_per_line is None and km["fineweb_quality"].new_line_ratio is None


def test_the_table_is_published_values_with_their_source():
    data = json.loads((language_table.TABLE_DIR / "thresholds.json").read_text(encoding="utf-8"))
    assert data["source"]["repo"] == "huggingface/fineweb-2"
    for values in data["languages"].values():
        assert len(values["commit"]) == 40 and values["fineweb2_config"].endswith(".yml")
    from gristmill.config import LID176_LANGUAGES

    assert set(data["languages"]) <= LID176_LANGUAGES
    assert {"zh", "ja", "th", "ko", "de", "fr", "ru"} <= set(data["languages"])
    for lang in data["languages"]:  # every value fits its setting's type and bounds
        rules_for(GristmillConfig(), lang)


@pytest.mark.parametrize("override,message", [
    ("clean.gopher_quality.per_language={cn: {min_doc_words: 10}}", "'cn' is not a language"),
    ("clean.fineweb_quality.per_language={de: {line_punct_thr: 1.5}}", "less than or equal to 1"),
    ("clean.c4_lines.per_language={de: {min_word_per_line: 2}}", "did you mean min_words_per_line"),
    ("clean.gopher_quality.languages=[english]", "'english' is not a language"),
    ("clean.language_table=fineweb3", "fineweb2"),
])
def test_bad_language_settings_say_what_to_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_another_language_id_model_may_name_its_own_codes():
    cfg = load_config(None, ["langid.model_path=/models/glotlid.bin",
                             "clean.gopher_quality.per_language={eng_Latn: {min_doc_words: 10}}"])
    assert cfg.clean.gopher_quality.per_language["eng_Latn"] == {"min_doc_words": 10}


# --- real text -----------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["zh", "ja", "th", "ko", "de", "ru", "ar", "hi"])
def test_real_prose_survives_in_every_script(leipzig, lang):
    """News and web sentences of the Leipzig corpora: the recipe in every language keeps most of them
    (Thai loses some to the share of words with a letter: its quotes and Thai digits are not letters)."""
    texts = leipzig[lang]
    kept = _kept(Cleaner(GristmillConfig()), texts)
    assert kept >= (0.7 if lang == "th" else 0.8) * len(texts), (lang, kept, len(texts))


def test_chinese_spam_mojibake_and_porn_pages_of_a_real_crawl_are_dropped():
    """The Chinese pages of a real Common Crawl WARC excerpt (gambling lists, porn ads, mojibake,
    contact pages) passed the previous default, which filtered only English; now none passes."""
    from gristmill.pipelines import readers

    path = shared("web/resiliparse_CC-MAIN-2020-34_excerpt.warc.gz")
    cfg = GristmillConfig()
    docs = [d for d in readers.read_file(str(path), "excerpt", cfg.read) if isinstance(d, dict)]
    texts = [d["text"] for d in docs if not d["reason"]]
    assert len(texts) == 15
    previous, current = Cleaner(GristmillConfig.model_validate(PREVIOUS_DEFAULT)), Cleaner(cfg)
    zh_before = [d for d in (previous.process(new_document(str(i), t, "t")) for i, t in enumerate(texts))
                 if d["lang"] == "zh"]
    zh_now = [d for d in (current.process(new_document(str(i), t, "t")) for i, t in enumerate(texts))
              if d["lang"] == "zh"]
    assert len(zh_now) == len(zh_before) >= 8
    assert sum(1 for d in zh_before if d["reason"] is None) >= 5
    assert [d["reason"] for d in zh_now if d["reason"] is None] == []
    assert {d["reason"].split(":")[0] for d in zh_now} >= {"gopher_quality", "fineweb_quality"}


def _spam_pages(sentences: list[str], lang: str) -> dict[str, str]:
    """Pages of the kinds a crawl's spam is made of, built from a language's real sentences: keyword stuffing (the
    same few words over and over), a link farm (a menu of short word lines), and mojibake (the text in its legacy
    encoding read as Windows-1252, which Unicode repair cannot undo)."""
    toks = [t for t in words.tokens_of(" ".join(sentences[:40]), lang) if any(c.isalpha() for c in t)]
    keywords = toks[:6]
    sep = "" if lang in ("zh", "ja") else " "
    stuffed = "\n".join(sep.join(keywords) for _ in range(30))
    menu = "\n".join(sep.join(toks[i:i + 2]) for i in range(0, 120, 2))
    legacy = {"ja": "shift_jis", "zh": "gb18030", "ko": "euc_kr", "th": "tis_620"}[lang]
    body = "\n".join(sentences[40:56])
    mojibake = body.encode(legacy, "replace").decode("cp1252", "replace")
    return {"keyword stuffing": stuffed, "link farm": menu, "mojibake": mojibake}


@pytest.mark.parametrize("lang", ["zh", "ja", "th", "ko"])
def test_spam_and_mojibake_pages_are_dropped_and_prose_kept_in_scripts_without_latin_words(lang):
    """Built from the language's real sentences (Leipzig): stuffed keywords, a link farm and mojibake are each
    dropped, with a reason, while the same sentences as prose are kept."""
    sentences = []
    with open(shared("lid/lingua_testdata_sentences.tsv"), encoding="utf-8") as f:
        next(f)
        sentences = [r.rstrip("\n").partition("\t")[2] for r in f if r.startswith(lang + "\t")]
    cleaner = Cleaner(GristmillConfig())
    sep = "" if lang in ("zh", "ja") else " "
    prose = "\n".join(sep.join(sentences[56 + 4 * i: 60 + 4 * i]) for i in range(4))
    assert cleaner.process(new_document("prose", prose, "t"))["reason"] is None
    for kind, text in _spam_pages(sentences, lang).items():
        doc = cleaner.process(new_document(kind, text, "t"))
        assert doc["reason"], (lang, kind, text[:80])
