"""../shared/data/text (books and speeches) → one JSONL of chapter-sized documents for the corpus pipeline.

    python bench/prepare_books.py [--shared ../shared/data/text] [--output runs/books/books.jsonl]

The Gutenberg files lose their licence header and footer (between the "*** START OF" and "*** END OF"
lines); each book, and tinyshakespeare, is cut at blank lines into documents of about --chars characters,
so the train/val split (by document id) and near-dedup see many documents, not five. The State of the
Union and inaugural addresses are one document each, as converted. Genesis (multilingual) is left out.
With --sft-output, the SFT files of ../shared/data/sft become plain-text documents too (a mixture source,
configs/mixture.yaml).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def strip_gutenberg(text: str) -> str:
    start = re.search(r"^\*\*\* ?START OF.*$", text, re.M)
    end = re.search(r"^\*\*\* ?END OF.*$", text, re.M)
    return text[start.end() if start else 0: end.start() if end else len(text)]


def chunks(text: str, size: int):
    buf, n = [], 0
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        buf.append(para)
        n += len(para)
        if n >= size:
            yield "\n\n".join(buf)
            buf, n = [], 0
    if buf:
        yield "\n\n".join(buf)


def sft_documents(sft: Path):
    """SFT-style text as plain documents (for a mixture source): OpenAssistant conversations, self-instruct
    seed tasks and GSM8K train, one record each, turns as "User:" / "Assistant:" paragraphs."""
    for line in (sft / "oasst_en_100_rank0_conversations.jsonl").read_text().splitlines():
        rec = json.loads(line)
        turns = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in rec["messages"]]
        yield f"oasst/{rec['message_tree_id']}", "\n\n".join(turns)
    for line in (sft / "self_instruct_seed_tasks.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k, inst in enumerate(rec["instances"]):
            ask = rec["instruction"] + (f"\n\n{inst['input']}" if inst.get("input") else "")
            yield f"self_instruct/{rec['id']}/{k}", f"User: {ask}\n\nAssistant: {inst['output']}"
    for k, line in enumerate((sft / "gsm8k_train.jsonl").read_text().splitlines()):
        rec = json.loads(line)
        yield f"gsm8k_train/{k:05d}", f"User: {rec['question']}\n\nAssistant: {rec['answer']}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data" / "text"))
    ap.add_argument("--output", default=str(REPO / "runs" / "books" / "books.jsonl"))
    ap.add_argument("--chars", type=int, default=6000)
    ap.add_argument("--sft-output", help="also write SFT-style text (../shared/data/sft) as documents here")
    a = ap.parse_args(argv)
    if a.sft_output:
        sft_out = Path(a.sft_output)
        sft_out.parent.mkdir(parents=True, exist_ok=True)
        with sft_out.open("w") as f:
            count = 0
            for doc_id, text in sft_documents(Path(a.shared).parent / "sft"):
                f.write(json.dumps({"id": doc_id, "text": text, "url": f"file://{doc_id}"}) + "\n")
                count += 1
        print(f"{count} SFT-style documents → {sft_out}")
    src, out = Path(a.shared), Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with out.open("w") as f:
        for path in sorted(src.glob("*.txt")):
            text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
            text = strip_gutenberg(text) if path.name.startswith("pg") else text
            for i, chunk in enumerate(chunks(text, a.chars)):
                record = {"id": f"{path.stem}/{i:05d}", "text": chunk, "url": f"file://{path.name}#{i}"}
                f.write(json.dumps(record) + "\n")
                n += 1
        for name in ("nltk_state_union_1945_2006.jsonl", "nltk_inaugural_addresses.jsonl"):
            for line in (src / name).read_text().splitlines():
                rec = json.loads(line)
                f.write(json.dumps({"id": rec["id"], "text": rec["text"], "url": f"file://{name}#{rec['id']}"}) + "\n")
                n += 1
    print(f"{n} documents → {out}")


if __name__ == "__main__":
    main()
