"""The tables of docs/development.md from a pytest JUnit XML file.

    PYTEST_ADDOPTS=--junitxml=/tmp/suite.xml make test
    python .ci/durations.py /tmp/suite.xml [--top 30]

A test's time is its setup + call + teardown, so a shared fixture is charged to the first test that
asks for it on its worker (under `make test`, each of the two workers builds the module fixtures of
the modules it runs; session fixtures are built once for both).
"""

from __future__ import annotations

import argparse
import collections
import xml.etree.ElementTree as ET


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("junit_xml")
    ap.add_argument("--top", type=int, default=30, help="how many of the slowest tests to list (default 30)")
    args = ap.parse_args()

    cases = []
    for tc in ET.parse(args.junit_xml).getroot().iter("testcase"):
        module = tc.get("classname", "").removeprefix("tests.")
        outcome = "skipped" if tc.find("skipped") is not None else (
            "failed" if tc.find("failure") is not None or tc.find("error") is not None else "passed")
        cases.append((float(tc.get("time", 0)), module, tc.get("name", ""), outcome))
    total = sum(c[0] for c in cases)
    counts = collections.Counter(c[3] for c in cases)
    print(f"{len(cases)} tests ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}), "
          f"{total:,.0f} s of test time in all\n")

    print("| # | seconds | test |\n|---:|---:|---|")
    for i, (t, module, name, outcome) in enumerate(sorted(cases, reverse=True)[:args.top], 1):
        mark = "" if outcome == "passed" else f" ({outcome})"
        print(f"| {i} | {t:.1f} | `{module}.py::{name}`{mark} |")

    per_file: dict[str, list[float]] = collections.defaultdict(list)
    for t, module, _, _ in cases:
        per_file[module].append(t)
    print("\n| file | tests | seconds | share |\n|---|---:|---:|---:|")
    for module, times in sorted(per_file.items(), key=lambda kv: -sum(kv[1])):
        print(f"| `{module}.py` | {len(times)} | {sum(times):.1f} | {sum(times) / total:.1%} |")


if __name__ == "__main__":
    main()
