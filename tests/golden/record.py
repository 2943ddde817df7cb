"""Re-record tests/golden/sample_corpus_demo.json from a run of the sample crawl (a change meant to alter
the corpus output does this, and says why in the record's "what"):

    rm -rf /tmp/gold && .venv/bin/gristmill corpus --input 'sample/crawl/*' --output /tmp/gold \\
        --config configs/demo.yaml -q
    .venv/bin/python tests/golden/record.py /tmp/gold "why the output changed"
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from gristmill.pipelines.report import without_timings

GOLDEN = Path(__file__).with_name("sample_corpus_demo.json")


def main(out: str, why: str) -> None:
    root = Path(out)
    record = json.loads(GOLDEN.read_text())
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.pop("timings", None)  # the one section that differs between runs
    for f in manifest["inputs"]:
        f.pop("path")  # absolute: where the checkout is
    record["files"] = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in sorted(root.rglob("*.arrow")) if "_work" not in p.parts}
    report = without_timings("report.html", (root / "report.html").read_bytes())
    record["report.html"] = hashlib.sha256(report).hexdigest()
    record["manifest_without_input_paths"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    record["counts"] = manifest["counts"]
    if why not in record["what"]:
        record["what"] = f"{record['what']} {why}"
    GOLDEN.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
