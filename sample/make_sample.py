"""Rebuild sample/crawl from ../shared/data/web (run from the repo root). Deterministic.

The sample is small real crawl data in every supported format, several languages, for the demo
and the end-to-end tests: Common Crawl WARC and WET, wget WARC, Dolma JSONL (gzip), OSCAR JSONL
(zstd) and CCNet records as Parquet.
"""

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

SHARED = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/web")
OUT = Path("sample/crawl")
OUT.mkdir(parents=True, exist_ok=True)

for name, new in [
    ("resiliparse_CC-MAIN-2020-34_excerpt.warc.gz", "cc-main-2020-34-excerpt.warc.gz"),
    ("cc_whirlwind.warc.wet.gz", "cc-main-2024-22-whirlwind.warc.wet.gz"),
    ("dolma_wget_sample-0000.warc.gz", "wget-2024-04-25.warc.gz"),
    ("dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz", "dolma-cc-main-2019-30.jsonl.gz"),
]:
    shutil.copyfile(SHARED / name, OUT / new)

# OSCAR 2019: every language's first two documents of each variant (keeps the original/dedup copies,
# which are real exact duplicates), compressed with zstd.
lines, seen = [], {}
for line in (SHARED / "oscar2019_hf_dummy_multilingual.jsonl").read_text(encoding="utf-8").split("\n"):
    if not line.strip():
        continue
    rec = json.loads(line)
    key = (rec["lang"], rec["variant"])
    if seen.get(key, 0) < 2:
        seen[key] = seen.get(key, 0) + 1
        lines.append(line)
data = ("\n".join(lines) + "\n").encode()
(OUT / "oscar-2019-multilingual.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=19).compress(data))

# CCNet (Dolma's copy) as Parquet: id, text, url from metadata, date
rows = []
for name in ("dolma_ccnet_cc_en_head-0091.jsonl", "dolma_ccnet_cc_en_head-0174.jsonl"):
    for line in (SHARED / name).read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        rec = json.loads(line)
        rows.append({"id": rec["id"], "text": rec["text"], "url": rec["metadata"]["url"], "created": rec["created"]})
pq.write_table(pa.Table.from_pylist(rows), OUT / "ccnet-cc-main-2020-16.parquet", compression="zstd")
print(f"wrote {len(list(OUT.iterdir()))} files to {OUT}: oscar {len(lines)} docs, ccnet {len(rows)} docs")
