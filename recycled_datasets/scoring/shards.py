"""Checkpointed job results, so a killed scoring run resumes where it stopped.

Results are appended as small parquet shards named by rank and sequence number (``rank0-00003.parquet``),
each written to a temporary name and renamed, so a shard is either whole or absent. A folder belongs to one
scoring setup (model, dtype, template, max length); its ``setup.json`` guards against mixing setups.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from recycled_datasets.errors import StoreError
from recycled_datasets.workdir.files import atomic_write_bytes, read_table, write_table

_SHARD = re.compile(r"^rank(\d+)-(\d+)\.parquet$")


class ShardStore:
    """Append-only (key -> loss) results in ``folder``; ``flush`` commits what is pending."""

    def __init__(self, folder: Path, setup: dict[str, str | int], *, rank: int = 0, flush_seconds: float = 30.0):
        self.folder = folder
        self.rank = rank
        self.flush_seconds = flush_seconds
        self.pending_keys: list[str] = []
        self.pending_losses: list[float] = []
        self._last_flush = time.monotonic()
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "setup.json"
        if meta.exists():
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
        elif rank == 0:
            atomic_write_bytes(meta, json.dumps(setup, sort_keys=True).encode("utf-8"))
        numbers = [
            int(m.group(2)) for p in folder.iterdir() if (m := _SHARD.match(p.name)) and int(m.group(1)) == rank
        ]
        self._next = max(numbers, default=-1) + 1

    def load(self) -> dict[str, float]:
        """Every committed result of every rank."""
        done: dict[str, float] = {}
        for path in sorted(self.folder.iterdir()):
            if _SHARD.match(path.name):
                # A damaged checkpoint holds no result worth keeping: its sequences are scored again.
                table = read_table(path, "the same score command (the checkpoint's sequences are scored again)")
                done.update(zip(table.column("key").to_pylist(), table.column("loss").to_pylist(), strict=True))
        return done

    def add(self, keys: list[str], losses: list[float]) -> None:
        self.pending_keys.extend(keys)
        self.pending_losses.extend(losses)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.pending_keys:
            return
        import pyarrow as pa

        path = self.folder / f"rank{self.rank}-{self._next:05d}.parquet"
        table = pa.table({"key": self.pending_keys, "loss": pa.array(self.pending_losses, pa.float64())})
        write_table(table, path)
        self._next += 1
        self.pending_keys, self.pending_losses = [], []
        self._last_flush = time.monotonic()
