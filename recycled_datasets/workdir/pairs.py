"""The text a student's scores were made for: every variant of every row as a :class:`Pair`, and its digest.

``scores.json`` records the digest of its pairs; a later reader compares it with the digest of what the
reflections hold now, so scores are never paired with text they were not made for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from recycled_datasets.chat import contexts_of
from recycled_datasets.records import VARIANTS, Pair

if TYPE_CHECKING:
    import polars as pl


def pairs_of(reflections: pl.DataFrame) -> tuple[list[str], list[str], list[Pair]]:
    """Every variant of every row as a pair to score, row by row in source order, variants in VARIANTS order."""
    ids: list[str] = []
    variants: list[str] = []
    pairs: list[Pair] = []
    # A chat row's context is shared by its variants: ins/both replace the last user turn and keep the rest.
    for r, context in zip(reflections.iter_rows(named=True), contexts_of(reflections), strict=True):
        for v in VARIANTS:
            ids.append(r["id"])
            variants.append(v)
            pairs.append(Pair(r[f"{v}_instruction"], r[f"{v}_input"] or "", r[f"{v}_output"], context))
    return ids, variants, pairs


def text_digest(reflections: pl.DataFrame, rows: int = 2048) -> str:
    """``pairs_digest`` of the pairs of ``reflections``, made ``rows`` rows at a time (no whole list of pairs)."""
    return pairs_digest(
        pair for start in range(0, reflections.height, rows) for pair in pairs_of(reflections.slice(start, rows))[2]
    )


def pairs_digest(pairs: Iterable[Pair]) -> str:
    """A digest of every pair's text (and chat context), in order: the scores' record of their inputs."""
    h = hashlib.sha256()
    for p in pairs:
        h.update("\x1f".join((p.instruction, p.input, p.output)).encode("utf-8"))
        for turn in p.context:  # nothing for rows without context, so their digests stay as they were
            h.update(f"\x1d{turn.role}\x1f{turn.content}".encode())
        h.update(b"\x1e")
    return h.hexdigest()
