"""report.html on a large crawl's manifest: labels whole, languages and inputs bounded, percentages, one bar per
funnel stage (the collection of the report's data: tests/test_report_data.py)."""

from __future__ import annotations

import re

from gristmill.pipelines.report import TOP_INPUTS, TOP_LANGUAGES, render_html


def _between(page: str, first: str, then: str) -> str:
    return page[page.index(f"<h2>{first}</h2>"):page.index(f"<h2>{then}</h2>")]

LONG = "clean:gopher_quality:alpha_words_low"


def _manifest(n_langs: int = 123, n_inputs: int = 2000) -> dict:
    inputs = [{"source": f"crawl/part-{i:05d}.warc.gz", "format": "warc", "size": 1000 + i, "documents": 10,
               "error": None} for i in range(n_inputs)]
    if n_inputs > 7:
        inputs[7]["error"] = "truncated gzip stream"  # a small file that stopped: listed although not among the largest
    langs = {f"l{i:03d}": {"kept": 1000 - i, "dropped": 3} for i in range(n_langs)}
    read = 10 * n_inputs
    kept = sum(v["kept"] for v in langs.values())
    return {"counts": {"read": read, "kept": kept, "input_files": n_inputs,
                       "dropped": {LONG: read - kept - 100, "exact_dedup:duplicate": 100}},
            "funnel": [{"stage": "gopher_quality", "in": read, "dropped": read - kept, "out": kept}],
            "languages": langs, "inputs": inputs, "shards": [], "config_sha256": "0" * 64}


def test_labels_are_whole_and_the_label_column_fits_them():
    page = render_html(_manifest())
    assert f">{LONG}</text>" in page
    svg = page[page.index("<h2>Dropped by reason</h2>"):page.index("<h2>Languages kept</h2>")]
    x = int(re.search(r'<text x="(\d+)" y="\d+" text-anchor="end"', svg).group(1))
    assert x >= 7 * len(LONG)  # the right-aligned label has room to its left


def test_languages_are_the_top_ones_and_one_row_for_the_rest():
    page = render_html(_manifest(n_langs=123))
    langs = page[page.index("<h2>Languages kept</h2>"):page.index("<h2>Inputs</h2>")]
    assert langs.count("<rect") == TOP_LANGUAGES + 1
    rest = sum(1000 - i for i in range(TOP_LANGUAGES, 123))
    assert f">{123 - TOP_LANGUAGES} more languages</text>" in langs and f">{rest:,} (" in langs
    assert render_html(_manifest(n_langs=5)).count("more languages") == 0


def test_values_show_their_share_of_the_documents_read_and_languages_of_the_kept():
    m = _manifest()
    read, kept = m["counts"]["read"], m["counts"]["kept"]
    page = render_html(m)
    assert f">100 ({100 / read:.1%})</text>" in page  # the duplicates' bar: a share of the documents read
    # the funnel: the stage's output as a share of the documents read, and what it dropped
    assert f">{kept:,} ({kept / read:.1%}), dropped {read - kept:,}</text>" in page
    langs = page[page.index("<h2>Languages kept</h2>"):page.index("<h2>Inputs</h2>")]
    assert f">1,000 ({1000 / kept:.1%})</text>" in langs  # l000 keeps 1,000: a share of the documents kept


def test_the_funnel_has_one_bar_per_stage():
    m = _manifest()
    m["funnel"] = [{"stage": "read", "in": 100, "dropped": 2, "out": 98},
                   {"stage": "extract", "in": 98, "dropped": 0, "out": 98},
                   {"stage": "langid", "in": 98, "dropped": 48, "out": 50}]
    m["counts"]["read"] = 100
    funnel = _between(render_html(m), "Funnel", "Clean steps")
    labels = re.findall(r'text-anchor="end" font-size="12">([^<]*)</text>', funnel)
    assert labels == ["read", "extract", "langid"]  # one row each: no separate "read" bar before "after read"
    assert "after " not in funnel
    assert ">98 (98.0%), dropped 2</text>" in funnel and ">98 (98.0%)</text>" in funnel
    assert ">50 (50.0%), dropped 48</text>" in funnel


def test_the_inputs_table_is_bounded_with_errors_first_and_totals():
    m = _manifest(n_inputs=2000)
    table = render_html(m).split("<h2>Inputs</h2>")[1]
    rows = table.count("<tr>") - 1  # the header
    assert rows == TOP_INPUTS + 2  # the files shown, one row for the rest, the totals
    assert table.index("part-00007") < table.index("part-01999")  # the error first, then the largest
    assert "truncated gzip stream" in table
    assert f"… {2000 - TOP_INPUTS:,} more files" in table
    assert f"all 2,000 files</b></td><td><b></b></td><td><b>{sum(f['size'] for f in m['inputs']):,}" in table
    small = render_html(_manifest(n_inputs=3)).split("<h2>Inputs</h2>")[1]
    assert small.count("<tr>") - 1 == 3 + 1 and "more files" not in small
