"""No secret is ever written: each kind of credential planted in a command line, a settings mapping and a log
line, and what gristmill writes down (run.json, the lock's holder note, log lines) shows none of them."""

from __future__ import annotations

import json
import logging

import pytest

from gristmill import secrets
from gristmill.locks import LOCK_FILE, directory_lock
from gristmill.outputs import recorded_run

PLANTED = {
    "--s3_secret_access_key": "planted-s3-secret-0001",
    "--s3_access_key_id": "AKIAPLANTED0002",
    "--s3_session_token": "planted-session-token-0003",
    "--hf-token": "hf_planted0004",
    "--db_password": "planted-password-0005",
    "--api_key": "planted-api-key-0006",
    "--sas": "sv=2024&sig=planted0007",
}
URL_PASSWORD = "planted-url-pass-0008"
ARGV = ["gristmill", "corpus", "--input", "s3://crawl/*", "--tokenizer", "tok/", "--s3_region_name", "eu-west-1",
        "--proxy", f"https://alice:{URL_PASSWORD}@proxy.example:3128/",
        *[a for name, value in PLANTED.items() for a in (name, value)][:8],
        *[f"{name}={value}" for name, value in list(PLANTED.items())[4:]]]


def _leaks(text: str) -> list[str]:
    return [v for v in (*PLANTED.values(), URL_PASSWORD) if v in text]


def test_a_command_line_is_written_without_its_credentials():
    out = secrets.redact_argv(ARGV)
    assert not _leaks(" ".join(out))
    for name in list(PLANTED)[:4]:  # --name value
        assert out[out.index(name) + 1] == "***"
    for name in list(PLANTED)[4:]:  # --name=value
        assert f"{name}=***" in out
    assert "https://alice:***@proxy.example:3128/" in out  # the user is kept, the password is not
    # what is not a credential stays readable
    assert out[out.index("--tokenizer") + 1] == "tok/" and out[out.index("--s3_region_name") + 1] == "eu-west-1"
    assert out[:4] == ARGV[:4]


@pytest.mark.parametrize("name, secret", [
    ("--s3_secret_access_key", True), ("--hf_token", True), ("--password", True), ("--github-token", True),
    ("--s3_sse_customer_key", True), ("--credentials", True), ("--auth", True),
    ("--tokenizer", False), ("--tokens", False), ("--max-new-tokens", False), ("--keep", False),
    ("--key_column", False), ("--s3_region_name", False), ("--input", False), ("--monkey", False),
])
def test_which_names_hold_credentials(name, secret):
    assert secrets.is_secret_name(name) is secret


def test_settings_are_written_without_their_credentials():
    tree = {"storage": {"endpoint": "https://s3.example", "secret_access_key": "planted-s3-secret-0001",
                        "url": f"https://bob:{URL_PASSWORD}@db.example/x"}, "tokens": 5, "hf_token": None}
    out = secrets.redact_mapping(tree)
    assert out["storage"]["secret_access_key"] == "***" and out["storage"]["endpoint"] == "https://s3.example"
    assert out["storage"]["url"] == "https://bob:***@db.example/x" and out["tokens"] == 5
    assert out["hf_token"] is None  # nothing set: nothing to hide, and "unset" stays visible
    assert not _leaks(json.dumps(out))


def test_log_lines_never_show_a_credential_given_on_the_command_line(caplog):
    secrets.redact_argv(ARGV)  # what gristmill.cli.main does first
    logger = logging.getLogger("gristmill.test_secrets")
    handler = logging.StreamHandler()
    handler.addFilter(secrets.RedactSecrets())
    records: list[str] = []
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        # a library logging the arguments it got (Beam's "Discarding unparseable args: [...]")
        logger.warning("Discarding unparseable args: %s", ARGV[4:])
        try:
            raise RuntimeError(f"connect failed with key {PLANTED['--s3_secret_access_key']}")
        except RuntimeError:
            logger.exception("while writing")
    finally:
        logger.removeHandler(handler)
    assert len(records) == 2 and "Discarding unparseable args" in records[0] and "while writing" in records[1]
    assert not _leaks("\n".join(records)), records
    assert "RuntimeError: connect failed with key ***" in records[1]


def test_run_json_and_the_lock_note_hold_the_redacted_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ARGV)
    out = tmp_path / "out"
    with directory_lock(str(out), "corpus"):
        note = (out / LOCK_FILE).read_text()
        with recorded_run(str(out), "corpus"):
            running = (out / "run.json").read_text()
    for text in (note, running, (out / "run.json").read_text()):
        assert "--s3_secret_access_key" in text and not _leaks(text), text
