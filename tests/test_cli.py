"""The command line as a new user meets it: strict options, and errors that name the problem and the fix
(each run in a temporary directory on real files)."""

from __future__ import annotations

import json

import pytest

from .conftest import DEMO_CONFIG, SAMPLE, run_cli

pytestmark = pytest.mark.slow

PARQUET = str(SAMPLE / "ccnet-cc-main-2020-16.parquet")


def _fails(*args, code: int = 2, **kw) -> str:
    r = run_cli(*args, **kw)
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    return r.stderr


# --- options ---------------------------------------------------------------------------------------


def test_a_misspelled_beam_option_is_an_error_not_a_local_run(tmp_path):
    err = _fails("corpus", "--input", PARQUET, "--output", tmp_path / "o", "--runer", "DataflowRunner")
    assert "unrecognized argument --runer; did you mean --runner?" in err
    assert not (tmp_path / "o").exists()  # nothing ran
    # real Beam options pass, and anything after -- goes to the runner unchecked
    r = run_cli("corpus", "--input", PARQUET, "--output", tmp_path / "o", "-q", "--runner", "DirectRunner",
                "--", "--some_runner_flag=1")
    assert r.returncode == 0, r.stderr[-2000:]


def test_options_are_never_abbreviated_and_typos_get_a_suggestion(tmp_path):
    err = _fails("corpus", "--input", PARQUET, "--output", tmp_path / "o", "--over")
    assert "unrecognized argument --over; did you mean --overwrite?" in err
    assert "did you mean --max-new-tokens?" in _fails("generate", "--checkpoint", "x", "--max-new-token", "3", "hi")
    assert "did you mean --config?" in _fails("pretrain", "--cnfig", "a.yaml")


@pytest.mark.parametrize("flag, value, message", [
    ("--top-p", "1.5", "argument --top-p: 1.5 is outside (0, 1]"),
    ("--top-p", "0", "argument --top-p: 0 is outside (0, 1]"),
    ("--temperature", "-1", "argument --temperature: -1 is outside [0, ∞)"),
    ("--top-k", "-3", "argument --top-k: -3 is outside [0, ∞)"),
    ("--max-new-tokens", "0", "argument --max-new-tokens: 0 is outside [1, ∞)"),
    ("--top-k", "2.5", "argument --top-k: '2.5' is not an integer"),
])
def test_sampling_settings_the_sampler_cannot_mean_are_usage_errors(flag, value, message):
    assert message in _fails("generate", "--checkpoint", "/nonexistent", flag, value, "hi")


@pytest.mark.parametrize("command, section", [("pretrain", "pretrain"), ("sft", "sft"),
                                              ("finetune-cls", "finetune_cls"), ("corpus", "langid")])
def test_each_commands_set_example_names_keys_it_reads(command, section):
    import re

    from gristmill.config import load_config

    out = " ".join(run_cli(command, "--help", check=True).stdout.split())
    example = re.search(r"override one config key, e\.g\. (.*?) \(repeatable\)", out).group(1)
    pairs = re.findall(r"--set '?([a-z_.]+=[^' ]+)'?", example)
    assert pairs and all(p.startswith(section + ".") for p in pairs), example
    load_config(None, pairs)  # real keys with valid values


@pytest.mark.parametrize("command", ["pretrain", "sft", "finetune-cls"])
def test_training_without_a_config_says_what_to_give(command):
    section = {"pretrain": "pretrain.data", "sft": "sft.init_checkpoint",
               "finetune-cls": "finetune_cls.init_checkpoint"}[command]
    err = _fails(command)
    assert f"{section} is not set" in err and "configs/demo.yaml" in err


def test_help_shows_examples_and_defaults():
    out = run_cli("generate", "--help", check=True).stdout
    assert "example: gristmill generate" in out and "(default: 128)" in out and "(default: None)" not in out


# --- the eight errors of issue 14 -------------------------------------------------------------------


def test_decode_names_the_bad_id(demo_tokenizer):
    err = _fails("tokenizer", "decode", "--tokenizer", demo_tokenizer, "1", "2", "abc")
    assert "'abc' is not a token id: decode takes whole numbers 0..7999" in err
    err = _fails("tokenizer", "decode", "--tokenizer", demo_tokenizer, "8000")
    assert "token id 8000 is out of range: this tokenizer has 8,000 pieces (ids 0..7999)" in err


def test_a_token_directory_is_not_a_corpus(demo_tokens64, tmp_path):
    err = _fails("tokenizer", "train", "--corpus", demo_tokens64, "--output", tmp_path / "t")
    assert "is a token directory (written by `gristmill tokenize`): pass the corpus directory" in err


def test_a_folder_as_input_gets_a_glob_suggested(tmp_path):
    err = _fails("corpus", "--input", f"{SAMPLE}/", "--output", tmp_path / "o", code=4)
    assert f"is a directory: give the files in it, e.g. '{SAMPLE}/*'" in err


def test_a_checkpoint_that_is_missing_or_a_run_folder(tmp_path):
    assert "checkpoint /nonexistent does not exist" in _fails("generate", "--checkpoint", "/nonexistent", "hi")
    run = tmp_path / "runs" / "demo"
    (run / "checkpoint_00000003").mkdir(parents=True)
    (run / "checkpoint_00000003" / "trainer_state.json").write_text(json.dumps({"step": 3, "files": {}}))
    err = _fails("export-hf", "--checkpoint", run, "--output", tmp_path / "hf")
    assert f"{run} is a training run, not a checkpoint: its latest checkpoint is {run / 'checkpoint_00000003'}" in err


def test_a_bad_override_is_blamed_on_the_override_and_its_own_section():
    err = _fails("sft", "--config", DEMO_CONFIG, "--set", "sft.min_lr=1")
    assert "sft.min_lr (--set sft.min_lr=1): min_lr (1.0) must not exceed lr (0.001)" in err
    assert "pretrain" not in err and f"in {DEMO_CONFIG}" not in err


def test_a_misspelled_key_gets_a_suggestion_and_one_value_is_a_list(tmp_path):
    err = _fails("corpus", "--input", PARQUET, "--output", tmp_path / "o", "--set", "langid.treshold=0.8")
    assert "langid.treshold (--set langid.treshold=0.8): unknown key; did you mean threshold?" in err
    r = run_cli("corpus", "--input", PARQUET, "--output", tmp_path / "o", "-q", "--set", "langid.keep=en")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["config"]["langid"]["keep"] == ["en"]


def test_a_file_that_is_not_a_tokenizer(demo_corpus, demo_tokenizer, tmp_path):
    err = _fails("tokenize", "--corpus", demo_corpus, "--tokenizer", demo_tokenizer / "tokenizer.vocab",
                 "--output", tmp_path / "k")
    assert "tokenizer.vocab is not a SentencePiece model" in err
    assert "pass the directory `gristmill tokenizer train` wrote, or its tokenizer.model" in err
    r = run_cli("tokenizer", "encode", "--tokenizer", demo_tokenizer / "tokenizer.model", "mill", check=True)
    assert r.stdout.split()  # the .model file itself works


def test_a_too_small_vocabulary_names_gristmills_keys(demo_corpus, tmp_path):
    err = _fails("tokenizer", "train", "--corpus", demo_corpus, "--output", tmp_path / "t",
                 "--set", "tokenizer.vocab_size=1000")
    assert "tokenizer.vocab_size=1000 is too small" in err and "the corpus needs at least" in err
    assert "tokenizer.character_coverage" in err and "--character_coverage" not in err


# --- writers never take a directory they did not write ---------------------------------------------


def test_tokenizer_train_refuses_a_corpus_and_a_users_folder_and_retrains_its_own(demo_corpus, tmp_path):
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(demo_corpus, corpus)
    before = (corpus / "manifest.json").read_bytes()
    err = _fails("tokenizer", "train", "--corpus", demo_corpus, "--output", corpus,
                 "--set", "tokenizer.vocab_size=6000")
    assert "holds a corpus (written by gristmill); writing a tokenizer there would replace its files" in err
    assert "--overwrite" in err and (corpus / "manifest.json").read_bytes() == before
    assert not (corpus / "tokenizer.model").exists()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    err = _fails("tokenizer", "train", "--corpus", demo_corpus, "--output", mine, "--set", "tokenizer.vocab_size=6000")
    assert "is not empty and was not written by gristmill" in err and not (mine / "tokenizer.model").exists()

    tok = tmp_path / "tok"
    for _ in range(2):  # its own output: trained again in place
        run_cli("tokenizer", "train", "--corpus", demo_corpus, "--output", tok, "--set", "tokenizer.vocab_size=6000",
                "-q", check=True)
    assert (tok / "tokenizer.model").is_file()
    # and token shards never go into a tokenizer's directory
    err = _fails("tokenize", "--corpus", demo_corpus, "--tokenizer", tok, "--output", tok)
    assert "holds a tokenizer (written by gristmill)" in err
    run_cli("tokenizer", "train", "--corpus", demo_corpus, "--output", mine, "--set", "tokenizer.vocab_size=6000",
            "--overwrite", "-q", check=True)
    assert (mine / "notes.txt").read_text() == "my notes" and (mine / "tokenizer.model").is_file()


# --- help ------------------------------------------------------------------------------------------


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, p in _subparsers(sub):
                    yield f"{name} {inner}", p


def test_every_command_has_an_example_and_names_the_config_it_reads():
    from gristmill.cli import CONFIG_SECTIONS, build_parser

    commands = dict(_subparsers(build_parser()))
    assert {"corpus", "tokenizer train", "tokenize", "pretrain", "export-hf", "demo"} <= set(commands)
    for name, p in commands.items():
        text = p.format_help()
        if name != "tokenizer":  # the group: its actions have the examples
            assert "example: gristmill " + name in text, name
    for name, (sections, _) in CONFIG_SECTIONS.items():
        text = " ".join(commands[name].format_help().split())
        assert "config: reads the section" in text and all(f"{s}:" in text for s in sections), name
    assert "(default: 1024)" not in commands["tokenize"].format_help()  # --seq-len's default is the config's
    assert "(default: runs/demo)" in commands["demo"].format_help()


def test_a_runners_own_options_are_known_once_the_runner_is_named():
    from gristmill.cli import _unknown_beam_options

    dask = ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner"]
    assert _unknown_beam_options([*dask, "--dask_client_address", "127.0.0.1:8786"])[0] == []
    unknown, known = _unknown_beam_options([*dask, "--dask_client_adress", "127.0.0.1:8786"])
    assert unknown[0] == "--dask_client_adress" and "--dask_client_address" in known
