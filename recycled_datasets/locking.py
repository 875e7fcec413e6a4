"""One writer at a time per workdir and per answer store.

Every command that writes into a workdir (``build``, ``select``, ``import-reflections``), into an answer
store (``reflect``, ``build``) or to a score output holds an exclusive lock on a ``.srecycle.lock`` file
there for as long as it runs; commands that only read a workdir (``push``) hold a shared one, so they never
read one run's report beside another run's subset. A second writer does not wait: it stops at once with a
one-line error that names the holder (pid, command, since when), so nothing is ever mixed.

The lock is an advisory ``flock``: the operating system drops it when its process ends, however it ends, so
the lock of a killed run is simply taken over by the next one. The file itself stays (it is tiny) and holds
the current holder's description for the error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from recycled_datasets.errors import LockError, RecycledError

LOCK_NAME = ".srecycle.lock"


def _holder() -> dict[str, object]:
    from recycled_datasets.secrets import mask

    argv = [os.path.basename(sys.argv[0]) or "srecycle", *sys.argv[1:]]
    command = mask(" ".join(argv))  # a teacher URL may hold a password; the lock file is readable by others
    return {"pid": os.getpid(), "command": command[:200], "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _describe(path: Path) -> str:
    """Who holds the lock; the holder writes its description just after taking it, so look again briefly."""
    for _ in range(40):
        try:
            found = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (OSError, json.JSONDecodeError):
            found = {}
        if not isinstance(found, dict):  # not what a holder writes: no one to name
            found = {}
        pid = found.get("pid")
        if isinstance(pid, int) and process_alive(pid):
            return f"pid {pid} ({found.get('command', '?')}, since {found.get('since', '?')})"
        time.sleep(0.05)
    return "another srecycle process"


def make_folder(folder: Path, *, what: str, error: type[RecycledError] = LockError) -> Path:
    """``folder``, made with its parents where absent; one that cannot be made is an ``error`` naming ``what``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"cannot create {what} {folder} ({e.strerror})") from e
    return folder


@contextlib.contextmanager
def locked(folder: Path, *, what: str, shared: bool = False, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if absent) for the body; ``what`` names the folder in the error.

    ``name`` picks another lock file in the folder (one output file among others, e.g. a score output).
    """
    folder = make_folder(folder, what=what)
    path = folder / name
    try:  # never through a link: O_CREAT would create or truncate the file it points to
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if path.is_symlink():
            raise LockError(
                f"the lock file {path} is a symbolic link; srecycle never writes through one: remove the link"
            ) from e
        raise LockError(f"cannot open the lock file {path} ({e.strerror}); the folder must be writable") from e
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockError(
                f"{what} {folder} is in use by {_describe(path)}; wait for it to finish (a lock left by a "
                "killed process is taken over automatically)"
            ) from None
        if not shared:
            data = (json.dumps(_holder()) + "\n").encode("utf-8")
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        if what == "workdir":  # checked under the lock, so no other srecycle run changes it meanwhile
            from recycled_datasets.workdir.layout import Workdir

            Workdir(folder).check_links()
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def locked_all(*folders: tuple[Path, str], shared: bool = False) -> Iterator[None]:
    """Several locks, taken in the order given (always workdir first, then its store) and released together."""
    with contextlib.ExitStack() as stack:
        seen: set[Path] = set()
        for folder, what in folders:
            key = Path(folder).resolve()
            if key not in seen:
                seen.add(key)
                stack.enter_context(locked(folder, what=what, shared=shared))
        yield
