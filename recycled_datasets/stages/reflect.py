"""The reflect stage: every source row's four variants from the teacher, into DIR/reflections.parquet.

Rows already in the workdir are reused, so the teacher is contacted only for rows that have no reflections
yet, and a workdir that holds them all builds with no teacher at all. The table only grows (ordered by source
index): a smaller build never forces a later one to ask again. One workdir never mixes teachers or prompt
versions. ``reflections.json`` records the quality gates the rows were judged with; when the gates change,
the rows are judged again from the teacher's stored answers without a call
(docs/method.md, section 2, "When a reflection does not count").
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recycled_datasets.chat import reflection_columns, with_context
from recycled_datasets.errors import ConfigError
from recycled_datasets.records import REFLECTION_COLUMNS, VARIANTS, SourceRow
from recycled_datasets.stages.base import ReflectStageStats, Stage, counts
from recycled_datasets.stages.source import rows_from_frame
from recycled_datasets.teacher.gates import GateConfig, reason_counts
from recycled_datasets.workdir import Workdir
from recycled_datasets.workdir.tables import has_reflections, read_reflections, rows_of, write_reflections

if TYPE_CHECKING:
    import polars as pl

    from recycled_datasets.teacher.config import TeacherClient

logger = logging.getLogger(__name__)


def gate_summary(frame: pl.DataFrame) -> dict[str, int]:
    """Variants that fell back or failed, per reason named in their detail (a gate, ``unparsed``, ...)."""
    return reason_counts(d for v in VARIANTS[1:] for d in frame[f"{v}_detail"].to_list())


def reflections_meta(
    frame: pl.DataFrame,
    *,
    teacher: str,
    teacher_revision: str,
    prompt_version: str,
    source: str,
    license: str,
    gates: dict[str, Any] | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """reflections.json: who made the table from what; a teacher run also records the gates its rows were
    judged with, the output budget its requests had (both needed to judge them again from the store) and the
    fallbacks per reason."""
    meta: dict[str, Any] = {
        "teacher": teacher,
        "teacher_revision": teacher_revision,
        "prompt_version": prompt_version,
        "source": source,
        "rows": frame.height,
        "license": license,
    }
    if gates is not None:
        meta.update(gates=gates, max_new_tokens=max_new_tokens, fallback_reasons=gate_summary(frame))
    return meta


@dataclass(frozen=True)
class PromptFiles:
    """The user's reflection prompt files (``None``: the packaged prompt) and the version their answers are cached
    under (``None``: a hash of the files). See ``recycled_datasets/teacher/prompts.py`` for the file forms."""

    instruction: Path | None = None
    response: Path | None = None
    version: str | None = None

    @classmethod
    def of(cls, instruction: str | Path | None, response: str | Path | None, version: str | None) -> PromptFiles:
        """The prompt files, read once now so that a missing or malformed file fails before any work."""
        from recycled_datasets.teacher.prompts import load_prompts

        files = cls(
            Path(instruction) if instruction is not None else None,
            Path(response) if response is not None else None,
            version,
        )
        load_prompts(files.instruction, files.response, files.version)
        return files


def _frame_of(result: Any, rows: Sequence[SourceRow]) -> pl.DataFrame:
    import polars as pl

    frame = result.table.select(REFLECTION_COLUMNS).with_columns(
        pl.Series("source_index", [r.index for r in rows], dtype=pl.Int64)
    )
    return with_context(frame, rows)


@dataclass
class ReflectStage(Stage):
    """Reflections for ``rows`` (see the module docstring).

    Attributes:
        workdir: the workdir.
        rows: this build's source rows.
        teacher: server URL(s) or ``local[:MODEL]``; needed only for rows without reflections (and to re-judge).
        source, license: what reflections.json records of the rows' origin.
        max_new_tokens: the output budget per teacher call (``None``: the one the workdir's reflections were made
            with, else the teacher stage's default), so that one workdir's requests share one budget.
        gates: the quality gates the teacher's sections are judged with.
        prompts: the user's prompt files (``None``: the packaged prompts).
        client: how the teacher client talks to its servers (``None``: its defaults).
    """

    name = "reflect"

    workdir: Workdir
    rows: list[SourceRow]
    teacher: str | None
    source: str
    license: str
    max_new_tokens: int | None = None
    gates: GateConfig | None = None
    prompts: PromptFiles | None = None
    client: TeacherClient | None = None

    def __post_init__(self) -> None:
        self.gates = self.gates or GateConfig()
        self.prompts = self.prompts or PromptFiles()

    @functools.cached_property
    def _existing(self) -> tuple[pl.DataFrame | None, dict[str, Any] | None]:
        """The workdir's reflections before this run (read once: done() and the run share them)."""
        return read_reflections(self.workdir) if has_reflections(self.workdir) else (None, None)

    def done(self) -> bool:
        """Every row is in the table and was judged with these gates (or came from the reference authors)."""
        existing, meta = self._existing
        if existing is None or meta is None:
            return False
        have = set(existing["id"].to_list())
        judged = meta["teacher"].startswith("reference:") or meta.get("gates") == self.gates.as_dict()
        return judged and all(r.id in have for r in self.rows)

    def _config(self, budget: int | None, **changes: Any) -> Any:
        from recycled_datasets.teacher import ReflectConfig

        assert self.teacher is not None and self.gates is not None and self.prompts is not None
        config = ReflectConfig(
            teacher=self.teacher,
            store_dir=self.workdir.teacher,
            max_new_tokens=budget,
            gates=self.gates,
            instruction_prompt=self.prompts.instruction,
            response_prompt=self.prompts.response,
            prompt_version=self.prompts.version,
            **({"client": self.client} if self.client is not None else {}),
        )
        return replace(config, **changes)

    def _rejudge(self, existing: pl.DataFrame, meta: dict[str, Any]) -> tuple[pl.DataFrame, Any]:
        """Judge the rows again under the gates from the stored answers, without calling the teacher."""
        from recycled_datasets.teacher import reflect_rows

        # The stored answers are keyed by the request, budget included: ask with the budget they had.
        config = self._config(meta["max_new_tokens"], store_only=True)
        rows = rows_from_frame(existing)
        result = reflect_rows(rows, config, expect=(meta["teacher"], meta["prompt_version"]))
        return _frame_of(result, rows), result.stats

    def _needs_rejudge(self, meta: dict[str, Any]) -> bool:
        assert self.gates is not None
        if meta["teacher"].startswith("reference:") or meta.get("gates") == self.gates.as_dict():
            return False
        if "max_new_tokens" not in meta:
            # Made before the gates were recorded: the output budget its requests had (part of their keys) is
            # unknown, and guessing it wrong would turn every stored answer into a fallback.
            logger.warning(
                "the reflections in %s were made before quality gates were recorded; they stay as they are (to "
                "judge them, remove %s and build again with the same --teacher and --max-new-tokens: the answers "
                "stored in %s are reused)",
                self.workdir.root,
                self.workdir.reflections,
                self.workdir.teacher,
            )
            return False
        if self.teacher is None:
            logger.warning(
                "the reflections in %s were judged with other quality gates; pass --teacher (the same one) to "
                "judge them again from the stored answers (no teacher call is made)",
                self.workdir.root,
            )
            return False
        return True

    def _reflect_missing(self, missing: list[SourceRow], meta: dict[str, Any] | None) -> tuple[pl.DataFrame, Any]:
        from recycled_datasets.teacher import reflect_rows

        if self.teacher is None:
            raise ConfigError(
                f"{len(missing)} of {len(self.rows)} rows have no reflections in {self.workdir.root} yet: "
                "pass --teacher URL (a TGI/vLLM/llama.cpp server) or --teacher local"
            )
        if meta is not None and meta["teacher"].startswith("reference:"):
            raise ConfigError(
                f"{self.workdir.root} holds the reference authors' reflections ({meta['teacher']}), which lack "
                f"{len(missing)} of this build's rows; build from those rows (omit --source) or use a new --workdir"
            )
        budget = self.max_new_tokens
        if budget is None and meta is not None and isinstance(meta.get("max_new_tokens"), int):
            budget = meta["max_new_tokens"]  # the budget (part of the request keys) the workdir's rows were asked with
        config = self._config(budget)
        # The run checks, right after its handshake and before any call, that new rows would come from the
        # teacher and prompt version of the existing ones: one workdir never mixes them.
        expect = (meta["teacher"], meta["prompt_version"]) if meta is not None else None
        result = reflect_rows(missing, config, expect=expect)
        made = {
            "teacher": result.teacher_id,
            "teacher_revision": result.teacher_revision,
            "prompt_version": result.prompt_version,
            "max_new_tokens": config.output_budget,
        }
        return _frame_of(result, missing), (result.stats, made)

    def _run(self) -> ReflectStageStats:
        import polars as pl

        existing, meta = self._existing
        have = set(existing["id"].to_list()) if existing is not None else set()
        missing = [row for row in self.rows if row.id not in have]
        stats = ReflectStageStats(self.name, reused=len(self.rows) - len(missing), made=len(missing))
        changed = False
        if existing is not None and meta is not None and self._needs_rejudge(meta):
            existing, stats.rejudge_calls = self._rejudge(existing, meta)
            stats.rejudged, changed = existing.height, True
        pool = existing
        if missing:
            new, (stats.teacher_calls, made) = self._reflect_missing(missing, meta)
            # diagonal: a context column on one side only is null (no earlier turns) on the other
            pool = new if existing is None else pl.concat([existing, new], how="diagonal_relaxed")
            pool = pool.sort("source_index", "id", maintain_order=True).select(reflection_columns(pool.columns))
            meta, changed = {**(meta or {}), **made}, True
        assert pool is not None and meta is not None  # read from the workdir or made just now
        if changed:
            assert self.gates is not None
            meta = reflections_meta(
                pool,
                teacher=meta["teacher"],
                teacher_revision=meta["teacher_revision"],
                prompt_version=meta["prompt_version"],
                source=self.source,
                license=self.license,
                gates=self.gates.as_dict(),
                max_new_tokens=meta.get("max_new_tokens", self.max_new_tokens),
            )
            write_reflections(self.workdir, pool, meta)
        frame = rows_of(pool, [r.id for r in self.rows])
        stats.teacher, stats.rows, stats.fallbacks = meta["teacher"], frame.height, counts(gate_summary(frame))
        return stats


def reflected_rows(workdir: Workdir | Path, ids: Sequence[str]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The reflections of ``ids`` (in that order) and reflections.json, as the later stages read them."""
    frame, meta = read_reflections(workdir)
    return rows_of(frame, ids), meta
