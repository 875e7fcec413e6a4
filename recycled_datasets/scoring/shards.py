"""Checkpoints of a scoring run, chunk by chunk, so a killed run resumes where it stopped.

The pairs are scored in fixed chunks (``ScoreConfig.chunk_pairs``). A finished chunk leaves one file of its
rows' scores, named by its index and a digest of its pairs' text (``chunk-00012-<digest>.parquet``), so a
resumed run skips it without tokenizing it again, and a chunk whose text changed is scored again. While a chunk
is in flight, its finished sequences are appended every ``flush_seconds`` as small files of (key, loss)
(``seq-00012-00003.parquet``), so a chunk killed halfway loses at most that much work; they are removed once the
chunk's file is written. Every file is written to a temporary name and renamed, so it is whole or absent. A
chunk belongs to one rank during a run, so ranks never write the same file; a later run with another number
of ranks picks up the same files. A folder belongs to one scoring setup (model, dtype, template, max length,
convention); its ``setup.json`` guards against mixing setups.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from recycled_datasets.errors import StoreError
from recycled_datasets.records import Pair
from recycled_datasets.workdir.files import atomic_write_bytes, digest_path, read_table, write_table

if TYPE_CHECKING:
    import polars as pl

logger = logging.getLogger(__name__)

_SEQUENCES = re.compile(r"^seq-(\d+)-(\d+)\.parquet$")
_REGENERATE = "the same score command (the chunk is scored again)"


def chunk_digest(pairs: Sequence[Pair]) -> str:
    """A short digest of the chunk's pairs (text and chat context, in order): its result file's name."""
    h = hashlib.blake2b(digest_size=8)
    for p in pairs:
        h.update("\x1f".join((p.instruction, p.input, p.output)).encode("utf-8", "surrogatepass"))
        for turn in p.context:
            h.update(f"\x1d{turn.role}\x1f{turn.content}".encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.hexdigest()


class ChunkStore:
    """The checkpoint folder of one scoring setup: finished chunks, and the finished sequences of open ones."""

    def __init__(
        self, folder: Path, setup: dict[str, str | int], *, write_setup: bool = True, discard_other: bool = False
    ):
        """Open ``folder`` for ``setup``; ``write_setup`` records it there (rank 0 only). A folder of another or
        an unreadable setup is an error, or with ``discard_other`` emptied and started over."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "setup.json"
        if meta.exists():
            try:
                self._check(meta, setup)
            except StoreError as e:
                if not discard_other:
                    raise
                logger.info("%s; starting over", e)
                shutil.rmtree(folder)
                folder.mkdir(parents=True)
        if write_setup and not meta.exists():
            atomic_write_bytes(meta, json.dumps(setup, sort_keys=True).encode("utf-8"))

    @staticmethod
    def _check(meta: Path, setup: dict[str, str | int]) -> None:
        folder = meta.parent
        try:
            found = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise StoreError(
                f"{meta} is unreadable ({type(e).__name__}), so the checkpoints beside it cannot be trusted; "
                f"delete {folder} and rerun (its sequences are scored again)"
            ) from e
        if found != setup:
            raise StoreError(
                f"{folder} holds scores of another setup ({found}); delete it or choose another output path"
            )

    def result_path(self, index: int, digest: str) -> Path:
        return self.folder / f"chunk-{index:05d}-{digest}.parquet"

    def load_result(self, index: int, digest: str) -> pl.DataFrame | None:
        """A finished chunk's rows, or None when it is not finished (or its file is damaged: scored again)."""
        import polars as pl

        path = self.result_path(index, digest)
        if not path.is_file():
            return None
        try:
            return pl.from_arrow(read_table(path, _REGENERATE))
        except StoreError as e:
            logger.warning("%s; scoring that chunk again", e)
            self._remove(path)
            return None

    def save_result(self, index: int, digest: str, frame: pl.DataFrame) -> None:
        """Commit a finished chunk, then drop its sequence files (a kill in between leaves only spare files)."""
        write_table(frame.to_arrow(), self.result_path(index, digest))
        self.drop_sequences(index)

    def _sequence_files(self, index: int) -> list[tuple[int, Path]]:
        found = []
        for path in self.folder.glob(f"seq-{index:05d}-*.parquet"):
            if (m := _SEQUENCES.match(path.name)) and int(m.group(1)) == index:
                found.append((int(m.group(2)), path))
        return sorted(found)

    def load_sequences(self, index: int) -> dict[str, float]:
        """The (key -> loss) results committed for chunk ``index`` before its run stopped."""
        done: dict[str, float] = {}
        for _, path in self._sequence_files(index):
            try:
                table = read_table(path, _REGENERATE)
            except StoreError as e:  # a damaged checkpoint holds no result worth keeping
                logger.warning("%s; its sequences are scored again", e)
                self._remove(path)
                continue
            done.update(zip(table.column("key").to_pylist(), table.column("loss").to_pylist(), strict=True))
        return done

    def drop_sequences(self, index: int) -> None:
        for _, path in self._sequence_files(index):
            self._remove(path)

    def sequences(self, index: int, flush_seconds: float) -> SequenceWriter:
        """A writer of chunk ``index``'s finished sequences, numbered after the ones already there."""
        numbers = [n for n, _ in self._sequence_files(index)]
        return SequenceWriter(self.folder, index, max(numbers, default=-1) + 1, flush_seconds)

    @staticmethod
    def _remove(path: Path) -> None:
        path.unlink(missing_ok=True)
        digest_path(path).unlink(missing_ok=True)


class SequenceWriter:
    """Appends (key -> loss) results of one chunk; ``flush`` commits what is pending as one small file."""

    def __init__(self, folder: Path, index: int, number: int, flush_seconds: float):
        self.folder = folder
        self.index = index
        self.number = number
        self.flush_seconds = flush_seconds
        self.keys: list[str] = []
        self.losses: list[float] = []
        self._last_flush = time.monotonic()

    def add(self, keys: list[str], losses: list[float]) -> None:
        self.keys.extend(keys)
        self.losses.extend(losses)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        import pyarrow as pa

        path = self.folder / f"seq-{self.index:05d}-{self.number:05d}.parquet"
        write_table(pa.table({"key": self.keys, "loss": pa.array(self.losses, pa.float64())}), path)
        self.number += 1
        self.keys, self.losses = [], []
        self._last_flush = time.monotonic()
