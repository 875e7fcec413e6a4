"""Secrets never appear in what the project prints or writes, whatever a server echoes back.

The teacher token and the Hugging Face tokens are looked up where they live (environment, stored login) and
replaced by ``***`` in error lines, log records, stored refusal reasons and lock files, as is the
``user:password`` part of any URL.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

MASK = "***"
# The ``user:password@`` of a URL (``http://alice:pw@host/v1``): credentials, whoever typed them.
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_ENV = ("SRECYCLE_TEACHER_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")
_MIN_LENGTH = 6  # shorter values are not real tokens and would mask ordinary words


def known_secrets(extra: Iterable[str | None] = ()) -> list[str]:
    """Every token this process could send: ``extra``, the environment's, and the stored Hugging Face login."""
    found = [value for value in (*extra, *(os.environ.get(name) for name in _ENV)) if value]
    stored = _stored_login()
    if stored:
        found.append(stored)
    return sorted({s for s in found if len(s) >= _MIN_LENGTH}, key=len, reverse=True)


def _stored_login() -> str | None:
    """The token file of ``hf auth login``, read directly (no huggingface_hub import on this path)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def mask(text: str, extra: Iterable[str | None] = ()) -> str:
    """``text`` with every known secret, and the credentials of every URL in it, replaced by ``***``."""
    text = _URL_USERINFO.sub(MASK + "@", text)
    for secret in known_secrets(extra):
        text = text.replace(secret, MASK)
    return text


class MaskSecrets(logging.Filter):
    """A logging filter that masks secrets in the rendered message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True
