"""Build sample/eval/genesis_next_sentence_mc.jsonl: a small real multiple-choice set for `gristmill eval`.

    python sample/make_eval.py [--shared ../shared/data]

Each item: a sentence of the World English Bible's Genesis (../shared/data/text/nltk_genesis_multilingual.jsonl,
public domain) as the question, and four choices: the sentence that really follows it and three sentences
drawn (seeded) from elsewhere in the book. A language model that has learnt anything about English
narrative beats chance (25 %). The text is not part of the demo or books training corpora.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--output", default=str(REPO / "sample" / "eval" / "genesis_next_sentence_mc.jsonl"))
    a = ap.parse_args()
    text = next(json.loads(line)["text"] for line in open(Path(a.shared) / "text" / "nltk_genesis_multilingual.jsonl")
                if json.loads(line)["id"] == "genesis/english-web.txt")
    flat = re.sub(r"\s+", " ", text).strip()
    sentences = [s for s in re.split(r"(?<=[.!?\"])\s+(?=[A-Z\"])", flat) if 20 <= len(s) <= 200]
    rng = random.Random(0)
    starts = sorted(rng.sample(range(len(sentences) - 1), a.items))
    with open(a.output, "w") as f:
        for i in starts:
            far = [j for j in rng.sample(range(len(sentences)), 12) if abs(j - i) > 20][:3]
            choices = [sentences[i + 1]] + [sentences[j] for j in far]
            order = list(range(4))
            rng.shuffle(order)
            item = {"id": f"genesis-web-{i}", "question": sentences[i], "choices": [choices[k] for k in order],
                    "answer": order.index(0)}
            f.write(json.dumps(item) + "\n")
    print(f"{a.items} items from {len(sentences)} sentences → {a.output}")


if __name__ == "__main__":
    main()
