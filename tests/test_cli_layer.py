"""The command line is a thin layer over gristmill.api: gristmill/cli.py imports no stage, at module
level or inside a function, and every API function it calls is documented in docs/api.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from .conftest import REPO

STAGES = ("gristmill.pipelines", "gristmill.dedupe", "gristmill.tokenizer", "gristmill.trainer")
STAGE_NAMES = tuple(s.split(".")[1] for s in STAGES)  # `from gristmill import trainer`


def stage_imports(source: str) -> list[str]:
    """Every import of a stage module in ``source``, wherever it stands (module level, a function, a
    class, a branch), as ``line: module``; ``importlib.import_module`` / ``__import__`` of a literal
    stage name counts too."""
    found = []

    def is_stage(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in STAGES)

    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
            if node.module == "gristmill":
                names += [f"gristmill.{a.name}" for a in node.names if a.name in STAGE_NAMES]
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: cli.py sits in gristmill/
            base = node.module or ""
            names = [f"gristmill.{base}" if base else "gristmill"]
            if not base:
                names += [f"gristmill.{a.name}" for a in node.names if a.name in STAGE_NAMES]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [f"{node.lineno}: {n}" for n in names if is_stage(n)]
    return found


def test_the_cli_imports_no_stage():
    problems = stage_imports((REPO / "gristmill" / "cli.py").read_text())
    assert not problems, ("gristmill/cli.py imports stages (go through gristmill.api instead):\n"
                          + "\n".join(problems))


@pytest.mark.parametrize("code", [
    "from gristmill.trainer.generate import SamplingConfig\n",
    "def f():\n    from gristmill.pipelines import quality_model\n",
    "def f():\n    if True:\n        import gristmill.dedupe.rounds as r\n",
    "class C:\n    def m(self):\n        from gristmill import tokenizer\n",
    "def f():\n    from .trainer import checkpoint\n",
    "import importlib\ndef f():\n    return importlib.import_module('gristmill.trainer.loop')\n",
])
def test_the_check_finds_a_stage_import_wherever_it_stands(code):
    assert stage_imports(code)


def test_the_check_lets_the_api_and_the_core_through():
    assert stage_imports("from gristmill import api\nfrom gristmill.config import load_config\n"
                         "def f():\n    from gristmill import api, errors\n    import gristmill.io\n") == []


def test_every_api_function_the_cli_calls_is_public_and_documented():
    from gristmill import api

    called = set(re.findall(r"\bapi\.(\w+)", (REPO / "gristmill" / "cli.py").read_text()))
    assert called, "the CLI calls the API"
    docs = (REPO / "docs" / "api.md").read_text()
    for name in sorted(called):
        assert name in api.__all__, f"cli.py calls gristmill.api.{name}, which is not in api.__all__"
        assert f"`{name}" in docs, f"gristmill.api.{name} (called by cli.py) is not in docs/api.md"


def test_the_demo_finds_its_sample_and_config_in_a_checkout():
    from gristmill import api

    config, crawl = api.demo_config_path(), api.sample_path("crawl")
    assert config.is_file() and config.name == "demo.yaml"
    assert sorted(p.name for p in crawl.iterdir()) == sorted(p.name for p in (REPO / "sample" / "crawl").iterdir())
    assert all(api.sample_path("sft", f).is_file() for f in
               ("oasst_en_100_rank0_conversations.jsonl", "self_instruct_seed_tasks.jsonl"))
    api.load_config(config)  # valid


def test_a_missing_shipped_file_says_what_to_do():
    from gristmill import api
    from gristmill.errors import GristmillError

    with pytest.raises(GristmillError, match="reinstall gristmill from its wheel, or run from a checkout"):
        api.sample_path("no-such-folder")
    assert Path(api.sample_path()).name == "sample"
