"""Source rows that ``datasets`` reads: a folder written by ``save_to_disk``, a folder in Hub layout, or a
Hub dataset id, optionally with a split (``ORG/NAME:SPLIT``).

Without a split, a source with one split or a ``train`` split gives that one; any other choice is the user's
to make, so the error lists the splits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recycled_datasets.errors import InputError

_SPLIT = re.compile(r"^(?P<name>[^:]+):(?P<split>[A-Za-z0-9_][A-Za-z0-9_.\-\[\]%:]*)$")
# Files that save_to_disk writes: one Dataset (state.json) or a DatasetDict (dataset_dict.json).
_SAVED_MARKERS = ("state.json", "dataset_dict.json")


def split_of(source: str) -> tuple[str, str | None]:
    """``ORG/NAME:SPLIT`` -> (``ORG/NAME``, ``SPLIT``); a name without a split (or an existing path) is kept whole."""
    match = _SPLIT.match(source)
    if match is None or Path(source).exists():
        return source, None
    return match["name"], match["split"]


def is_saved_to_disk(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in _SAVED_MARKERS)


def records_from_datasets(source: str) -> Iterable[tuple[int, Any]]:
    """(1-based row number, record) of every row of the chosen split of ``source``."""
    import datasets

    name, split = split_of(source)
    try:
        if is_saved_to_disk(Path(name)):
            loaded = datasets.load_from_disk(name)
            if isinstance(loaded, datasets.Dataset):
                if split is not None:
                    raise InputError(
                        f"holds one Dataset saved with save_to_disk, which has no split {split!r}; drop ':{split}'",
                        path=source,
                    )
                return enumerate(loaded, start=1)
        else:
            loaded = load_dataset(name, split=split) if split else load_dataset(name)
            if split is not None:
                return enumerate(loaded, start=1)
    except InputError:
        raise
    except Exception as e:  # datasets raises many types: not found, no network, bad layout, unknown split
        raise InputError(
            f"could not load it with datasets ({type(e).__name__}: {e}); give a JSON/JSONL/parquet file, a folder "
            "in Hub layout or written by save_to_disk, or a reachable Hub dataset id (ORG/NAME or ORG/NAME:SPLIT)",
            path=source,
        ) from e
    if split is not None:
        if split not in loaded:
            raise InputError(f"has no split {split!r}; its splits are {sorted(loaded)}", path=source)
        return enumerate(loaded[split], start=1)
    chosen = "train" if "train" in loaded else next(iter(loaded)) if len(loaded) == 1 else None
    if chosen is None:
        raise InputError(f"has splits {sorted(loaded)} and none is 'train'; pick one as {name}:SPLIT", path=source)
    return enumerate(loaded[chosen], start=1)


def load_dataset(name: str, *args: Any, **kwargs: Any) -> Any:
    """``datasets.load_dataset``, but a local folder is always read afresh.

    ``datasets`` caches a local folder's configs under the folder's base name and config name, not its full path
    or its files' contents, so two releases both named ``dataset`` (or one rebuilt in place) can be served each
    other's cached rows or features. A local folder is prepared again, in a cache folder of its own keyed by its
    path and its files' sizes and times (small next to what a stale read costs).
    """
    import datasets

    from recycled_datasets.workdir.files import fingerprint

    local = Path(name).expanduser()
    if local.exists():
        kwargs.setdefault("download_mode", datasets.DownloadMode.FORCE_REDOWNLOAD)
        key = fingerprint(local)[:16]
        kwargs.setdefault("cache_dir", str(Path(datasets.config.HF_DATASETS_CACHE) / "srecycle-local" / key))
    return datasets.load_dataset(name, *args, **kwargs)
