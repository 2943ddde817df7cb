"""Run report: the funnel and language tables on the terminal, and a self-contained HTML page
(inline SVG bar charts, no scripts or downloads) next to the manifest.

What the page shows beyond the counts is collected by the corpus pipeline itself, bounded whatever
the crawl's size (the Beam side is in pipelines/corpus.py; the pure functions are here):

- counter keys per document (:func:`report_keys`): kept/dropped per input file, drops per language
  and rule, fixed-bucket histograms of document length and language score (kept vs dropped) and of
  near-duplicate cluster sizes: counted like the funnel, one number per key;
- a few dropped documents per rule (:func:`sample_entry`): the ``SAMPLES_PER_REASON`` with the
  smallest hash of (reason, id, source): a deterministic sample (``Top.SmallestPerKey``), reduced
  to a short snippet with e-mail and IP addresses and URL credentials redacted (:func:`finish_samples`);
- the largest near-duplicate clusters with a few of their URLs (:func:`cluster_member`).

:func:`report_entry` turns them into the manifest's ``report`` section; the page is a pure function
of the manifest (:func:`render_html`).
"""

from __future__ import annotations

import bisect
import hashlib
import html
import re

from gristmill import io
from gristmill.secrets import redact_text

# ---------------------------------------------------------------------------------------------
# What the pipeline collects (pure functions: pipelines/corpus.py applies them in Beam)
# ---------------------------------------------------------------------------------------------

#: dropped documents kept as examples per drop reason, their snippet's length in characters
SAMPLES_PER_REASON = 3
SNIPPET_CHARS = 200
#: near-duplicate clusters listed with example URLs, and URLs per cluster (the kept one first)
LARGEST_CLUSTERS = 10
CLUSTER_URLS = 4
#: histogram bucket lower edges: document length in characters (1-2-5 steps), language score (0.05 steps)
LENGTH_EDGES = (0, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000)
SCORE_BUCKETS = 20
#: cluster sizes: 2, 3, 4, then powers of two (5-8, 9-16, ...)
CLUSTER_EDGES = (2, 3, 4, 5, 9, 17, 33, 65, 129, 257, 513, 1025, 2049, 4097)

#: the counter kinds of :func:`report_keys` (the part of a key before the first NUL)
COUNT_KINDS = ("file", "lang_rule", "length", "score", "cluster")

#: the signal (or document field) that each rule measured when it dropped a document
MEASURED = {
    "gopher_quality:short_doc": "n_words",
    "gopher_quality:long_doc": "n_words",
    "gopher_quality:mean_word_length_low": "mean_word_length",
    "gopher_quality:mean_word_length_high": "mean_word_length",
    "gopher_quality:alpha_words_low": "alpha_words_frac",
    "gopher_quality:too_few_stop_words": "stop_words",
    "gopher_repetition:dup_para_frac": "dup_para_frac",
    "gopher_repetition:dup_line_frac": "dup_line_frac",
    "c4_lines:no_lines_left": "c4_lines_removed_frac",
    "c4_lines:too_few_sentences": "c4_lines_removed_frac",
    "fineweb_quality:line_punct_ratio": "line_punct_frac",
    "fineweb_quality:short_line_ratio": "short_line_frac",
    "fineweb_quality:char_dup_ratio": "dup_line_char_frac",
    "fineweb_quality:list_ratio": "newlines_per_word",
    "langid:low_score": "lang_score",
    "langid:not_kept": "lang_score",
    "quality:low_score": "quality_score",
    "near_dedup:duplicate": "cluster_size",
    "near_dedup:published_duplicate": "cluster_size",
}
_DOC_FIELDS = ("lang_score", "cluster_size")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")


def length_bucket(n_chars: int) -> int:
    """The lower edge of the length bucket of a document of ``n_chars`` characters."""
    return LENGTH_EDGES[bisect.bisect_right(LENGTH_EDGES, n_chars) - 1]


def score_bucket(score: float) -> int:
    """The bucket (0 .. SCORE_BUCKETS-1) of a language score in [0, 1]; 1.0 is in the last."""
    return min(SCORE_BUCKETS - 1, max(0, int(score * SCORE_BUCKETS)))


def cluster_bucket(size: int) -> int:
    """The lower edge of the bucket of a near-duplicate cluster of ``size`` (≥ 2) documents."""
    return CLUSTER_EDGES[max(0, bisect.bisect_right(CLUSTER_EDGES, size) - 1)]


def report_keys(doc: dict):
    """The report's counter keys of a document in its final state (kept, or dropped with its reason):
    its input file's kept/dropped, its language and rule when dropped, its length and language-score
    buckets, and for the kept member of a near-duplicate cluster the cluster's size bucket."""
    state = "dropped" if doc["reason"] else "kept"
    yield f"file\x00{state}\x00{doc['source']}"
    if doc["reason"]:
        yield f"lang_rule\x00{doc.get('lang') or ''}\x00{doc['reason']}"
    yield f"length\x00{state}\x00{length_bucket(len(doc.get('text') or ''))}"
    if doc.get("lang") and doc.get("lang_score") is not None:
        yield f"score\x00{state}\x00{score_bucket(doc['lang_score'])}"
    if not doc["reason"] and (doc.get("cluster_size") or 1) > 1:
        yield f"cluster\x00{cluster_bucket(doc['cluster_size'])}"


def _clean_string(text: str) -> str:
    """Text fit for JSON and HTML: no control characters, no lone surrogates."""
    return _CONTROL.sub("\ufffd", text).encode("utf-8", "replace").decode("utf-8")


def measured_value(doc: dict) -> dict | None:
    """``{"name", "value"}``: what the rule that dropped ``doc`` measured (:data:`MEASURED`), or None
    where the rule records no number (then the report shows the drop's ``detail``)."""
    name = MEASURED.get(doc.get("reason") or "")
    if name is None:
        return None
    value = doc.get(name) if name in _DOC_FIELDS else (doc.get("signals") or {}).get(name)
    return None if value is None else {"name": name, "value": value}


def sample_rank(doc: dict) -> str:
    """A document's place in its reason's sample: a hash, so the sample is spread over the crawl and the
    same whatever the runner or the order documents arrive in."""
    key = f"{doc['reason']}\x00{doc['id']}\x00{doc['source']}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=8).hexdigest()


def sample_entry(doc: dict) -> tuple[str, tuple]:
    """(reason, (rank, example)) of a dropped document; the example's text is cut to twice the
    snippet's length here (what travels to the sample), redacted and cut again in :func:`finish_samples`."""
    text = doc.get("text") or ""
    example = {"id": doc["id"], "source": doc["source"], "url": doc.get("url"), "lang": doc.get("lang"),
               "measured": measured_value(doc), "detail": (doc.get("detail") or "")[:2 * SNIPPET_CHARS] or None,
               "chars": len(text), "text": text[:2 * SNIPPET_CHARS]}
    return doc["reason"], (sample_rank(doc), doc["id"], doc["source"], example)


def sample_order(value: tuple) -> tuple:
    return value[:3]


def snippet(text: str, pii=None, limit: int = SNIPPET_CHARS) -> str:
    """A short, single-line, redacted excerpt: e-mail and public IP addresses replaced as the published
    text's are (``pii``: the run's ``clean.pii`` settings; redacted whether or not the run redacts its
    corpus), URL passwords and known secrets as in logs, then cut to ``limit`` characters."""
    from gristmill.config import PiiConfig
    from gristmill.pipelines.filters import redact_pii

    cfg = (pii or PiiConfig()).model_copy(update={"emails": True, "ip_addresses": True})
    text = redact_text(redact_pii(_SPACES.sub(" ", text), cfg).text).strip()
    text = _clean_string(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def finish_samples(item: tuple, pii=None) -> tuple[str, list[dict]]:
    """(reason, [(rank, id, source, example)...]) → (reason, examples) in rank order, each with its
    snippet instead of its text, and its id, URL and detail made safe to publish."""
    reason, values = item
    out = []
    for rank, _, _, ex in sorted(values, key=sample_order):
        ex = dict(ex)
        ex["snippet"] = snippet(ex.pop("text"), pii)
        ex["rank"] = rank
        for k in ("id", "source", "url", "lang"):
            if ex.get(k) is not None:
                ex[k] = _clean_string(redact_text(str(ex[k])))
        if ex.get("detail"):
            ex["detail"] = snippet(ex["detail"], pii, 120)
        out.append(ex)
    return reason, out


def cluster_member(doc: dict) -> tuple[str, tuple]:
    """(cluster id, (order, size, id, url)) of a document in a near-duplicate cluster: the kept
    member first, then the others in hash order."""
    order = (1 if doc["reason"] else 0, sample_rank({**doc, "reason": "cluster"}), doc["id"], doc["source"])
    url = _clean_string(redact_text(doc["url"])) if doc.get("url") else None
    return doc["cluster_id"], (order, doc["cluster_size"], _clean_string(redact_text(doc["id"])), url)


def in_cluster(doc: dict) -> bool:
    return (doc.get("cluster_size") or 1) > 1


def member_order(value: tuple) -> tuple:
    return value[0]


def cluster_summary(item: tuple) -> dict:
    """(cluster id, its first members) → {cluster_id, size, urls}."""
    cluster_id, members = item
    members = sorted(members, key=member_order)
    return {"cluster_id": _clean_string(redact_text(cluster_id)), "size": max(m[1] for m in members),
            "members": [{"id": m[2], "url": m[3]} for m in members]}


def cluster_order(entry: dict) -> tuple:
    """Largest first, then by cluster id (for ``Top.Smallest``)."""
    return -entry["size"], entry["cluster_id"]


def merge_samples(*parts: list) -> dict[str, list[dict]]:
    """Per reason the examples of every pipeline of a run ((reason, examples) entries), the
    ``SAMPLES_PER_REASON`` of smallest rank, without their rank."""
    by_reason: dict[str, list[dict]] = {}
    for part in parts:
        for reason, examples in part:
            by_reason.setdefault(reason, []).extend(examples)
    return {reason: [{k: v for k, v in ex.items() if k != "rank"}
                     for ex in sorted(exs, key=lambda e: (e["rank"], e["id"], e["source"]))[:SAMPLES_PER_REASON]]
            for reason, exs in sorted(by_reason.items())}


def _histogram(counts: dict[str, int], kind: str, edges: list) -> dict:
    kept = [counts.get(f"{kind}\x00kept\x00{e}", 0) for e in edges]
    dropped = [counts.get(f"{kind}\x00dropped\x00{e}", 0) for e in edges]
    return {"kept": kept, "dropped": dropped}


def report_entry(counts: dict[str, int], samples: dict[str, list[dict]], clusters: list[dict]) -> dict:
    """The manifest's ``report`` section from the counters of :func:`report_keys` (``counts``: key →
    documents; other keys ignored), the merged samples and the largest clusters."""
    by_lang: dict[str, dict[str, int]] = {}
    for key, n in counts.items():
        kind, _, rest = key.partition("\x00")
        if kind == "lang_rule":
            lang, _, reason = rest.partition("\x00")
            by_lang.setdefault(lang, {})[reason] = n
    sizes = [{"from": e, "to": (CLUSTER_EDGES[i + 1] - 1 if i + 1 < len(CLUSTER_EDGES) else None),
              "clusters": counts.get(f"cluster\x00{e}", 0)} for i, e in enumerate(CLUSTER_EDGES)]
    while sizes and not sizes[-1]["clusters"]:
        sizes.pop()
    length = {"edges": list(LENGTH_EDGES), **_histogram(counts, "length", list(LENGTH_EDGES))}
    score = {"edges": [round(i / SCORE_BUCKETS, 4) for i in range(SCORE_BUCKETS)],
             **_histogram(counts, "score", list(range(SCORE_BUCKETS)))}
    return {
        "dropped_examples": samples,
        "dropped_by_language": {lang: dict(sorted(v.items())) for lang, v in sorted(by_lang.items())},
        "length_chars": length,
        "lang_score": score,
        "near_dup_clusters": {"sizes": sizes, "largest": sorted(clusters, key=cluster_order)[:LARGEST_CLUSTERS]},
    }


def file_counts(counts: dict[str, int], source: str) -> tuple[int, int]:
    """(kept, dropped) of one input file from :func:`report_keys`' counters."""
    return counts.get(f"file\x00kept\x00{source}", 0), counts.get(f"file\x00dropped\x00{source}", 0)


def clean_steps(per_file: list[dict], order: tuple[str, ...] = ()) -> list[dict]:
    """The clean steps of a run from each file's ``{step: [documents, dropped, seconds]}``: per step
    the documents it ran on, dropped, and seconds (summed over the files; the time a step took,
    in the run that cleaned the file: a rerun reuses the cleaned files of a crashed one), in
    ``order`` (the chain's: ``clean.step_order(cfg)``; a step not in it last, by name)."""
    total: dict[str, list] = {}
    for steps in per_file:
        for step, (n, dropped, seconds) in steps.items():
            acc = total.setdefault(step, [0, 0, 0.0])
            acc[0] += n
            acc[1] += dropped
            acc[2] += seconds
    rank = {s: i for i, s in enumerate(order)}
    return [{"step": step, "documents": n, "dropped": d, "seconds": round(sec, 3)}
            for step, (n, d, sec) in sorted(total.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))]


def print_summary(manifest: dict, seconds: float | None = None, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=False)
    c = manifest["counts"]
    t = Table(title="funnel", title_justify="left")
    for col in ("stage", "in", "dropped", "out"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for row in manifest["funnel"]:
        t.add_row(row["stage"], f"{row['in']:,}", f"{row['dropped']:,}", f"{row['out']:,}")
    t.add_row("[b]kept[/b]", "", "", f"[b]{c['kept']:,}[/b]")
    console.print(t)

    reasons = Table(title="dropped by reason", title_justify="left")
    reasons.add_column("reason")
    reasons.add_column("documents", justify="right")
    for reason, n in sorted(c["dropped"].items(), key=lambda kv: -kv[1]):
        reasons.add_row(reason, f"{n:,}")
    console.print(reasons)

    langs = Table(title="languages", title_justify="left")
    for col in ("lang", "kept", "dropped after lid"):
        langs.add_column(col, justify="left" if col == "lang" else "right")
    items = list(manifest["languages"].items())
    for lang, v in items[:15]:
        langs.add_row(lang, f"{v['kept']:,}", f"{v['dropped']:,}")
    if len(items) > 15:
        rest_k = sum(v["kept"] for _, v in items[15:])
        rest_d = sum(v["dropped"] for _, v in items[15:])
        langs.add_row(f"({len(items) - 15} more)", f"{rest_k:,}", f"{rest_d:,}")
    console.print(langs)
    balance = c["kept"] + sum(c["dropped"].values())
    line = (
        f"read {c['read']:,} = kept {c['kept']:,} + dropped {sum(c['dropped'].values()):,}"
        f"  [{'green' if balance == c['read'] else 'red'}]{'balanced' if balance == c['read'] else 'UNBALANCED'}[/]"
        f"   shards: {len(manifest['shards'])}"
    )
    if seconds is not None:
        line += f"   {seconds:.1f} s"
    console.print(line)


#: the report's tables stay readable for a crawl of 90,000 files and 170 languages
TOP_LANGUAGES = 30
TOP_INPUTS = 50


def _bars(rows: list[tuple[str, int, str]], total: int, width: int = 520) -> str:
    """Horizontal bar chart as inline SVG; rows are (label, value, colour), each value also as a
    share of ``total`` (the documents read). The label column is as wide as the longest label."""
    if not rows:
        return "<p>(none)</p>"
    top = max(v for _, v, _ in rows) or 1
    h = 22
    label_w = 12 + int(7.2 * max(len(label) for label, _, _ in rows))  # ~7 px per character at 12 px
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 130}" height="{h * len(rows) + 6}">']
    for i, (label, v, colour) in enumerate(rows):
        y = i * h + 3
        w = max(1, int(width * v / top)) if v else 0
        share = f" ({v / total:.1%})" if total else ""
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">{html.escape(label)}</text>')
        out.append(f'<rect x="{label_w}" y="{y}" width="{w}" height="{h - 5}" fill="{colour}"/>')
        out.append(f'<text x="{label_w + w + 4}" y="{y + 15}" font-size="12">{v:,}{share}</text>')
    out.append("</svg>")
    return "".join(out)


def _language_rows(languages: dict) -> list[tuple[str, int, str]]:
    kept = sorted(((lang, v["kept"]) for lang, v in languages.items() if v["kept"]), key=lambda kv: (-kv[1], kv[0]))
    rows = [(lang, n, "#54a24b") for lang, n in kept[:TOP_LANGUAGES]]
    if len(kept) > TOP_LANGUAGES:
        rest = kept[TOP_LANGUAGES:]
        rows.append((f"{len(rest)} more languages", sum(n for _, n in rest), "#a0a0a0"))
    return rows


def _inputs_table(inputs: list[dict]) -> str:
    """Files that stopped with an error first, then the largest: at most TOP_INPUTS rows, then the
    rest as one row, then the totals."""
    chosen = sorted(inputs, key=lambda f: (not f["error"], -f["size"], f["source"]))[:TOP_INPUTS]
    shown = {id(f) for f in chosen}
    rest = [f for f in inputs if id(f) not in shown]

    def row(name: str, fmt: str, size: int, docs: int, error: str, files: list[dict], bold: bool = False) -> str:
        kept = sum(f.get("kept", 0) for f in files)
        dropped = sum(f.get("dropped", 0) for f in files)
        known = all("kept" in f for f in files)  # a manifest from before per-file counts: blank
        cells = [html.escape(name), html.escape(fmt), f"{size:,}", f"{docs:,}",
                 f"{kept:,}" if known else "", f"{dropped:,}" if known else "",
                 _share_bar(kept, kept + dropped) if known else "", html.escape(error)]
        tag = ("<td><b>", "</b></td>") if bold else ("<td>", "</td>")
        return "<tr>" + "".join(f"{tag[0]}{c}{tag[1]}" for c in cells) + "</tr>"

    rows = [row(f["source"], f["format"], f["size"], f["documents"], f["error"] or "", [f]) for f in chosen]
    if rest:
        errors = sum(1 for f in rest if f["error"])
        rows.append(row(f"… {len(rest):,} more files", "", sum(f["size"] for f in rest),
                        sum(f["documents"] for f in rest), f"{errors:,} with errors" if errors else "", rest))
    rows.append(row(f"all {len(inputs):,} files", "", sum(f["size"] for f in inputs),
                    sum(f["documents"] for f in inputs), "", inputs, bold=True))
    return "".join(rows)


def _quality_section(quality: dict | None) -> str:
    """Per language scored by the quality classifier: its cut and the score histogram (kept bins
    green, dropped bins red). Empty without the classifier: such a run's report is what it was."""
    if not quality:
        return ""
    keep, model = html.escape(quality["keep"].replace("_", " ")), html.escape(quality["model"])
    parts = [f"<h2>Quality classifier</h2><p>Keeping by {keep}; model <code>{model}</code> "
             f"(sha256 <code>{quality['model_sha256'][:12]}</code>).</p>"]
    langs = sorted(quality["languages"].items(), key=lambda kv: (-kv[1]["scored"], kv[0]))[:TOP_LANGUAGES]
    for lang, q in langs:
        parts.append(f"<h3>{html.escape(lang)}: kept {q['kept']:,} of {q['scored']:,} scored "
                     f"(cut: score ≥ {q['cut']:.4g})</h3>")
        rows = [(f"≥ {b['from']:.3g}", b["documents"], "#54a24b" if b["from"] >= q["cut"] else "#e45756")
                for b in q["histogram"]]
        parts.append(_bars(rows, q["scored"]))
    return "".join(parts)


def _langid_section(entry: dict | None) -> str:
    """The language-ID threshold of each language and how it was chosen (``langid.threshold: auto``
    or ``langid.per_language``); empty otherwise: such a run's report is what it was."""
    if not entry:
        return ""
    how = ("estimated per language from this run's scores: max(0.3, min(0.9, median − σ)), FineWeb-2's rule; "
           f"languages with fewer than {entry['min_documents']:,} documents keep {entry['fallback']}"
           if entry["threshold"] == "auto" else f"{entry['threshold']} unless set per language")
    rows = []
    for lang, e in sorted(entry["languages"].items(), key=lambda kv: (-kv[1].get("documents", 0), kv[0])):
        stats = (f"{e['documents']:,}", f"{e['median']:.3f}" if "median" in e else "",
                 f"{e['sigma']:.3f}" if "sigma" in e else "") if "documents" in e else ("", "", "")
        cells = (html.escape(lang), f"{e['threshold']:.3f}", html.escape(e["source"]), *stats)
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<h2>Language-ID thresholds</h2><p>{html.escape(how)}.</p><table><tr><th>language</th><th>threshold"
            "</th><th>source</th><th>documents scored</th><th>median</th><th>σ</th></tr>" + "".join(rows) + "</table>")


KEPT, DROPPED, STAGE = "#54a24b", "#e45756", "#4c78a8"
#: languages shown as columns of the drops-per-language table
TOP_DROP_LANGUAGES = 10


def _svg_bar(part: float, whole: float, width: int, fill: str, background: str, label: str | None = None) -> str:
    """A small inline bar: ``part`` of ``whole`` in ``fill`` over ``background``."""
    w = round(width * part / whole)
    aria = f' aria-label="{label}"' if label else ""
    return (f'<svg width="{width}" height="10"{aria}><rect width="{width}" height="10" fill="{background}"/>'
            f'<rect width="{w}" height="10" fill="{fill}"/></svg>')


def _share_bar(part: int, whole: int, width: int = 80) -> str:
    """The kept share of a file's documents (green) against the dropped (red)."""
    return _svg_bar(part, whole, width, KEPT, DROPPED, f"{part / whole:.0%} kept") if whole else ""


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{title}</h2>{body}</section>\n'


def _funnel(manifest: dict) -> str:
    """One bar per stage: its length the documents that reached the stage, green what it let
    through, red what it dropped; the text: through (share of read) and dropped."""
    read = manifest["counts"]["read"]
    rows = manifest["funnel"]
    if not rows:
        return "<p>(none)</p>"
    width, h = 520, 22
    label_w = 12 + int(7.2 * max(len(r["stage"]) for r in rows))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 260}" height="{h * len(rows) + 6}">']
    for i, r in enumerate(rows):
        y = i * h + 3
        w_in = round(width * r["in"] / read) if read else 0
        w_out = round(width * r["out"] / read) if read else 0
        share = f" ({r['out'] / read:.1%})" if read else ""
        dropped = f", dropped {r['dropped']:,}" if r["dropped"] else ""
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">'
                   f'{html.escape(r["stage"])}</text>')
        out.append(f'<rect x="{label_w}" y="{y}" width="{max(w_in, 1 if r["in"] else 0)}" height="{h - 5}" '
                   f'fill="{DROPPED}"/>')
        out.append(f'<rect x="{label_w}" y="{y}" width="{w_out}" height="{h - 5}" fill="{STAGE}"/>')
        out.append(f'<text x="{label_w + w_in + 4}" y="{y + 15}" font-size="12">{r["out"]:,}{share}{dropped}</text>')
    out.append("</svg>")
    return "".join(out)


def _clean_steps(manifest: dict) -> str:
    steps = manifest.get("clean_steps")
    if steps is None:
        return "<p>(not recorded in this manifest)</p>"
    timings = manifest.get("timings")
    seconds = {t["step"]: t["seconds"] for t in timings["clean_steps"]} if timings else {}
    total = sum(seconds.values())
    head = "<th>step</th><th>documents in</th><th>dropped</th><th>dropped %</th>"
    head += "<th>seconds</th><th>share of time</th><th>µs per document</th>" if timings else ""
    rows = []
    for st in steps:
        n, d = st["documents"], st["dropped"]
        cells = [f"<code>{html.escape(st['step'])}</code>", f"{n:,}", f"{d:,}", f"{d / n:.1%}" if n else ""]
        if timings:
            sec = seconds.get(st["step"], 0.0)
            cells += [_timing(f"{sec:.2f}"), _timing(_share_bar_time(sec, total)),
                      _timing(f"{1e6 * sec / n:,.0f}" if n else "")]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    note = ("" if timings else "<p class=note>Time per step: not recorded (<code>write.timings: false</code>, "
            "or an older manifest); <code>clean_steps</code> in <code>run.json</code> has it.</p>")
    return (f"<p>The cleaning chain per document, in order: the documents each step ran on (rules that do "
            f"not apply to a language skip it), dropped, and the time each step took (summed over the "
            f"workers that cleaned the files).</p><table><tr>{head}</tr>{''.join(rows)}</table>{note}")


#: what marks a time on the page (the one part of it that differs between two runs of the same
#: input and config): :func:`without_timings` cuts these spans out
TIMING_OPEN, TIMING_CLOSE = "<!--timing-->", "<!--/timing-->"
_TIMING_SPAN = re.compile(re.escape(TIMING_OPEN) + ".*?" + re.escape(TIMING_CLOSE), re.S)


def _timing(text: str) -> str:
    return f"{TIMING_OPEN}{text}{TIMING_CLOSE}"


def without_timings(name: str, data: bytes) -> bytes:
    """A corpus output file as it would be without its timings, for comparing two runs byte for byte:
    ``manifest.json`` without its ``timings`` section, ``report.html`` without its marked times, any
    other file as it is. (Everything in a corpus directory but ``run.json`` and these is the same
    bytes for the same input and config; with ``write.timings: false`` these are too.)"""
    base = name.rsplit("/", 1)[-1]
    if base == "manifest.json":
        import json

        manifest = json.loads(data)
        manifest.pop("timings", None)
        return json.dumps(manifest, sort_keys=True).encode()
    if base == "report.html":
        return _TIMING_SPAN.sub("", data.decode()).encode()
    return data


def _share_bar_time(sec: float, total: float, width: int = 120) -> str:
    return f"{_svg_bar(sec, total, width, STAGE, '#eee')} {sec / total:.0%}" if total else ""


def _examples(manifest: dict) -> str:
    """Per drop reason (most documents first) a few of its documents: id, language, the rule's
    measured value or the drop's detail, a snippet (redacted, ≤ SNIPPET_CHARS characters)."""
    examples = (manifest.get("report") or {}).get("dropped_examples")
    if examples is None:
        return "<p>(not recorded in this manifest)</p>"
    dropped = manifest["counts"]["dropped"]
    parts = [f"<p>Up to {SAMPLES_PER_REASON} documents per reason, drawn by a hash of their id (the same ones "
             f"every run); snippets are the text as the rule saw it, cut to {SNIPPET_CHARS} characters, with e-mail "
             "and IP addresses redacted.</p>"]
    for i, reason in enumerate(sorted(examples, key=lambda r: (-dropped.get(r, 0), r))):
        rows = []
        for ex in examples[reason]:
            m = ex.get("measured")
            value = (f"{html.escape(m['name'])} = <b>{html.escape(str(m['value']))}</b>" if m
                     else html.escape(ex.get("detail") or ""))
            where = html.escape(ex["url"]) if ex.get("url") else html.escape(ex["source"])
            rows.append(f'<tr><td class=id><code>{html.escape(ex["id"])}</code><br><span class=src>{where}</span></td>'
                        f'<td>{html.escape(ex.get("lang") or "")}</td><td>{value}</td><td>{ex["chars"]:,}</td>'
                        f'<td class=snip>{html.escape(ex["snippet"]) or "<i>(empty)</i>"}</td></tr>')
        parts.append(f'<details{" open" if i < 3 else ""}><summary><code>{html.escape(reason)}</code>: '
                     f"{dropped.get(reason, 0):,} dropped</summary><table class=examples>{_EXAMPLE_COLUMNS}"
                     "<tr><th>document</th><th>lang</th><th>measured</th><th>chars</th><th>snippet</th></tr>"
                     + "".join(rows)
                     + "</table></details>")
    return "".join(parts)


_EXAMPLE_COLUMNS = ('<colgroup><col style="width:25%"><col style="width:5%"><col style="width:17%">'
                    '<col style="width:6%"><col style="width:47%"></colgroup>')


def _by_language(manifest: dict) -> str:
    """Drops per rule (rows) and language (columns: the languages with most drops, then the rest and
    the documents dropped before language ID), shaded by each rule's share."""
    table = (manifest.get("report") or {}).get("dropped_by_language")
    if table is None:
        return "<p>(not recorded in this manifest)</p>"
    if not table:
        return "<p>(none)</p>"
    lang_total = {lang: sum(v.values()) for lang, v in table.items()}
    langs = sorted((x for x in lang_total if x), key=lambda x: (-lang_total[x], x))
    shown, rest = langs[:TOP_DROP_LANGUAGES], langs[TOP_DROP_LANGUAGES:]
    reasons = sorted({r for v in table.values() for r in v},
                     key=lambda r: (-sum(v.get(r, 0) for v in table.values()), r))
    cols = [(html.escape(x), [x]) for x in shown]
    if rest:
        cols.append((f"{len(rest)} more", rest))
    if "" in table:
        cols.append(("no language", [""]))
    head = "".join(f"<th>{c}</th>" for c, _ in cols)
    rows = []
    for r in reasons:
        values = [sum(table.get(x, {}).get(r, 0) for x in members) for _, members in cols]
        top = max(values) or 1
        cells = "".join(f'<td style="background:rgba(228,87,86,{0.08 + 0.6 * v / top:.2f})">{v:,}</td>' if v
                        else "<td></td>" for v in values)
        rows.append(f"<tr><td><code>{html.escape(r)}</code></td>{cells}<td><b>{sum(values):,}</b></td></tr>")
    totals = "".join(f"<td><b>{sum(lang_total[x] for x in members):,}</b></td>" for _, members in cols)
    return (f'<div class=wide><table class=matrix><tr><th>reason</th>{head}<th>all</th></tr>{"".join(rows)}'
            f"<tr><td><b>all</b></td>{totals}<td><b>{sum(lang_total.values()):,}</b></td></tr></table></div>")


def _pair_bars(labels: list[str], kept: list[int], dropped: list[int], width: int = 360) -> str:
    """Two distributions side by side per bucket: each bar the bucket's share of its own series (kept
    in green, dropped in red), so that their shapes compare; the text gives the documents."""
    last = max((i for i, (k, d) in enumerate(zip(kept, dropped)) if k or d), default=-1)
    first = min((i for i, (k, d) in enumerate(zip(kept, dropped)) if k or d), default=0)
    if last < 0:
        return "<p>(none)</p>"
    tk, td = sum(kept) or 1, sum(dropped) or 1
    top = max(max(k / tk for k in kept), max(d / td for d in dropped)) or 1
    h, label_w = 26, 12 + int(7.2 * max(len(x) for x in labels))
    rows = range(first, last + 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 200}" height="{h * len(rows) + 24}">',
           f'<rect x="{label_w}" y="2" width="10" height="10" fill="{KEPT}"/><text x="{label_w + 14}" y="11" '
           f'font-size="11">kept ({sum(kept):,})</text><rect x="{label_w + 120}" y="2" width="10" height="10" '
           f'fill="{DROPPED}"/><text x="{label_w + 134}" y="11" font-size="11">dropped ({sum(dropped):,})</text>']
    for j, i in enumerate(rows):
        y = 20 + j * h
        wk, wd = round(width * kept[i] / tk / top), round(width * dropped[i] / td / top)
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">{html.escape(labels[i])}'
                   "</text>")
        out.append(f'<rect x="{label_w}" y="{y + 1}" width="{wk}" height="10" fill="{KEPT}"/>')
        if kept[i]:
            out.append(f'<text x="{label_w + wk + 4}" y="{y + 10}" font-size="10">{kept[i]:,}</text>')
        out.append(f'<rect x="{label_w}" y="{y + 12}" width="{wd}" height="10" fill="{DROPPED}"/>')
        if dropped[i]:
            out.append(f'<text x="{label_w + wd + 4}" y="{y + 21}" font-size="10">{dropped[i]:,}</text>')
    out.append("</svg>")
    return "".join(out)


def _distributions(manifest: dict) -> str:
    rep = manifest.get("report")
    if not rep:
        return "<p>(not recorded in this manifest)</p>"
    ln, sc = rep["length_chars"], rep["lang_score"]
    edges = ln["edges"]
    length_labels = [f"{_si(e)}–{_si(edges[i + 1])}" if i + 1 < len(edges) else f"≥ {_si(e)}"
                     for i, e in enumerate(edges)]
    score_labels = [f"{e:.2f}–{e + 1 / len(sc['edges']):.2f}" for e in sc["edges"]]
    return ("<h3>Document length (characters)</h3><p>Kept: the published text; dropped: the text as the rule "
            "that dropped it saw it. Each bar is the bucket's share of its own group.</p>"
            + _pair_bars(length_labels, ln["kept"], ln["dropped"])
            + "<h3>Language-ID score</h3><p>Documents that reached language ID.</p>"
            + _pair_bars(score_labels, sc["kept"], sc["dropped"]))


def _si(n: int) -> str:
    return f"{n // 1000:,}k" if n >= 1000 else str(n)


def _clusters(manifest: dict) -> str:
    rep = (manifest.get("report") or {}).get("near_dup_clusters")
    if rep is None:
        return "<p>(not recorded in this manifest)</p>"
    if not (manifest.get("config") or {}).get("near_dedup", {}).get("enabled", True):
        return "<p>Near-dedup is off in this run's config.</p>"
    rows = [(f"{b['from']}" if b["to"] == b["from"] else f"{b['from']}–{b['to'] if b['to'] else ''}",
             b["clusters"], STAGE) for b in rep["sizes"]]
    total = sum(b["clusters"] for b in rep["sizes"])
    parts = [f"<p>Clusters of near-duplicate documents (at least two members in this run; one kept from each): "
             f"<b>{total:,}</b>. Clusters by their number of documents:</p>",
             _bars(rows, total) if rows else "<p>(none)</p>"]
    if rep["largest"]:
        lines = []
        for c in rep["largest"]:
            members = "".join(
                f'<li>{"<b>kept</b> " if i == 0 else ""}<code>{html.escape(m["id"])}</code> '
                f'{html.escape(m["url"]) if m.get("url") else "<i>(no URL)</i>"}</li>'
                for i, m in enumerate(c["members"]))
            lines.append(f'<tr><td>{c["size"]:,}</td><td><code>{html.escape(c["cluster_id"])}</code></td>'
                         f"<td><ul class=urls>{members}</ul></td></tr>")
        parts.append(f"<h3>Largest clusters</h3><table><tr><th>documents</th><th>cluster</th><th>examples "
                     f"(up to {CLUSTER_URLS})</th></tr>{''.join(lines)}</table>")
    return "".join(parts)


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1180px;padding:0 1em;color:#222}
td,th{padding:2px 8px;text-align:left;vertical-align:top}th{background:#e8e8e8}
table{border-collapse:collapse;margin:.3em 0 1em}tr:nth-child(even){background:#f6f6f6}
code{background:#eee;padding:1px 4px;font-size:90%}h2{border-bottom:1px solid #ccc;margin-top:1.6em}
section{margin-bottom:1em}nav{font-size:90%;line-height:1.8}nav a{margin-right:1em;white-space:nowrap}
details{margin:.4em 0}summary{cursor:pointer}.note{color:#555;font-size:90%}
table.examples{font-size:85%;width:100%;table-layout:fixed}td.snip{unicode-bidi:isolate;overflow-wrap:anywhere}
td.id{overflow-wrap:anywhere}.src{color:#666;font-size:90%}
.wide{overflow-x:auto}table.matrix td{text-align:right}table.matrix td:first-child{text-align:left}
ul.urls{margin:0;padding-left:1.2em;font-size:90%;overflow-wrap:anywhere}"""

#: the sections of report.html: (anchor, title); the page and its test name them from here
SECTIONS = (
    ("funnel", "Funnel"),
    ("clean-steps", "Clean steps"),
    ("reasons", "Dropped by reason"),
    ("examples", "Dropped examples"),
    ("by-language", "Drops per language and rule"),
    ("distributions", "Length and language score"),
    ("clusters", "Near-duplicate clusters"),
    ("languages", "Languages kept"),
    ("inputs", "Inputs"),
)


def render_html(manifest: dict) -> str:
    """The report page: a pure function of the manifest (its times, when it has ``timings``, are
    marked so that :func:`without_timings` can take them out)."""
    c = manifest["counts"]
    read, kept = c["read"], c["kept"]
    reason_rows = [(r, n, DROPPED) for r, n in sorted(c["dropped"].items(), key=lambda kv: (-kv[1], kv[0]))]
    lang_rows = _language_rows(manifest["languages"])
    timings = manifest.get("timings")
    timing = _timing(f" in {timings['seconds']:.1f} s") if timings else ""
    config_id = manifest["config_sha256"][:12]
    body = {
        "funnel": "<p>Each stage in pipeline order: the bar is the documents that reached it, blue the ones it "
                  "passed on (share of the documents read), red the ones it dropped.</p>" + _funnel(manifest),
        "clean-steps": _clean_steps(manifest),
        "reasons": "<p>Share of the documents read.</p>" + _bars(reason_rows, read),
        "examples": _examples(manifest),
        "by-language": _by_language(manifest),
        "distributions": _distributions(manifest),
        "clusters": _clusters(manifest),
        "languages": f"<p>Share of the {kept:,} documents kept.</p>" + _bars(lang_rows, kept)
                     + _langid_section(manifest.get("langid")) + _quality_section(manifest.get("quality")),
        "inputs": "<table><tr><th>file</th><th>format</th><th>bytes</th><th>documents</th><th>kept</th><th>dropped"
                  f"</th><th>kept share</th><th>error</th></tr>\n{_inputs_table(manifest['inputs'])}</table>",
    }
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in SECTIONS)
    sections = "".join(_section(a, t, body[a]) for a, t in SECTIONS)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>gristmill corpus report</title>
<style>{_STYLE}</style>
</head><body>
<h1>gristmill corpus report</h1>
<p>Read <b>{read:,}</b> documents from {c['input_files']} files{timing}; kept <b>{kept:,}</b>
({kept / read if read else 0:.1%}), dropped {sum(c['dropped'].values()):,}; {len(manifest['shards'])} shards.
Config <code>{config_id}</code>.</p>
<nav>{nav}</nav>
{sections}</body></html>
"""


def write_html_report(manifest: dict, path: str) -> None:
    io.write_bytes_atomic(path, render_html(manifest).encode())
