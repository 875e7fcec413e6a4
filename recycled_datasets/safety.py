"""What the project may delete or replace: only what it can prove it wrote.

A release folder (``--to-dir``, ``DIR/dataset``) carries a manifest, ``.srecycle-release.json``, listing the
files the project wrote there. A later run replaces such a folder only when it holds nothing else; a
non-empty folder without a manifest is someone else's and is refused (``--force`` is the one way past that).
Filesystem roots and the home folder are never targets, and an output path never equals an input path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from recycled_datasets.errors import ConfigError

MANIFEST_NAME = ".srecycle-release.json"
# Release files as earlier versions wrote them into DIR/dataset (before manifests): accepted there only.
_LEGACY_RELEASE_FILE = re.compile(
    r"^(README\.md|[^/]+/train-\d{5}-of-\d{5}\.parquet|[^/]+/report\.json|plots/[^/]+/[^/]+\.png)$"
)


def check_target(path: Path, what: str) -> Path:
    """Refuse a filesystem root or the home folder (or a folder above it) as a folder the run will replace."""
    resolved = Path(path).expanduser().resolve()
    home = Path.home().resolve()
    if resolved == Path(resolved.anchor) or resolved == home or home.is_relative_to(resolved):
        raise ConfigError(f"{what} {path} is a filesystem root or your home folder; give a folder of its own")
    return resolved


def check_distinct(output: Path, inputs: Iterable[str | Path], what: str = "--output") -> None:
    """An output that is one of the inputs would replace the user's data with ours."""
    out = Path(output).expanduser().resolve()
    for source in inputs:
        candidate = Path(source).expanduser()
        if candidate.exists() and candidate.resolve() == out:
            raise ConfigError(f"{what} {output} is the input file itself; write to another path")


def read_manifest(folder: Path) -> list[str] | None:
    """The files a release folder's manifest lists, or None when it has no (readable) manifest."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    return [str(f) for f in files] if isinstance(files, list) else None


def write_manifest(folder: Path, files: Iterable[str]) -> None:
    """Record (last) the files the project wrote into ``folder``."""
    from recycled_datasets.workdir.files import atomic_write_bytes

    data = {"written_by": "srecycle", "files": sorted(files)}
    atomic_write_bytes(Path(folder) / MANIFEST_NAME, (json.dumps(data, indent=2) + "\n").encode("utf-8"), digest=False)


def check_replaceable(dest: Path, *, force: bool = False, legacy: bool = False) -> None:
    """``dest`` may be absent, empty, or a release folder holding exactly what its manifest lists.

    ``legacy`` also accepts a folder of release files without a manifest (``DIR/dataset`` of an older
    version); ``force`` accepts anything except a root or the home folder.
    """
    dest = Path(dest)
    check_target(dest, "the release folder")
    if not dest.exists() and not dest.is_symlink():
        return
    if dest.is_symlink() or not dest.is_dir():
        raise ConfigError(f"{dest}: the release folder is a file or a link; give a folder")
    if force:
        return
    entries = list(dest.rglob("*"))
    if not entries:
        return
    files = {p.relative_to(dest).as_posix() for p in entries if p.is_file() or p.is_symlink()}
    listed = read_manifest(dest)
    if listed is not None:
        owned = set(listed) | {MANIFEST_NAME}
        parents = {str(Path(f).parent.as_posix()) for f in owned}
        parents |= {p.as_posix() for f in owned for p in Path(f).parents}
        dirs = {p.relative_to(dest).as_posix() for p in entries if p.is_dir() and not p.is_symlink()}
        foreign = sorted((files - owned) | (dirs - parents))
    elif legacy:
        foreign = sorted(f for f in files if not _LEGACY_RELEASE_FILE.match(f)) or (
            ["(empty folders)"] if not files else []
        )
    else:
        foreign = sorted(files) or ["(empty folders)"]
    if foreign:
        raise ConfigError(
            f"{dest} is not empty and not a release folder srecycle wrote (it holds {foreign[0]}); "
            + ("move it away" if legacy else "give an empty or new folder, or pass --force to replace it")
        )
