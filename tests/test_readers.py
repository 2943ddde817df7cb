"""Readers on real files and on every kind of damaged input: nothing stops, nothing is lost uncounted."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from gristmill.config import ReadConfig
from gristmill.pipelines.readers import FileStats, InputError, detect_format, probe, read_file

from . import badinputs
from .conftest import SAMPLE, shared


def read_all(path, cfg=None):
    out = list(read_file(str(path), path.name, cfg or ReadConfig()))
    stats = out[-1]
    assert isinstance(stats, FileStats)
    docs = out[:-1]
    assert stats.documents == len(docs), "every document read is counted"
    return docs, stats


def reasons(docs):
    return Counter(d["reason"] for d in docs)


def test_formats_from_names():
    assert detect_format("a/b.warc.gz") == ("warc", "gzip")
    assert detect_format("x.warc.wet.gz") == ("warc", "gzip")
    assert detect_format("x.jsonl.zst") == ("jsonl", "zstd")
    assert detect_format("x.parquet") == ("parquet", None)
    with pytest.raises(InputError, match="unknown input format"):
        detect_format("x.csv")


def test_common_crawl_warc():
    docs, stats = read_all(SAMPLE / "cc-main-2020-34-excerpt.warc.gz")
    assert stats.documents == 16 and stats.skipped_records == {"metadata": 16, "request": 17, "warcinfo": 1}
    assert stats.sha256 == hashlib.sha256((SAMPLE / "cc-main-2020-34-excerpt.warc.gz").read_bytes()).hexdigest()
    kept = [d for d in docs if not d["reason"]]
    assert len(kept) >= 12
    d = kept[0]
    assert len(d["id"]) == 36 and d["url"].startswith("http") and d["crawl_date"].startswith("2020-08-08")
    assert all("<html" not in d["text"].lower() for d in kept)


def test_wet_conversion_record():
    docs, stats = read_all(SAMPLE / "cc-main-2024-22-whirlwind.warc.wet.gz")
    assert len(docs) == 1 and "Escopete" in docs[0]["text"]
    assert docs[0]["url"] == "https://an.wikipedia.org/wiki/Escopete"


def test_wget_warc_with_resource_records_and_angle_bracket_urls():
    docs, stats = read_all(SAMPLE / "wget-2024-04-25.warc.gz")
    assert stats.documents == 24  # 22 responses + 2 resource records (wget's log and manifest)
    assert reasons(docs)["extract:not_html"] == 2
    assert all(not (d["url"] or "").startswith("<") for d in docs)


def test_jsonl_gz_with_nested_url_and_parquet_and_zstd():
    docs, _ = read_all(SAMPLE / "dolma-cc-main-2019-30.jsonl.gz")
    assert len(docs) == 697 and docs[0]["url"] == "16thfleet.wikidot.com/chatter:anewhome" and docs[0]["crawl_date"]
    docs, _ = read_all(SAMPLE / "ccnet-cc-main-2020-16.parquet")
    assert len(docs) == 20 and all(d["url"] for d in docs)
    docs, _ = read_all(SAMPLE / "oscar-2019-multilingual.jsonl.zst")
    assert len(docs) == 649 and docs[0]["id"].startswith("oscar2019/")


def test_jsonl_field_names_are_configurable(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"doc": {"key": "k1", "body": "hello there"}, "link": "http://x.example"}\n')
    cfg = ReadConfig(jsonl={"id_field": "doc.key", "text_field": "doc.body", "url_field": "link"})
    docs, _ = read_all(p, cfg)
    assert (docs[0]["id"], docs[0]["text"], docs[0]["url"]) == ("k1", "hello there", "http://x.example")


# --- damaged input -------------------------------------------------------------------------------


def test_gzip_corrupt_mid_file_keeps_the_records_before_and_quarantines_the_rest(tmp_path):
    docs, stats = read_all(badinputs.corrupt_gzip_mid_file(tmp_path / "c.warc.gz"))
    assert stats.error.startswith("stopped after 5 documents") and "decompressing" in stats.error
    r = reasons(docs)
    assert r["read:corrupt_file"] == 1
    assert 0 < len(docs) - 1 < 16  # some documents before the damage were read


def test_truncated_gzip(tmp_path):
    docs, stats = read_all(badinputs.truncated_gzip(tmp_path / "t.warc.gz"))
    assert reasons(docs)["read:corrupt_file"] == 1
    assert "EOFError" in stats.error


def test_truncated_warc_record(tmp_path):
    docs, stats = read_all(badinputs.truncated_warc_record(tmp_path / "t.warc"))
    assert reasons(docs)["read:truncated_record"] == 1
    assert stats.error is None


def test_non_html_payloads_and_redirects_and_huge_html(tmp_path):
    docs, _ = read_all(badinputs.mixed_payload_warc(tmp_path / "m.warc.gz", big_html_bytes=50 * 2**20))
    r = reasons(docs)
    assert r[None] == 1 and "old mill" in [d for d in docs if not d["reason"]][0]["text"]
    assert r["extract:not_html"] == 2  # PNG, PDF
    assert r["extract:http_status"] == 1  # 301
    assert r["read:too_large"] == 1  # 50 MB page, dropped before parsing


def test_hostile_jsonl(tmp_path):
    docs, stats = read_all(badinputs.hostile_jsonl(tmp_path / "h.jsonl"))
    by_id = {d["id"]: d for d in docs}
    assert len(docs) == 10
    assert "\ufffd" in by_id["bad-utf8"]["text"] and not by_id["bad-utf8"]["reason"]  # kept, repaired
    assert "\x00" in by_id["nul"]["text"]  # the cleaner removes it (see test_clean)
    assert by_id["h.jsonl#5"]["reason"] == "read:too_large"  # not even parsed: the id is positional
    assert by_id["no-text"]["reason"] == "read:no_text_field"
    r = reasons(docs)
    assert r["read:invalid_json"] == 1 and r["read:not_an_object"] == 1


def test_zero_length_file(tmp_path):
    for name in ("z.warc.gz", "z.jsonl", "z.parquet"):
        docs, stats = read_all(badinputs.zero_length(tmp_path / name))
        assert docs == [] and stats.size == 0 and stats.error is None


# --- up-front probe ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "builder,name,problem",
    [
        (badinputs.not_a_warc, "n.warc.gz", "not a WARC file"),
        (badinputs.not_gzip, "n.warc.gz", "not gzip-compressed"),
        (lambda p: (p.write_bytes(b"hello"), p)[1], "n.parquet", "not a Parquet file"),
        (lambda p: (p.write_bytes(b"id,text\n1,hello\n"), p)[1], "n.jsonl", "not JSON Lines"),
    ],
)
def test_probe_names_the_problem(tmp_path, builder, name, problem):
    path = builder(tmp_path / name)
    size, found = probe(str(path), ReadConfig())
    assert found and problem in found


def test_probe_accepts_every_sample_file():
    for p in SAMPLE.iterdir():
        assert probe(str(p), ReadConfig())[1] is None, p


def test_probe_accepts_shared_web_files():
    for name in ("resiliparse_CC-MAIN-2020-34_excerpt.warc.gz", "dolma_wget_sample-0001.warc.gz",
                 "oscar2019_hf_dummy_multilingual.jsonl"):
        assert probe(str(shared(f"web/{name}")), ReadConfig())[1] is None


def test_a_byte_order_mark_does_not_cost_the_first_jsonl_document(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "the first document"}\n{"text": "the second"}\n')
    docs, _ = read_all(path)
    assert [d["text"] for d in docs] == ["the first document", "the second"] and reasons(docs) == {None: 2}


def test_a_binary_parquet_text_column_is_read_as_utf8(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "binary.parquet"
    pq.write_table(pa.table({"text": pa.array(["Grüße aus der Mühle".encode(), b"bad \xff byte"], pa.binary())}),
                   path)
    docs, _ = read_all(path)
    assert [d["text"] for d in docs] == ["Grüße aus der Mühle", "bad \ufffd byte"] and reasons(docs) == {None: 2}


def test_a_file_with_glob_characters_in_its_name_is_read_as_named(tmp_path):
    from gristmill.pipelines.corpus import plan_inputs

    crawl = tmp_path / "crawl"
    crawl.mkdir()
    named = crawl / "brack[1].jsonl"
    named.write_text('{"text": "x"}\n')
    (crawl / "brack1.jsonl").write_text('{"text": "y"}\n')  # what the glob [1] would match instead
    plan = plan_inputs([str(named)], ReadConfig(), progress=False)
    assert [p for p, _ in plan.files] == [str(named)]
