"""docs/architecture.md names a module and its functions at every step: hold it to the code, so it cannot rot."""

from __future__ import annotations

import ast
import re

from .conftest import REPO

DOC = REPO / "docs" / "architecture.md"
PATH = r"`((?:gristmill|pipelines|dedupe|tokenizer|trainer)/[a-z_]+\.py)`"


def _defined(path) -> set[str]:
    """Top-level functions, classes and assignments of a module, and the methods of its classes (Class.method)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def named_in_doc(text: str) -> list[tuple[str, list[str]]]:
    """Every module path in the doc with the names written right after it (`path` `name`, `name`; ...)."""
    out = []
    for m in re.finditer(PATH + r"((?: `[A-Za-z_.]+`,?)*)", text):
        out.append((m.group(1), re.findall(r"`([A-Za-z_.]+)`", m.group(2))))
    return out


def test_the_pattern_reads_a_module_and_its_names():
    got = named_in_doc("| `trainer/loop.py` `set_up`, `resume`; `x/y.py` |")
    assert got == [("trainer/loop.py", ["set_up", "resume"])]


def test_every_module_and_name_in_the_architecture_doc_exists():
    pairs = named_in_doc(DOC.read_text())
    assert len(pairs) > 30
    missing = []
    for path, names in pairs:
        file = REPO / path.removeprefix("gristmill/") if not path.startswith("gristmill/") else REPO / path
        if not file.is_file():
            missing.append(path)
            continue
        defined = _defined(file)
        missing += [f"{path} {n}" for n in names if n not in defined and n.split(".")[0] not in defined]
    assert not missing, missing
