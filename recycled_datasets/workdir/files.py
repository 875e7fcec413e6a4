"""Durable, deterministic, verified file writes shared by every stage.

Whole files appear atomically (a temporary name of this run's own, then a rename), so a reader or a resumed
run never sees half a file; the same data always gives the same bytes (fixed row groups and compression, no
varying metadata), so two builds from the same inputs are byte-identical.

Every stage file also gets a digest beside it (``.NAME.sha256``), and parquet carries page checksums; the
readers here check both, so a damaged or truncated file is a one-line error that names it and the command
that makes it again, never a traceback and never silently changed numbers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from recycled_datasets.errors import StoreError, WriteError

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa


ROW_GROUP_ROWS = 100_000  # bounded row groups keep the Hub's viewer and streaming readers fast


def fingerprint(root: Path, h: Any = None) -> str:
    """A digest of a file or folder's resolved path and each file's name, size and modification time: cheap, and
    different whenever the files are rewritten. ``h`` (a hashlib object) is updated in place when given."""
    h = h if h is not None else hashlib.sha256()
    root = Path(root).resolve()
    h.update(f"{root}\0".encode())
    for path in sorted([root] if root.is_file() else (p for p in root.rglob("*") if p.is_file())):
        stat = path.stat()
        h.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return h.hexdigest()


def digest_path(path: Path) -> Path:
    """Where the digest of ``path`` is kept."""
    return path.with_name(f".{path.name}.sha256")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _temp_name(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp's file is private; stage and release files are ordinary ones
    return Path(name)


def _commit(tmp: Path, path: Path, digest: bool) -> Path:
    """Move a finished temporary file into place, its digest first (a reader then checks the new bytes)."""
    try:
        if digest:
            sidecar = digest_path(path)
            side_tmp = _temp_name(sidecar)
            try:
                side_tmp.write_text(_sha256(tmp) + "\n", encoding="ascii")
                os.replace(side_tmp, sidecar)
            finally:
                side_tmp.unlink(missing_ok=True)  # gone after the rename; left only by a failed write
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cannot_write(path: Path, error: OSError) -> WriteError:
    """The error for a write that failed on the disk's side (full, read-only, a name too long)."""
    why = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space there (or use another folder) and rerun; what was finished before is kept"
    else:
        hint = "check that the folder is writable and rerun; what was finished before is kept"
    return WriteError(f"cannot write {path} ({why}); {hint}")


def atomic_write_bytes(path: Path, data: bytes, *, digest: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary name of this run's own and a rename.

    ``digest`` records the file's sha256 beside it for :func:`verify` (release files, which the Hub
    checks itself, skip it).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(path)
    except OSError as e:
        raise cannot_write(path, e) from e
    try:
        tmp.write_bytes(data)
        return _commit(tmp, path, digest)
    except OSError as e:
        raise cannot_write(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


T = TypeVar("T")


def replace_dir(final: Path, write: Callable[[Path], T], *, keep_existing: bool = False) -> T:
    """Make the folder ``final`` whole or not at all: ``write`` fills a folder of this run's own beside it,
    which then takes ``final``'s place (the previous folder is put back if that fails). ``keep_existing``
    keeps a ``final`` that another process finished meanwhile and drops this run's copy. Returns what
    ``write`` returns."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.srecycle-", dir=final.parent))
    old: Path | None = None
    try:
        staging.chmod(0o755)  # mkdtemp's folder is private; these are ordinary folders
        result = write(staging)
        if final.exists() and keep_existing:
            shutil.rmtree(staging)
            return result
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / "tree")
        os.replace(staging, final)
    except BaseException:
        if old is not None and not final.exists():  # put the previous folder back where it was
            os.replace(old / "tree", final)
            old.rmdir()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)
    return result


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """JSON with a fixed layout (indent 2, keys in the order given), written atomically."""
    return atomic_write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def write_table(table: pa.Table, path: Path, *, digest: bool = True) -> Path:
    """Write an arrow table as parquet with the project's fixed options (page checksums on), atomically."""
    write_tables([table], table.schema, path, digest=digest)
    return path


def write_tables(tables: Iterable[pa.Table], schema: pa.Schema, path: Path, *, digest: bool = True) -> tuple[int, int]:
    """Write a stream of tables of ``schema`` as one parquet file, atomically, holding one table at a time.

    Each table becomes row groups of at most :data:`ROW_GROUP_ROWS` rows; one table gives the bytes
    :func:`write_table` gives. Returns the rows and the in-memory bytes (arrow's ``nbytes``) written.
    """

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(path)
    except OSError as e:
        raise cannot_write(path, e) from e
    rows = nbytes = 0
    try:
        with _parquet_writer(tmp, schema) as writer:
            for table in tables:
                writer.write_table(table.replace_schema_metadata(None), row_group_size=ROW_GROUP_ROWS)
                rows, nbytes = rows + table.num_rows, nbytes + table.nbytes
        _commit(tmp, path, digest)
    except OSError as e:  # pyarrow's own IO errors are OSErrors too
        raise cannot_write(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)
    return rows, nbytes


def _parquet_writer(tmp: Path, schema: pa.Schema) -> Any:
    import pyarrow.parquet as pq

    return pq.ParquetWriter(tmp, schema.remove_metadata(), **_PARQUET_OPTIONS)


_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "store_schema": False,
    "write_page_checksum": True,
}


# ---- verified reads ---------------------------------------------------------------------------------------
def _damaged(path: Path, why: str, regenerate: str) -> StoreError:
    return StoreError(f"{path} is damaged ({why}); delete it and rerun `{regenerate}` to make it again")


def verify(path: Path, regenerate: str) -> Path:
    """Check ``path`` against the digest recorded when it was written (files without one are taken as they are).

    ``regenerate`` is the command that makes the file again; it ends the error message.
    """
    path = Path(path)
    sidecar = digest_path(path)
    if not sidecar.is_file():
        return path
    try:
        expected = sidecar.read_text(encoding="ascii").strip()
        found = _sha256(path)
    except (OSError, UnicodeDecodeError) as e:
        raise _damaged(path, f"unreadable: {type(e).__name__}", regenerate) from e
    if found != expected:
        raise _damaged(path, "its content differs from what srecycle wrote", regenerate)
    return path


def read_table(path: Path, regenerate: str) -> pa.Table:
    """A parquet file written by :func:`write_table`, checked (digest and page checksums) as it is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    verify(path, regenerate)
    try:
        return pq.read_table(path, page_checksum_verification=True)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise _damaged(path, f"not readable as parquet: {' '.join(str(e).split())[:160]}", regenerate) from e


def read_frame(path: Path, regenerate: str) -> pl.DataFrame:
    """:func:`read_table` as a polars frame."""
    import polars as pl

    return pl.from_arrow(read_table(path, regenerate))


def read_json(path: Path, regenerate: str) -> dict[str, Any]:
    """A JSON object written by :func:`write_json`, checked against its digest."""
    verify(path, regenerate)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(path, f"not readable as JSON: {type(e).__name__}", regenerate) from e
    if not isinstance(data, dict):
        raise _damaged(path, "not a JSON object", regenerate)
    return data


def recorded_digest(path: Path) -> str:
    """The sha256 recorded beside a stage file, or, where it was lost (``cp dir/*`` skips dot-files), the file's."""
    try:
        return digest_path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return hashlib.sha256(path.read_bytes()).hexdigest()
