"""The fast ftfy path of ``normalize_text`` (``filters._ftfy_fix``) returns ``ftfy.fix_text``'s string, byte
for byte: on random strings of the characters ftfy acts on, and on real text (every document of the shared web
sample, the language-ID sentences, words and word pairs, the UDHR in 388 language variants) and on a mojibake set
built here by encoding real text wrongly in the usual ways. At the end: gopher_repetition's exact n-gram savings
against the reference loops."""

from __future__ import annotations

import csv
import gzip
import html
import json
import random
import re
import unicodedata
import zipfile
from html.entities import codepoint2name

import ftfy
import ftfy.bad_codecs  # noqa: F401  (registers the sloppy-windows-* codecs)
import pytest
from ftfy import badness, chardata, fixes

from gristmill.config import GopherRepetitionConfig, NormalizeConfig
from gristmill.pipelines import filters

from .conftest import shared

CFG = filters._ftfy_config("NFC")
GATE = filters._ftfy_gate("NFC")


def assert_same_as_ftfy(texts, gate=GATE, cfg=CFG) -> int:
    """Every text comes out of the fast path as out of ftfy.fix_text; returns how many ftfy changed beyond
    the normalisation (so a test can tell that its input reaches ftfy's repairs)."""
    repaired = 0
    for text in texts:
        expected = ftfy.fix_text(text, cfg)
        got = gate.fix_text(text)
        assert got == expected, (text[:300], got[:300], expected[:300])
        norm = cfg.normalization
        repaired += expected != (unicodedata.normalize(norm, text) if norm else text)
    return repaired


# --- the gate's construction ----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["NFC", "NFKC", "none"])
def test_the_gate_is_active_for_the_installed_ftfy(form):
    # a new ftfy (other fixers, other options, another BADNESS_RE) turns the gate off: review it then
    assert ftfy.__version__.startswith(filters._FTFY_CHECKED_VERSIONS)
    assert filters._ftfy_gate(form) is not None


def _all_chars_except(excluded) -> str:
    return "".join(chr(c) for c in range(0x110000) if c not in excluded and not 0xD800 <= c <= 0xDFFF)


def test_fixers_leave_every_other_character_alone():
    """The characters the gate looks for are all the fixers (other than unescape_html and fix_encoding) act on:
    on a string of every other code point each fixer is the identity."""
    acts = {ord(m.group()) for m in GATE.act_re.finditer("".join(map(chr, range(0x110000))))}
    others = _all_chars_except(acts)
    for fixer in (fixes.fix_c1_controls, fixes.fix_latin_ligatures, fixes.fix_line_breaks, fixes.fix_surrogates,
                  fixes.remove_terminal_escapes, fixes.remove_control_chars):
        assert fixer(others) == others, fixer.__name__
    # ... and each character the gate looks for is one some fixer changes (no needless fallbacks)
    for c in map(chr, sorted(acts)):
        if 0xD800 <= ord(c) <= 0xDFFF:
            assert fixes.fix_surrogates(c) != c
            continue
        changed = [f for f in (fixes.fix_latin_ligatures, fixes.fix_line_breaks, fixes.remove_control_chars)
                   if f(c) != c]
        assert changed or chardata.C1_CONTROL_RE.match(c), repr(c)  # C1: some map to themselves in cp1252


def test_mojibake_gate_matches_wherever_badness_does():
    # each alternative of BADNESS_RE, from the gate's own parse: a match of BADNESS_RE is a match of the gate
    from re import _constants as sre
    from re import _parser

    (op, av), = _parser.parse(badness.BADNESS_RE.pattern, badness.BADNESS_RE.flags).data
    assert op is sre.BRANCH
    rng = random.Random(7)
    for alt in av[1]:
        for _ in range(50):  # random strings matching the alternative, built item by item
            s = "".join(_sample_item(item, rng) for item in alt.data)
            assert badness.is_bad(s), repr(s)
            assert GATE.mojibake_re.search(s), repr(s)
            assert GATE.mojibake_re.search(f"text {s}\nmore"), repr(s)  # and in any text around it
    # no ASCII text, and little clean text, matches the gate
    assert not GATE.mojibake_re.search("".join(map(chr, range(128))))
    assert not GATE.mojibake_re.search("Café “naïve” — déjà vu, Ελληνικά, русский текст, 2 × 3 € … ½")


def _sample_item(item, rng) -> str:
    from re import _constants as sre

    op, av = item
    if op is sre.LITERAL:
        return chr(av)
    if op is sre.AT:
        return ""
    if op is sre.ANY:
        return "x"
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        lo, hi, sub = av
        return "".join(_sample_item(i, rng) for _ in range(rng.randint(lo, min(hi, 2))) for i in sub.data)
    if op is sre.IN:
        chars = filters._item_chars(item)
        if chars is None:  # \s, \w, [^A-Za-z]
            one = re.compile(filters._unparse([item]))
            return rng.choice([c for c in " \tab1é" if one.fullmatch(c)])
        return chr(rng.choice(sorted(chars)))
    raise AssertionError(f"unexpected regex item {op}")


# --- chosen and random strings ---------------------------------------------------------------------

CASES = [
    "", "\n", "plain ASCII\n", "é", "e\u0301\n\u0301x", "caf\u00c3\u00a9\nok", "\u00c3 bord\nÃ©",
    "a &amp; b\n<p>&amp;</p>\nc &amp; d", "<b>\n&eacute;", "&EACUTE;&ntilde;&#233;&#x2019;&bogus;",
    "line\r\nnext\rlast\u2028x\u2029y\x85z", "\ufeffBOM\u206a", "\x1b[31mred\x1b[0m", "\ud83d\udca9 \udca9\ud83d",
    "ﬁne ﬂour Ĳ ǆ", "\x80\x9c\x9d C1", "\u1100\n\u1161\u11a8", "\u0b47\n\u0b3e\u0b47\u0b3e",
    "Ð¿Ñ€Ð¸Ð²ÐµÑ‚", "â€œquotedâ€\x9d", "â€œ like this â€�", "voilÃ le travail", "×²", "\xa0" * 3 + "é",
]


@pytest.mark.parametrize("text", CASES)
def test_chosen_cases(text):
    assert_same_as_ftfy([text])
    assert filters._ftfy_fix(text, "NFC") == ftfy.fix_text(text, CFG)


def _pool() -> list[str]:
    pool = list("abcXYZ .,;:'\"\t\n\n\n<>&#é\u0301\u0327\u1100\u1161\u11a8\u0b47\u0b3e\r\x1b\x85\u2028\ufeff\x00\x7f")
    pool += ["&amp;", "&eacute;", "&#233;", "&lt;", "Ã©", "â€™", "Ð¿Ñ€", "Ã ", "\x1b[0m", "\ud83d\udca9", "\udca9"]
    for chars in badness.MOJIBAKE_CATEGORIES.values():
        pool += [c for c in chars if c != "-"]
    return pool


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"normalization": "NFKC"},
        {"normalization": None},
        {"normalization": "NFD", "unescape_html": True},
        {"unescape_html": False, "uncurl_quotes": True, "fix_character_width": True},
        {"max_decode_length": 5},  # segments cut inside lines
        {"max_decode_length": 11, "fix_encoding": False},
    ],
)
def test_random_strings_of_the_characters_ftfy_acts_on(options):
    cfg = CFG._replace(**options)
    gate = filters._FtfyGate(cfg)
    rng, pool = random.Random(20261130), _pool()
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(1000)]
    assert assert_same_as_ftfy(texts, gate, cfg) > 100


def test_normalize_text_is_unchanged():
    """normalize_text as it was (ftfy.fix_text called directly) and as it is give the same verdicts."""
    rng, pool = random.Random(5), _pool()
    texts = CASES + ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(500)]
    for text in texts:
        assert filters.normalize_text(text, NormalizeConfig()) == _old_normalize_text(text, NormalizeConfig())


def _old_normalize_text(text: str, cfg: NormalizeConfig) -> filters.Verdict:
    text = filters._NEWLINES_RE.sub("\n", text)
    n_controls = 0
    if filters._CONTROL_RE.search(text):
        text, n_controls = filters._CONTROL_RE.subn("", text)
    if cfg.fix_unicode and not text.isascii():
        text = ftfy.fix_text(text, filters._ftfy_config(cfg.unicode_form))
    elif cfg.unicode_form != "none" and not text.isascii():
        text = unicodedata.normalize(cfg.unicode_form, text)
    text = text.strip()
    if not text:
        return filters.Verdict(text, "empty")
    return filters.Verdict(text, None, {"control_chars_removed": n_controls} if n_controls else {})


# --- real text (slow: ~40 s, most of it ftfy's) --------------------------------------------------------------------


def _web_texts() -> list[str]:
    files = sorted(p for p in shared("web").iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    assert len(files) >= 4, files
    texts = []
    for path in files:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line).get("text") or "" for line in f if line.strip()]
    return texts


def _tsv_column(rel: str, col: int) -> list[tuple[str, str]]:
    with open(shared(rel), encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[0], r[col]) for r in rows[1:] if len(r) > col]


def _joined(pairs, per_doc: int) -> list[str]:
    """Lines of one label joined into documents of ``per_doc`` lines."""
    by_label: dict[str, list[str]] = {}
    for label, text in pairs:
        by_label.setdefault(label, []).append(text)
    return ["\n".join(lines[i : i + per_doc]) for lines in by_label.values() for i in range(0, len(lines), per_doc)]


@pytest.mark.slow
def test_every_web_document():
    texts = _web_texts()
    assert len(texts) > 1300
    repaired = assert_same_as_ftfy(texts)
    assert repaired > 10  # the sample has real mojibake, entities and C1 controls: the slow path is exercised
    for text in texts:  # and through normalize_text, as the pipeline calls it
        assert filters.normalize_text(text, NormalizeConfig()) == _old_normalize_text(text, NormalizeConfig())


@pytest.mark.slow
def test_every_language_id_sentence_word_and_word_pair():
    sentences = _tsv_column("lid/lingua_testdata_sentences.tsv", 1)
    assert len(sentences) > 70_000
    assert_same_as_ftfy(_joined(sentences, 50))  # every sentence, as lines of documents
    assert_same_as_ftfy(text for _, text in sentences[::5])  # and a fifth of them one by one
    for rel in ("lid/lingua_testdata_single_words.tsv", "lid/lingua_testdata_word_pairs.tsv"):
        assert_same_as_ftfy(_joined(_tsv_column(rel, 1), 100))


@pytest.mark.slow
def test_udhr_in_every_language():
    with zipfile.ZipFile(shared("lid/nltk_udhr2.zip")) as z:  # the original files, as they are
        raw = [z.read(n).decode("utf-8", "surrogateescape") for n in z.namelist() if not n.endswith("/")]
    assert len(raw) > 380
    assert_same_as_ftfy(raw)


# --- mojibake built from real text ------------------------------------------------------------------------

# UTF-8 bytes read in a single-byte encoding: the mojibake ftfy exists for (the sloppy codecs pass every byte
# through, as browsers do; the strict ones with errors="replace" lose bytes to U+FFFD, ftfy's lossy case)
WRONG_DECODINGS = [
    ("sloppy-windows-1252", "strict"), ("windows-1252", "replace"), ("latin-1", "strict"),
    ("sloppy-windows-1251", "strict"), ("windows-1251", "replace"), ("windows-1253", "replace"),
    ("iso-8859-7", "replace"), ("mac_roman", "strict"), ("sloppy-windows-1250", "strict"), ("cp437", "strict"),
    ("iso-8859-2", "replace"), ("sloppy-windows-1254", "strict"), ("sloppy-windows-1257", "strict"),
]
_NAMED = {chr(cp): f"&{name};" for cp, name in codepoint2name.items()}


def _breakings(line: str, rng: random.Random) -> list[str]:
    data = line.encode("utf-8")
    out = [data.decode(enc, errors) for enc, errors in WRONG_DECODINGS]
    cp1252 = data.decode("sloppy-windows-1252")
    out.append(cp1252.encode("utf-8").decode("sloppy-windows-1252"))  # encoded twice
    out.append(cp1252.replace("\xa0", " "))  # and a non-breaking space turned into a space on the way
    words = line.split(" ")
    i = rng.randrange(len(words))
    out.append(" ".join(words[:i] + [words[i].encode("utf-8").decode("sloppy-windows-1252")] + words[i + 1 :]))
    out.append(html.escape(line))  # &amp; &lt; &quot; &#x27;
    out.append(line.encode("ascii", "xmlcharrefreplace").decode("ascii"))  # &#233;
    out.append("".join(_NAMED.get(c, c) for c in line))  # &eacute;
    out.append("".join(_NAMED.get(c, c) for c in line).upper())  # &EACUTE;
    curly = line.replace("'", "\u2019")
    out.append(curly.replace(' "', " \u201c").replace('"', "\u201d"))
    out.append(curly.encode("utf-8").decode("sloppy-windows-1252"))  # curly quotes as mojibake: â€™
    return out


def _mojibake_set() -> tuple[list[str], list[str]]:
    """(broken lines, documents mixing broken and intact lines): from the UDHR (every language), the web sample
    and the language-ID sentences, a deterministic sample."""
    rng = random.Random(13)
    by_lang: dict[str, list[str]] = {}
    for lang, text in _tsv_column("lid/udhr2_unicode_lines.tsv", 2):
        by_lang.setdefault(lang, []).append(text)
    sources = [rng.choice(lines) for lines in by_lang.values()]
    sentences = _tsv_column("lid/lingua_testdata_sentences.tsv", 1)
    sources += [text for _, text in rng.sample(sentences, 600)]
    web_lines = [ln for t in _web_texts() for ln in t.split("\n") if len(ln) > 20 and not ln.isascii()]
    sources += rng.sample(web_lines, 600)
    sources = [s for s in sources if s.strip()]
    broken = [b for s in sources for b in _breakings(s, rng)]
    docs = []
    for _ in range(200):  # documents: intact lines around broken ones, "<" before or after the entities
        lines = rng.sample(sources, 8) + rng.sample(broken, 4)
        rng.shuffle(lines)
        if rng.random() < 0.5:
            lines.insert(rng.randrange(len(lines) + 1), "<div>markup</div> &amp; &eacute;")
        docs.append("\n".join(lines))
    return broken, docs


@pytest.mark.slow
def test_mojibake_built_from_real_text():
    broken, docs = _mojibake_set()
    assert len(broken) > 25_000
    repaired = assert_same_as_ftfy(broken)
    assert repaired > len(broken) // 3  # most of the set is something ftfy repairs
    assert_same_as_ftfy(docs)
    # the gate sends every line ftfy would call bad to the slow path
    assert all(GATE.mojibake_re.search(b) for b in broken if badness.is_bad(b))


# --- gopher_repetition's exact savings (issue 13, with the ftfy gate above) -------------------------------------
# n-gram ids are exact, and once no n-gram repeats no longer one is examined; the values must stay those of the
# reference loops for every n, in any order of asking, with any limit and min_count.


def _reference_top(tokens, n, min_count=1):
    counts: dict[tuple, int] = {}
    for i in range(len(tokens) - n + 1):
        g = tuple(tokens[i : i + n])
        counts[g] = counts.get(g, 0) + 1
    top = max(counts.values())
    if top < min_count:
        return 0
    gram = next(g for g, c in counts.items() if c == top)  # first seen among ties
    return (sum(map(len, gram)) + n - 1) * top


def _reference_dup(tokens, n, limit=float("inf")):
    seen, idx, rep = set(), 0, 0
    while idx < len(tokens) - n + 1:
        g = tuple(tokens[idx : idx + n])
        if g in seen:
            rep += sum(map(len, g))
            if rep > limit:
                return rep
            idx += n
        else:
            seen.add(g)
            idx += 1
    return rep


def test_ngram_statistics_equal_the_reference_loops_for_every_n():
    path = shared("web/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:120]
    texts += ["a b a b a b c " * 30, "x", "one two three four five six", "w " * 40, "a b c d e a b c d e f"]
    rng = random.Random(11)
    for text in texts:
        tokens = filters.tokenize_words(text)
        if not tokens:
            continue
        sizes = list(range(1, min(12, len(tokens)) + 1))
        rng.shuffle(sizes)  # long n-grams asked for before short ones too
        ng = filters._Ngrams(tokens)
        for n in sizes:
            for min_count in (1, 2):
                assert filters._top_ngram_chars(ng, n, min_count) == _reference_top(tokens, n, min_count), n
            for limit in (float("inf"), 0, 40):
                assert filters._duplicate_ngram_chars(ng, n, limit) == _reference_dup(tokens, n, limit), n
            grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
            assert ng.distinct(n) == (len(set(grams)) == len(grams)), n


def test_skipped_ngram_checks_still_apply_their_threshold():
    text = " ".join(f"word{i}" for i in range(60))  # no n-gram repeats
    cfg = GopherRepetitionConfig(top_n_grams=(), dup_n_grams=((5, 0.15), (8, -0.01)))
    assert filters.gopher_repetition(text, cfg).reason == "dup_8_gram"  # 0 > -0.01, as before the early exit
    assert filters.gopher_repetition(text, GopherRepetitionConfig(top_n_grams=())).keep


def _reference_duplicates(items):
    seen, n, chars = set(), 0, 0
    for x in items:
        if x in seen:
            n, chars = n + 1, chars + len(x)
        seen.add(x)
    return n, chars


@pytest.mark.parametrize("text", ["a", "a\nb\na", "a\n\nb\n\n\na", "\na\n", "\n\n\nx\n\n", "p q\n\np q\nr",
                                  " a \n\n a ", "x\n\n", "\n", "l1\nl2\nl1\n\n\nl2\n"])
def test_line_and_paragraph_statistics_as_the_regex_splits_give_them(text):
    paragraphs, lines = re.split(r"\n{2,}", text.strip()), re.split(r"\n+", text)
    assert filters._duplicates(paragraphs) == _reference_duplicates(paragraphs)
    assert filters._duplicates(lines) == _reference_duplicates(lines)
    off = GopherRepetitionConfig(dup_para_frac=None, dup_para_char_frac=None, dup_line_frac=None,
                                 dup_line_char_frac=None, top_n_grams=(), dup_n_grams=())
    v = filters.gopher_repetition(text, off)
    assert v.signals == {"dup_para_frac": round(_reference_duplicates(paragraphs)[0] / len(paragraphs), 4),
                         "dup_line_frac": round(_reference_duplicates(lines)[0] / len(lines), 4)}
