"""Main-text extraction (``read.extractor: hybrid``, gristmill.pipelines.maintext): the block rules on
small hand-made inputs, a whole page with furniture, and a sample of trafilatura's gold set (20 real
pages with their must-have / must-not-have snippets, tests/data/extraction_gold_sample.tar.xz; the
whole 990-page set is bench/bench_extract.py's)."""

from __future__ import annotations

import json
import tarfile

import pytest

from gristmill.pipelines import maintext
from gristmill.pipelines.extract import _trafilatura, html_to_text
from gristmill.pipelines.maintext import _cut_to_candidate, blocks, clean_blocks, extract_main_text, link_dense

from .conftest import REPO

SENTENCE = "tells the reader something about the harvest of this year in the valley."


def paragraph(n: int, sentences: int = 4) -> str:
    return " ".join(f"Sentence {n}.{k} {SENTENCE}" for k in range(sentences))


# -- blocks of Resiliparse's minimal HTML -----------------------------------------------------------


def test_blocks_tells_paragraphs_headings_lists_pre_and_bare_text_apart():
    html = ("<h2>Title</h2>\n<p>one\nline two</p>\nloose text\n"
            "<ul>\n <li>a</li>\n <li><ul>\n  <li>b</li>\n </ul></li>\n</ul>\n"
            "<pre>x  = 1\n  y</pre>\n\n<p>last</p>")
    got = blocks(html)
    assert [k for k, _ in got] == ["h", "p", "bare", "list", "pre", "p"]
    assert got[3][1].count("<li>") == 3  # the nested list stays in its block
    assert maintext.block_text(*got[4]) == "x  = 1\n  y"  # pre keeps its spaces
    assert maintext.block_text(*got[1]) == "one\nline two"
    assert maintext.block_text("p", "<p>Tom &amp; Jerry  <b>run</b></p>") == "Tom & Jerry run"


def test_link_dense_flags_menus_not_prose_with_a_link():
    menu = '<p><a href="/">Home</a> <a href="/n">News</a> <a href="/s">Sport</a></p>'
    assert link_dense("p", menu, len("Home News Sport"), last=False)
    prose = f'<p>{paragraph(1)} See <a href="/x">the report</a>.</p>'
    assert not link_dense("p", prose, len(paragraph(1)) + 20, last=False)
    assert not link_dense("p", f"<p>{paragraph(1)}</p>", len(paragraph(1)), last=False)


def test_clean_blocks_drops_menus_trailing_headings_and_loose_text_on_paragraph_rich_pages():
    menu = '<ul>\n<li><a href="/">Home</a></li>\n<li><a href="/n">News</a></li>\n</ul>'
    body = "\n".join(f"<p>{paragraph(n)}</p>" for n in range(3))
    text = clean_blocks(f"{menu}\nposted by admin on Monday\n{body}\n<h3>Related articles</h3>", paragraph_chars=500)
    assert "Home" not in text and "Related articles" not in text and "posted by admin" not in text
    assert text.split("\n\n") == [paragraph(n) for n in range(3)]
    # a page with little paragraph text keeps its loose lines (they may be all the text it has)
    assert "posted by admin" in clean_blocks(f"posted by admin on Monday\n{body}", paragraph_chars=10**6)


# -- cutting Resiliparse's text to an article container's ----------------------------------------------


def test_cut_keeps_the_lead_the_shared_span_and_the_tail_the_container_has():
    a, b, c = paragraph(1, 1), paragraph(2, 1), paragraph(3, 1)
    base = "\n".join(["Menu", "The harvest came early this year", a, "Share this story on every network", b,
                      "Thanks for reading!", "Most popular stories of the week", c])
    candidate = "\n".join([a, b, "Thanks for reading!", c + " (not the same line)"])
    got = _cut_to_candidate(base, candidate).split("\n")
    # "Menu" is too short for a lead; the share line is inside the span but not in the container; the
    # tail runs over the lines the container has and stops at the first it has not
    assert got == ["The harvest came early this year", a, b, "Thanks for reading!"]
    assert _cut_to_candidate(base, "nothing in common with the page at all, not one line") is None


def test_cut_keeps_long_lines_inside_the_span_the_container_splits_differently():
    a, b = paragraph(1, 1), paragraph(2, 1)
    long_line = paragraph(9, 2)
    got = _cut_to_candidate("\n".join([a, long_line, b]), "\n".join([a, b]))
    assert long_line in got
    assert long_line not in _cut_to_candidate("\n".join([a, long_line, b]), "\n".join([a, b]),
                                              min_inside_line=10**6)


# -- whole pages --------------------------------------------------------------------------------------

PAGE = f"""<html><head><title>The Valley Gazette</title></head><body>
<header><nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li><li><a href="/a">About us</a></li>
</ul></nav></header>
<div id="page"><h1>The harvest came early this year in the valley</h1>
<div class="entry-content">
<p>{paragraph(1)}</p>
<div class="author-box"><p>Jane Miller writes about farming, weather and the people of the valley</p></div>
<p>{paragraph(2)}</p>
<p>{paragraph(3)}</p>
<div class="newsletter-signup"><p>Get the best stories of the week in your inbox every Friday morning</p>
</div></div>
<aside><p>Subscribe to our newsletter for weekly updates about farming and weather</p></aside>
</div>
<footer><p>Copyright 2024 The Valley Gazette, all rights reserved worldwide</p></footer>
</body></html>"""
FURNITURE = ["Jane Miller writes", "Get the best stories", "Subscribe to our newsletter", "Copyright 2024"]


def test_article_container_text_without_the_furniture_resiliparse_keeps():
    resiliparse = html_to_text(PAGE.encode(), "utf-8", "resiliparse")
    kept_by_resiliparse = [f for f in FURNITURE if f in resiliparse]
    assert kept_by_resiliparse  # the page is a test of something: Resiliparse alone lets furniture through
    text, how = extract_main_text(PAGE)
    assert how == "merge"
    assert text.split("\n\n") == ["The harvest came early this year in the valley"] + [paragraph(n) for n in (1, 2, 3)]
    assert html_to_text(PAGE.encode(), "utf-8", "hybrid") == text


def test_page_without_an_article_container_is_cut_to_its_pruned_body():
    page = PAGE.replace('class="entry-content"', 'class="x"')
    text, how = extract_main_text(page)
    assert how == "body"
    assert all(paragraph(n) in text for n in (1, 2, 3))
    assert "Jane Miller writes" not in text  # pruned from the body by its class name


def test_pages_with_no_text():
    assert extract_main_text("") == ("", "base")
    assert html_to_text(b"<html><body><script>var x = 1;</script></body></html>", None, "hybrid") == ""


# -- real pages with gold snippets --------------------------------------------------------------------


@pytest.fixture(scope="module")
def gold_sample():
    with tarfile.open(REPO / "tests" / "data" / "extraction_gold_sample.tar.xz") as tar:
        gold = json.load(tar.extractfile("gold.json"))
        return [(g, tar.extractfile("html/" + g["file"]).read()) for g in gold.values()]


def snippets(pages, outputs):
    """(must-have found, must-have, must-not-have found, must-not-have): trafilatura's comparison."""
    have = sum(s in out for (g, _), out in zip(pages, outputs) for s in g["with"])
    junk = sum(s in out for (g, _), out in zip(pages, outputs) for s in g["without"])
    return have, sum(len(g["with"]) for g, _ in pages), junk, sum(len(g["without"]) for g, _ in pages)


def f1(have, n_have, junk):
    precision, recall = have / (have + junk), have / n_have
    return 2 * precision * recall / (precision + recall)


def test_hybrid_keeps_the_article_and_drops_the_furniture_of_real_pages(gold_sample):
    resiliparse = snippets(gold_sample, [html_to_text(body, None, "resiliparse") for _, body in gold_sample])
    hybrid = snippets(gold_sample, [html_to_text(body, None, "hybrid") for _, body in gold_sample])
    assert len(gold_sample) == 20 and hybrid[1] >= 50 and hybrid[3] >= 50
    assert hybrid[2] <= 0.6 * resiliparse[2]  # at least 40% fewer furniture snippets than Resiliparse
    assert hybrid[0] >= 0.9 * hybrid[1]  # and still 90% of the article snippets
    assert f1(*hybrid[:3]) > f1(*resiliparse[:3])


def test_hard_pages_go_to_trafilatura(gold_sample):
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    hard = [body for _, body in gold_sample
            if extract_main_text(bytes_to_str(body, detect_encoding(body)))[1] == "container"]
    assert hard  # the sample has one
    for body in hard:
        assert html_to_text(body, None, "hybrid") == _trafilatura(bytes_to_str(body, detect_encoding(body)), fast=True)
