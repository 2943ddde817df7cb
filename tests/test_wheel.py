"""`gristmill demo` from an installed wheel: the sample crawl, the demo's chat files and its config ship
as package data (pyproject.toml), found through importlib.resources (gristmill.api.sample_path,
demo_config_path), so the demo needs no checkout.

The wheel is built from a copy of the repository (an in-tree build would leave build/ there) and
installed into a fresh virtual environment outside it, which borrows this one's dependencies through a
.pth path line (nothing is downloaded; this environment's editable gristmill is not visible there).
The suite runs the demo's first step from it (~25 s in all); the whole demo (~4.5 minutes on 2 cores)
is a ``budget`` test (make test-budget)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

SFT_FILES = ("oasst_en_100_rank0_conversations.jsonl", "self_instruct_seed_tasks.jsonl")


def _copy_sources(dest: Path) -> None:
    """What a wheel is built from: pyproject.toml, README.md and every folder a package maps to."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {d.split("/")[0] for d in setuptools["package-dir"].values()}
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for folder in sorted(folders):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))


def build_wheel(tmp: Path) -> Path:
    """The wheel of the repository as it is, built from a copy under ``tmp`` (offline: this environment's
    setuptools, no build isolation)."""
    _copy_sources(tmp / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(tmp / "src")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (built,) = (tmp / "dist").glob("gristmill-*.whl")
    return built


def install_fresh(wheel: Path, env_dir: Path) -> Path:
    """A fresh virtual environment at ``env_dir`` with ``wheel`` installed and this environment's
    dependencies borrowed: its bin/."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                        "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # a path line only: this environment's .pth files (the editable gristmill's finder) are not run there
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir / "bin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment outside the repository with the wheel installed: its bin/."""
    return install_fresh(wheel, tmp_path_factory.mktemp("venv") / "env")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_wheel_ships_the_demo_sample_and_config_and_nothing_else_of_sample(wheel):
    with zipfile.ZipFile(wheel) as z:
        infos = {i.filename: i for i in z.infolist()}
    crawl = sorted(p.name for p in (REPO / "sample" / "crawl").iterdir())
    expected = ({f"gristmill/sample/crawl/{n}" for n in crawl} | {f"gristmill/sample/sft/{n}" for n in SFT_FILES}
                | {"gristmill/configs/demo.yaml"})
    shipped = {n for n in infos if n.startswith(("gristmill/sample/", "gristmill/configs/"))}
    assert shipped == expected  # no make_*.py scripts, no eval set, no other config
    assert sum(infos[n].file_size for n in shipped) < 3_000_000  # package data stays small (2.2 MB today)
    assert not any(n.split("/")[0] in ("sample", "configs") for n in infos)  # nothing at the top of site-packages


@pytest.mark.slow  # a real corpus run (~15 s)
def test_the_demo_runs_its_first_step_from_an_installed_wheel(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([str(installed / "gristmill"), "demo", "--output", str(elsewhere / "demo"), "--until", "corpus",
                        "-q"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((elsewhere / "demo" / "corpus" / "manifest.json").read_text())
    site = installed.parent / "lib"
    inputs = {Path(i["path"]).name: i for i in manifest["inputs"]}
    assert sorted(inputs) == sorted(p.name for p in (REPO / "sample" / "crawl").iterdir())
    for name, entry in inputs.items():  # the wheel's copy of the sample, byte for byte
        assert Path(entry["path"]).is_relative_to(site), entry["path"]
        assert entry["sha256"] == _sha256(REPO / "sample" / "crawl" / name)
    counts = manifest["counts"]
    assert counts["read"] == counts["kept"] + sum(counts["dropped"].values()) and counts["kept"] > 0
    assert not (elsewhere / "demo" / "tokenizer").exists()  # --until corpus: the first step only


@pytest.mark.slow
def test_the_installed_wheel_imports_every_stage_from_itself_and_scores_with_its_quality_model(installed, tmp_path):
    """The wheel in a fresh virtual environment (its dependencies borrowed from this one's site-packages, without
    this one's editable gristmill) works away from the repository: every stage imported from the wheel, and a
    corpus run with the shipped quality classifier (package data)."""
    python = installed / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import json, gristmill, gristmill.pipelines.corpus, gristmill.dedupe.minhash, gristmill.tokenizer.train, "
            "gristmill.trainer.loop; print(json.dumps([gristmill.__file__, gristmill.pipelines.corpus.__file__]))")
    r = subprocess.run([str(python), "-c", code], cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(p.startswith(str(site)) for p in json.loads(r.stdout.strip().splitlines()[-1]))
    r = subprocess.run([str(installed / "gristmill"), "corpus", "--input",
                        str(REPO / "sample/crawl/ccnet-cc-main-2020-16.parquet"), "--output", str(work / "corpus"),
                        "-q", "--set", "clean.quality.enabled=true"], cwd=work, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((work / "corpus" / "manifest.json").read_text())
    assert manifest["counts"]["read"] == 20 and manifest["quality"]["languages"]  # the shipped model scored them


@pytest.mark.budget
def test_the_whole_demo_runs_from_an_installed_wheel(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([str(installed / "gristmill"), "demo", "--output", str(elsewhere / "demo")],
                       cwd=elsewhere, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "assistant (a " in r.stdout
    assert list((elsewhere / "demo" / "sft" / "demo").glob("checkpoint_*"))
