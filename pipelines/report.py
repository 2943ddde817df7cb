"""Run report: the funnel and language tables on the terminal, and a self-contained HTML page
(inline SVG bar charts, no scripts or downloads) next to the manifest."""

from __future__ import annotations

import html

from gristmill import io


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

    def row(name: str, fmt: str, size: int, docs: int, error: str, bold: bool = False) -> str:
        cells = [html.escape(name), fmt, f"{size:,}", f"{docs:,}", html.escape(error)]
        tag = ("<td><b>", "</b></td>") if bold else ("<td>", "</td>")
        return "<tr>" + "".join(f"{tag[0]}{c}{tag[1]}" for c in cells) + "</tr>"

    rows = [row(f["source"], f["format"], f["size"], f["documents"], f["error"] or "") for f in chosen]
    if rest:
        errors = sum(1 for f in rest if f["error"])
        rows.append(row(f"… {len(rest):,} more files", "", sum(f["size"] for f in rest),
                        sum(f["documents"] for f in rest), f"{errors:,} with errors" if errors else ""))
    rows.append(row(f"all {len(inputs):,} files", "", sum(f["size"] for f in inputs),
                    sum(f["documents"] for f in inputs), "", bold=True))
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


def render_html(manifest: dict, seconds: float | None = None) -> str:
    c = manifest["counts"]
    read = c["read"]
    funnel_rows = [(f"after {r['stage']}", r["out"], "#4c78a8") for r in manifest["funnel"]]
    funnel_rows.insert(0, ("read", read, "#9ecae9"))
    reason_rows = [(r, n, "#e45756") for r, n in sorted(c["dropped"].items(), key=lambda kv: (-kv[1], kv[0]))]
    lang_rows = _language_rows(manifest["languages"])
    timing = f" in {seconds:.1f} s" if seconds is not None else ""
    config_id = manifest["config_sha256"][:12]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>gristmill corpus report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}td,th{{padding:2px 8px;text-align:left}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}code{{background:#eee;padding:1px 4px}}</style>
</head><body>
<h1>gristmill corpus report</h1>
<p>Read <b>{read:,}</b> documents from {c['input_files']} files{timing}; kept <b>{c['kept']:,}</b>,
dropped {sum(c['dropped'].values()):,}; {len(manifest['shards'])} shards. Config <code>{config_id}</code>.
Percentages are of the documents read.</p>
<h2>Funnel</h2>{_bars(funnel_rows, read)}
<h2>Dropped by reason</h2>{_bars(reason_rows, read)}
<h2>Languages kept</h2>{_bars(lang_rows, read)}{_langid_section(manifest.get("langid"))}\
{_quality_section(manifest.get("quality"))}
<h2>Inputs</h2><table><tr><th>file</th><th>format</th><th>bytes</th><th>documents</th><th>error</th></tr>
{_inputs_table(manifest["inputs"])}</table>
</body></html>
"""


def write_html_report(manifest: dict, path: str, seconds: float | None = None) -> None:
    io.write_bytes_atomic(path, render_html(manifest, seconds).encode())
