"""No secret is ever written: credentials given on the command line (``--s3_secret_access_key``,
a token, a password, a URL with ``user:password@``) are replaced by ``***`` wherever gristmill
records a command line (``run.json``, the lock's holder note) and in every log line.

A name counts as a credential when one of its words (split at ``_``, ``-`` and ``.``) is one of
:data:`SECRET_WORDS`: ``--s3_secret_access_key``, ``--hf-token``, ``--db_password``, ``--api_key``,
``--s3_access_key_id`` (an identifier, but half of a credential pair). Words such as ``tokens`` or
``tokenizer`` are not ``token``, so ``--tokenizer PATH`` stays readable. The values found are
remembered for the process, so a library that logs them (Beam's "Discarding unparseable args:
[...]") is redacted too.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence

REDACTED = "***"
SECRET_WORDS = frozenset({"secret", "password", "passwd", "pwd", "token", "key", "apikey", "credential",
                          "credentials", "auth", "authorization", "passphrase", "cookie", "sas", "signature"})
#: names with a secret-looking word that hold no secret (a key column, a sort key)
NOT_SECRET = frozenset({"key_column", "sort_key", "text_key", "id_key", "dedup_key", "key_field"})
#: ``scheme://user:password@host``: the password part
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)(?P<password>[^/\s@]+)(?P<at>@)")
_WORD_SPLIT = re.compile(r"[_.\-]+")

_known: set[str] = set()
_known_lock = threading.Lock()


def is_secret_name(name: str) -> bool:
    """Whether an option or setting called ``name`` holds a credential (see the module's doc)."""
    bare = name.lstrip("-").lower()
    if bare.replace("-", "_") in NOT_SECRET:
        return False
    return any(w in SECRET_WORDS for w in _WORD_SPLIT.split(bare))


def remember(value: str) -> None:
    """A secret value that no log line may show from now on (values shorter than 4 characters are
    not remembered: replacing every "a" or "1" in the logs would say nothing and hide everything)."""
    if len(value) >= 4:
        with _known_lock:
            _known.add(value)


def redact_text(text: str) -> str:
    """``text`` with every remembered secret and every URL password replaced by ``***``."""
    text = _USERINFO.sub(lambda m: m["head"] + REDACTED + m["at"], text)
    with _known_lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line as it may be written down: the value of every credential option (``--name
    value`` and ``--name=value``) and every URL password replaced by ``***``; the values are
    remembered (:func:`remember`) so the logs never show them either."""
    out: list[str] = []
    secret_next = False
    for arg in argv:
        if secret_next:
            remember(arg)
            out.append(REDACTED)
            secret_next = False
            continue
        if arg.startswith("-") and "=" in arg:
            name, value = arg.split("=", 1)
            if is_secret_name(name):
                remember(value)
                out.append(f"{name}={REDACTED}")
                continue
        elif arg.startswith("--") and is_secret_name(arg):
            secret_next = True
            out.append(arg)
            continue
        password = _USERINFO.search(arg)
        if password:
            remember(password["password"])
        out.append(redact_text(arg))
    return out


def redact_mapping(values: dict) -> dict:
    """A (nested) settings mapping with the values of credential-named keys replaced by ``***``."""
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out[k] = redact_mapping(v)
        elif is_secret_name(str(k)) and v not in (None, "", False):
            if isinstance(v, str):
                remember(v)
            out[k] = REDACTED
        else:
            out[k] = redact_text(v) if isinstance(v, str) else v
    return out


class RedactSecrets(logging.Filter):
    """Rewrites a log record's message (and its traceback text) with secrets replaced (:func:`redact_text`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
