"""report.html as a reader sees it: headless Chromium renders the demo corpus's report (and a refresh's:
tests/test_refresh.py) and every section is on the rendered page with its content; the report's data in
the manifest adds up to the run's counts.

Chromium is a test prerequisite (`make test` installs it: the Makefile's `chromium` target). Without it
these tests are skipped when run by hand, and fail under `make test` or CI (GRISTMILL_REQUIRE_CHROMIUM, CI)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gristmill.pipelines.report import SAMPLES_PER_REASON, SECTIONS, SNIPPET_CHARS

pytestmark = pytest.mark.slow


def chromium() -> str:
    """The Chromium binary; a skip where it is missing, a failure where it must be there."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    why = "chromium is not installed: `apt-get install -y chromium` (make test does it when run as root)"
    if os.environ.get("GRISTMILL_REQUIRE_CHROMIUM") or os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
         *args, page.resolve().as_uri()], capture_output=True, text=True, timeout=120, check=True)


def rendered(page: Path, tmp_path: Path) -> str:
    """The page's DOM after Chromium rendered it."""
    return _chromium(page, tmp_path / "chromium-profile", "--dump-dom").stdout


def check_rendered_report(page: Path, tmp_path: Path, manifest: dict) -> str:
    """Every section of report.html in Chromium's DOM, each with its content; returns the DOM."""
    dom = rendered(page, tmp_path)
    assert dom.count("<section id=") == len(SECTIONS)
    for anchor, title in SECTIONS:
        m = re.search(rf'<section id="{anchor}">\s*<h2>{re.escape(title)}</h2>(.*?)</section>', dom, re.S)
        assert m, f"section {anchor} ({title}) is not on the rendered page"
        body = m.group(1)
        assert "(not recorded in this manifest)" not in body, anchor
        assert "<svg" in body or "<table" in body or "<details" in body, f"section {anchor} is empty"
        assert f'href="#{anchor}"' in dom  # the contents line links to it
    c = manifest["counts"]
    examples = re.search(r'<section id="examples">(.*?)</section>', dom, re.S).group(1)
    for reason in c["dropped"]:  # every rule that dropped something shows examples of it
        assert f"<code>{reason}</code>: {c['dropped'][reason]:,} dropped" in examples
    assert "<script" not in dom.lower()
    return dom


def check_report_data(manifest: dict) -> None:
    """What the pipeline collected for the report adds up to the run's own counts."""
    c, rep = manifest["counts"], manifest["report"]
    dropped = sum(c["dropped"].values())
    assert set(rep["dropped_examples"]) == set(c["dropped"])
    for reason, examples in rep["dropped_examples"].items():
        assert 1 <= len(examples) <= min(SAMPLES_PER_REASON, c["dropped"][reason])
        assert all(len(e["snippet"]) <= SNIPPET_CHARS for e in examples)
    per_reason: dict[str, int] = {}
    for by_reason in rep["dropped_by_language"].values():
        for reason, n in by_reason.items():
            per_reason[reason] = per_reason.get(reason, 0) + n
    assert per_reason == c["dropped"]
    for lang, by_reason in rep["dropped_by_language"].items():
        if lang:
            assert sum(by_reason.values()) == manifest["languages"][lang]["dropped"]
    assert sum(rep["length_chars"]["kept"]) == c["kept"] and sum(rep["length_chars"]["dropped"]) == dropped
    assert sum(rep["lang_score"]["kept"]) == c["kept"]
    assert sum(b["clusters"] for b in rep["near_dup_clusters"]["sizes"]) == manifest["near_dedup"]["clusters"]
    assert sum(f["kept"] for f in manifest["inputs"]) == c["kept"]
    assert sum(f["kept"] + f["dropped"] for f in manifest["inputs"]) == c["read"]


def test_demo_report_in_chromium(demo_corpus, tmp_path):
    manifest = json.loads((demo_corpus / "manifest.json").read_text())
    check_report_data(manifest)
    dom = check_rendered_report(demo_corpus / "report.html", tmp_path, manifest)
    # the funnel: one bar per stage, no "read" and "after read"
    funnel = re.search(r'<section id="funnel">(.*?)</section>', dom, re.S).group(1)
    labels = re.findall(r'text-anchor="end" font-size="12">([^<]*)</text>', funnel)
    assert labels == [row["stage"] for row in manifest["funnel"]]
    # the demo's sample crawl has near duplicates: the largest cluster is listed with its members
    largest = manifest["report"]["near_dup_clusters"]["largest"]
    assert largest and largest[0]["cluster_id"] in re.search(r'<section id="clusters">(.*?)</section>', dom,
                                                              re.S).group(1)
    # the clean steps: what each step dropped is the funnel's drop at that stage (fixed language-ID threshold)
    funnel_drops = {row["stage"]: row["dropped"] for row in manifest["funnel"]}
    for step in manifest["clean_steps"]:
        assert step["dropped"] == funnel_drops.get(step["step"], 0), step
    # and the time each took: in the manifest's timings (as in run.json) and on the page
    run = json.loads((demo_corpus / "run.json").read_text())
    timed = manifest["timings"]["clean_steps"]
    assert [s["step"] for s in timed] == [s["step"] for s in manifest["clean_steps"]]
    assert timed == [{"step": s["step"], "seconds": s["seconds"]} for s in run["clean_steps"]]
    assert all(isinstance(s["seconds"], float) and s["seconds"] >= 0 for s in timed)  # a state, not a speed
    steps_section = re.search(r'<section id="clean-steps">(.*?)</section>', dom, re.S).group(1)
    assert "µs per document" in steps_section
    for s in timed:  # the seconds cell follows documents in, dropped and dropped %
        row = rf"<code>{s['step']}</code></td>(<td>[^<]*</td>){{3}}<td>(<!--timing-->)?{s['seconds']:.2f}<"
        assert re.search(row, steps_section, re.S), s


def test_clean_step_drops_add_up_to_the_cleaning_stages(demo_corpus):
    manifest = json.loads((demo_corpus / "manifest.json").read_text())
    by_stage: dict[str, int] = {}
    for reason, n in manifest["counts"]["dropped"].items():
        by_stage[reason.split(":", 1)[0]] = by_stage.get(reason.split(":", 1)[0], 0) + n
    steps = {s["step"]: s for s in manifest["clean_steps"]}
    assert {k: s["dropped"] for k, s in steps.items() if s["dropped"]} == {
        k: n for k, n in by_stage.items() if k in steps}
    assert steps["normalize"]["documents"] == manifest["funnel"][1]["out"]  # every document the readers gave
