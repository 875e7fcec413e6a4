"""Typed errors. Each is raised once, with a message that tells the user what to do.

The CLI turns any :class:`RecycledError` into one line on stderr and exit code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations


class RecycledError(Exception):
    """Base class of every error the user can fix."""


class InputError(RecycledError):
    """A source file or row is unreadable or invalid. The message names the file, row and field."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None, field: str | None = None):
        self.path, self.row, self.field = path, row, field
        where = ", ".join(
            part
            for part in (path, f"row {row}" if row is not None else None, f"field '{field}'" if field else None)
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(RecycledError):
    """An option or configuration value is invalid (bad template name, unknown student, ...)."""


class ModelError(RecycledError):
    """A model or tokenizer cannot be found or loaded."""


class TeacherError(RecycledError):
    """The teacher server is unreachable, misconfigured, or refused the work."""


class Rejected(TeacherError):
    """The teacher refused one request for good (e.g. HTTP 422: prompt too long); resending cannot help.

    The reflect stage records it for its variant and goes on; it stops a run only where nothing records it.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class WriteError(RecycledError):
    """A file could not be written (the disk is full, the folder is read-only): nothing is wrong with what was
    read, and what was finished before is kept."""


class StoreError(RecycledError):
    """A work store (teacher answers, score shards) is corrupt or belongs to a different job."""


class HubError(RecycledError):
    """A Hub operation failed (auth, missing repo, name conflict, network).

    ``status`` is the HTTP status the Hub answered (401, 403, 404, 409, ...), so a caller can tell a missing
    permission from a conflict without parsing the message; None when no answer came (a network failure).
    """

    def __init__(self, message: str, *, status: int | None = None):
        self.status = status
        super().__init__(message)


class LockError(RecycledError):
    """Another srecycle process is writing to the same workdir, answer store or output."""
