"""The teacher answer store: every answer committed the moment it arrives, keyed by what was asked.

The teacher pass is the paid part of the method, so no answer may be paid for twice. Each answer is one
SQLite transaction in WAL mode (``synchronous=FULL`` by default: the commit is on disk before the next request
is sent). A crashed or killed run loses only the requests that were in flight; a rerun looks every request up
by its key first. The key is a hash of the teacher model, the prompt version and the full request content
(messages or prompt, and every generation parameter), so a change to any of them is a new request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recycled_datasets.errors import StoreError
from recycled_datasets.locking import make_folder

logger = logging.getLogger(__name__)

STORE_FILE = "answers.sqlite"
SCHEMA_VERSION = 1
ANSWER_OK = "ok"
ANSWER_REJECTED = "rejected"  # the server refused the request for good (a 422): recorded, never resent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    teacher TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    text TEXT,
    error TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created REAL NOT NULL
);
"""

# The columns of a StoredAnswer, in its order.
_ANSWER_COLUMNS = "key, status, text, error, finish_reason, prompt_tokens, completion_tokens"


def request_key(teacher: str, prompt_version: str, request: dict[str, Any]) -> str:
    """The cache key of one teacher request: stable across runs, processes and machines."""
    content = {"teacher": teacher, "prompt_version": prompt_version, "request": request}
    payload = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """One stored teacher answer (``status`` ok) or a permanent refusal (``status`` rejected, ``error`` why)."""

    key: str
    status: str
    text: str | None
    error: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


class AnswerStore:
    """A folder holding ``answers.sqlite``. Open it with :meth:`open`; close it (or use ``with``) when done."""

    def __init__(self, path: Path, connection: sqlite3.Connection):
        self.path = path
        self._db = connection

    @classmethod
    def open(cls, folder: Path, *, durable: bool = True) -> AnswerStore:
        """Open (or create) the store in ``folder``.

        ``durable`` commits with ``synchronous=FULL`` (survives power loss); without it, ``NORMAL`` still
        survives a killed process, which is all a crash of this program can do.
        """
        path = make_folder(folder, what="the teacher store folder", error=StoreError) / STORE_FILE
        try:
            db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise StoreError(
                    f"{path} was written by another version of srecycle (schema {row[0]}, expected "
                    f"{SCHEMA_VERSION}); use a new --store folder"
                )
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path} is not a usable teacher store ({e}); move it away or use a new --store") from e
        return cls(path, db)

    def __enter__(self) -> AnswerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def remember_teacher(self, signature: str, handshake: dict[str, Any]) -> None:
        """Record what the servers of ``signature`` told at their handshake (model name, limits)."""
        self._db.execute(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            (f"teacher:{signature}", json.dumps(handshake, sort_keys=True)),
        )

    def recall_teacher(self, signature: str) -> dict[str, Any] | None:
        """The handshake last recorded for ``signature``, so a run whose answers are all stored needs no server."""
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (f"teacher:{signature}",)).fetchone()
        if row is None:
            return None
        try:
            found = json.loads(row[0])
        except json.JSONDecodeError as e:
            raise StoreError(f"{self.path}: the recorded teacher handshake is unreadable ({e})") from e
        return found if isinstance(found, dict) else None

    def get(self, key: str) -> StoredAnswer | None:
        row = self._db.execute(f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE key = ?", (key,)).fetchone()
        return StoredAnswer(*row) if row else None

    def put(
        self,
        key: str,
        *,
        teacher: str,
        prompt_version: str,
        request: dict[str, Any],
        status: str,
        text: str | None = None,
        error: str | None = None,
        finish_reason: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        """Commit one answer now (its own transaction). A second answer for the same key is ignored."""
        if status not in (ANSWER_OK, ANSWER_REJECTED):
            raise ValueError(f"unknown answer status {status!r}")
        asked = (key, teacher, prompt_version, json.dumps(request, sort_keys=True, ensure_ascii=False), status)
        row = (*asked, text, error, finish_reason, prompt_tokens, completion_tokens, time.time())
        try:
            self._db.execute("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"could not write to the teacher store {self.path}: {e}") from e

    def forget_rejected(self) -> int:
        """Drop the recorded refusals so that they are sent again (after a server's limits were raised)."""
        return self._db.execute("DELETE FROM answers WHERE status = ?", (ANSWER_REJECTED,)).rowcount

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def requests(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every stored (status, request), for audits and tests of what was paid for."""
        for status, request in self._db.execute("SELECT status, request FROM answers ORDER BY created"):
            yield status, json.loads(request)

    def answers(self) -> Iterator[tuple[dict[str, Any], StoredAnswer]]:
        """Every stored (request, answer), oldest first: what a teacher actually replied, for showing it."""
        for request, *fields in self._db.execute(f"SELECT request, {_ANSWER_COLUMNS} FROM answers ORDER BY created"):
            yield json.loads(request), StoredAnswer(*fields)

    def usage(self) -> dict[str, int]:
        """Answers and tokens stored so far, per status."""
        out: dict[str, int] = {}
        for status, count, prompt, completion in self._db.execute(
            "SELECT status, COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) "
            "FROM answers GROUP BY status"
        ):
            out[f"{status}_answers"] = int(count)
            out[f"{status}_prompt_tokens"] = int(prompt)
            out[f"{status}_completion_tokens"] = int(completion)
        return out
