"""The build: source rows -> reflections (teacher) -> scores (student) -> selection -> DIR/dataset.

Each stage writes its output into the workdir (see the workdir contract) and is skipped when its output is
already there for the same inputs, so a second student on the same workdir is a scoring job only: the
teacher is not contacted at all when every row already has its reflections. Every file is written with
fixed options and in source order, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recycled_datasets.chat import context_from_json, contexts_of, reflection_columns, with_context
from recycled_datasets.errors import ConfigError, InputError, StoreError
from recycled_datasets.models import StudentSpec
from recycled_datasets.records import (
    CONTEXT_COLUMN,
    REFLECTION_COLUMNS,
    SCORE_COLUMNS,
    STATUS_OK,
    SUBSET_COLUMNS,
    VARIANTS,
    Pair,
    SourceRow,
    assign_ids,
)
from recycled_datasets.scoring import ScoreConfig
from recycled_datasets.selection import (
    Selection,
    SelectionConfig,
    SelectionReport,
    select_rows,
    subset_frame,
)
from recycled_datasets.workdir.files import (
    arrow_schema,
    atomic_write_bytes,
    read_frame,
    read_json,
    write_json,
    write_parquet,
)
from recycled_datasets.teacher.gates import GateConfig, reason_counts

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

logger = logging.getLogger(__name__)

# The public Hub sets that ``--source alpaca|wizardlm`` name, and the licenses they are published under.
HUB_SOURCES: dict[str, str] = {"alpaca": "tatsu-lab/alpaca", "wizardlm": "WizardLMTeam/WizardLM_evol_instruct_70k"}
SOURCE_LICENSES: dict[str, str] = {"tatsu-lab/alpaca": "cc-by-nc-4.0"}
REFERENCE_SPLITS: dict[str, str] = {
    "origin": "ori",
    "reflect_instruction": "ins",
    "reflect_response": "res",
    "reflect_both": "both",
}
REFERENCE_PROMPT_VERSION = "reference"
SAMPLE_NAME = "sample"
# Config and folder names a student key may not take: the stage configs and the release tree's folders.
RESERVED_KEYS = frozenset({"reflections", "scores", "plots", "data", "dataset"})


# ---- files ------------------------------------------------------------------------------------------------
def reflections_path(workdir: Path) -> Path:
    return Path(workdir) / "reflections.parquet"


def student_dir(workdir: Path, key: str) -> Path:
    return Path(workdir) / "students" / key


def stage_command(workdir: Path, name: str, key: str | None = None) -> str:
    """The command that writes the stage file ``name`` (of student ``key``) in ``workdir`` again."""
    if name.startswith("reflections"):
        return f"srecycle build --workdir {workdir} --source SOURCE --teacher TEACHER (stored answers are reused)"
    if name.startswith("scores"):
        return f"srecycle build --workdir {workdir} --student {key}"
    return f"srecycle select --workdir {workdir} --student {key}"


def reflections_schema(*, context: bool = False) -> pa.Schema:
    """The reflections table's schema; ``context`` adds the chat rows' earlier turns (JSON text, null if none)."""
    import pyarrow as pa

    columns = (*REFLECTION_COLUMNS, CONTEXT_COLUMN) if context else REFLECTION_COLUMNS
    return arrow_schema(columns, {"source_index": pa.int64()})


def write_reflections(
    frame: pl.DataFrame,
    path: Path,
    *,
    teacher: str,
    teacher_revision: str,
    prompt_version: str,
    source: str,
    license: str,
    gates: dict[str, Any] | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Write a reflections table and its ``.json`` sidecar (the workdir contract); returns the sidecar.

    A teacher run also records the quality gates its rows were judged with, the output budget its requests
    had (both needed to judge them again from the store), and the fallbacks per reason.
    """
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
    write_parquet(frame, path, reflections_schema(context=CONTEXT_COLUMN in frame.columns))
    write_json(path.with_suffix(".json"), meta)
    return meta


def scores_schema() -> pa.Schema:
    import pyarrow as pa

    ints = {c: pa.int64() for c in SCORE_COLUMNS if c.startswith("n_")}
    floats = {c: pa.float64() for c in SCORE_COLUMNS if c in ("ifd", "rifd") or c.startswith("loss_")}
    return arrow_schema(("id", "variant", *SCORE_COLUMNS), {**ints, **floats})


def subset_schema(*, context: bool = False) -> pa.Schema:
    import pyarrow as pa

    columns = (*SUBSET_COLUMNS, CONTEXT_COLUMN) if context else SUBSET_COLUMNS
    return arrow_schema(columns, {"ifd": pa.float64(), "rifd": pa.float64()})


def read_reflections(workdir: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The workdir's reflections table and its reflections.json, or a :class:`StoreError` saying what to run."""

    path = reflections_path(workdir)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise StoreError(
            f"{workdir} has no reflections yet: run srecycle build --source ... --teacher ... --workdir {workdir} "
            "(or srecycle import-reflections) first"
        )
    meta = read_json(meta_path, stage_command(workdir, meta_path.name))
    frame = read_frame(path, stage_command(workdir, path.name))
    missing = [c for c in REFLECTION_COLUMNS if c not in frame.columns]
    if missing:
        raise StoreError(f"{path} lacks the columns {missing}; it was not written by srecycle: rebuild the workdir")
    return frame.select(reflection_columns(frame.columns)), meta


# ---- stage 1: source rows ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SourceInfo:
    """The rows of a build and what to record about where they came from."""

    rows: list[SourceRow]
    name: str
    license: str
    skipped: int = 0


def sample_path() -> Path:
    """The project's own 30-row sample in Alpaca form (used by the demo and the tests)."""
    from importlib import resources

    return Path(str(resources.files("recycled_datasets").joinpath("data", "sample.jsonl")))


def load_source(source: str, *, limit: int | None = None, skip_invalid: bool = False) -> SourceInfo:
    """Read ``source``: ``alpaca``/``wizardlm`` (the public Hub sets), ``sample``, or a file/folder/Hub id."""
    from recycled_datasets.sources import read_source

    if source in HUB_SOURCES:
        hub_id = HUB_SOURCES[source]
        try:
            data = read_source(hub_id, skip_invalid=skip_invalid, limit=limit)
        except InputError as e:
            raise InputError(
                f"could not load the public set {hub_id} through datasets (no network?): {e}. "
                f"Download it elsewhere and pass the local file of that form with --source PATH"
            ) from e
        return SourceInfo(data.rows, hub_id, SOURCE_LICENSES.get(hub_id, "other"), len(data.invalid))
    if source == SAMPLE_NAME:
        data = read_source(sample_path(), skip_invalid=skip_invalid, limit=limit)
        return SourceInfo(data.rows, "recycled_datasets/data/sample.jsonl", "apache-2.0", len(data.invalid))
    data = read_source(source, skip_invalid=skip_invalid, limit=limit)
    return SourceInfo(data.rows, source, "other", len(data.invalid))


# ---- stage 2: reflections ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReflectOutcome:
    """The reflections of a build: the table, its metadata, and how much the teacher had to do."""

    frame: pl.DataFrame
    meta: dict[str, Any]
    reused: int
    reflected: int
    teacher_stats: Any = None
    rejudged: int = 0  # rows judged again from the answer store because the quality gates changed
    rejudge_stats: Any = None


def _rows_from_frame(frame: pl.DataFrame) -> list[SourceRow]:
    return [
        SourceRow(
            r["id"],
            int(r["source_index"]),
            r["ori_instruction"],
            r["ori_input"],
            r["ori_output"],
            context_from_json(r.get(CONTEXT_COLUMN)),
        )
        for r in frame.iter_rows(named=True)
    ]


def _reflect_config(teacher: str, max_new_tokens: int | None, workdir: Path, gates: GateConfig | None = None) -> Any:
    from recycled_datasets.teacher import ReflectConfig

    return ReflectConfig(
        teacher=teacher,
        store_dir=Path(workdir) / "teacher",
        max_new_tokens=max_new_tokens,
        gates=gates or GateConfig(),
    )


def gate_summary(frame: pl.DataFrame) -> dict[str, int]:
    """Variants that fell back or failed, per reason named in their detail (a gate, ``unparsed``, ...)."""
    return reason_counts(d for v in VARIANTS[1:] for d in frame[f"{v}_detail"].to_list())


def _rejudge(existing: pl.DataFrame, meta: dict[str, Any], *, teacher: str, workdir: Path, gates: GateConfig) -> Any:
    """Judge the rows of ``existing`` again under ``gates`` from the stored answers, without calling the teacher."""
    import polars as pl

    from recycled_datasets.teacher import reflect_rows, teacher_identity

    # The stored answers are keyed by the request, budget included: ask for them with the budget they had.
    budget = meta["max_new_tokens"]
    config = replace(_reflect_config(teacher, budget, workdir, gates), store_only=True)
    teacher_id, prompt_version = teacher_identity(config)
    if (meta["teacher"], meta["prompt_version"]) != (teacher_id, prompt_version):
        raise ConfigError(
            f"the quality gates changed, and the reflections in {workdir} were made by {meta['teacher']} (prompt "
            f"{meta['prompt_version']}), not {teacher_id} (prompt {prompt_version}): pass the same --teacher to "
            "re-judge them from its stored answers"
        )
    rows = _rows_from_frame(existing)
    result = reflect_rows(rows, config)
    frame = result.table.select(REFLECTION_COLUMNS).with_columns(
        pl.Series("source_index", [r.index for r in rows], dtype=pl.Int64)
    )
    return with_context(frame, rows), result.stats


def ensure_reflections(
    rows: list[SourceRow],
    *,
    workdir: Path,
    teacher: str | None,
    source: str,
    license: str,
    max_new_tokens: int | None = None,
    gates: GateConfig | None = None,
) -> ReflectOutcome:
    """Reflections for ``rows``: taken from DIR/reflections.parquet where present, the rest from the teacher.

    The teacher is contacted only when some row has no reflections yet, so a workdir that holds them all
    builds with an unreachable (or no) teacher. DIR/reflections.parquet only grows: it keeps every row ever
    reflected in the workdir (ordered by source index), so a smaller build (``--limit``) never forces a later
    build to ask the teacher again. New rows must come from the teacher run that made the existing ones, so
    one workdir never mixes teachers or prompt versions. Returns the rows of this build, in its order.

    reflections.json records the quality gates the rows were judged with. When ``gates`` differ, the existing
    rows are judged again from the teacher's stored answers (no call is made: a variant whose changed outcome
    would need a new request falls back with the reason ``not_asked``); that needs ``teacher`` to name the
    same teacher, else the old judgement stays and a warning says so.
    """
    import polars as pl

    gates = gates or GateConfig()
    workdir = Path(workdir)
    existing: pl.DataFrame | None = None
    meta: dict[str, Any] | None = None
    if reflections_path(workdir).is_file():
        existing, meta = read_reflections(workdir)
    have = set(existing["id"].to_list()) if existing is not None else set()
    missing = [row for row in rows if row.id not in have]

    stats = rejudge_stats = None
    rejudged = 0
    changed = False
    if existing is not None and meta is not None and not meta["teacher"].startswith("reference:"):
        if meta.get("gates") != gates.as_dict():
            if "max_new_tokens" not in meta:
                # Made before the gates existed: the output budget its requests had (part of their keys) is
                # unknown, and guessing it wrong would turn every stored answer into a fallback.
                logger.warning(
                    "the reflections in %s were made before quality gates were recorded; they stay as they are "
                    "(to judge them, remove %s and build again with the same --teacher and --max-new-tokens: the "
                    "answers stored in %s are reused)",
                    workdir,
                    reflections_path(workdir),
                    workdir / "teacher",
                )
            elif teacher is None:
                logger.warning(
                    "the reflections in %s were judged with other quality gates; pass --teacher (the same one) to "
                    "judge them again from the stored answers (no teacher call is made)",
                    workdir,
                )
            else:
                existing, rejudge_stats = _rejudge(existing, meta, teacher=teacher, workdir=workdir, gates=gates)
                rejudged, changed = existing.height, True
    pool = existing
    if missing:
        if teacher is None:
            raise ConfigError(
                f"{len(missing)} of {len(rows)} rows have no reflections in {workdir} yet: "
                "pass --teacher URL (a TGI/vLLM/llama.cpp server) or --teacher local"
            )
        if meta is not None and meta["teacher"].startswith("reference:"):
            raise ConfigError(
                f"{workdir} holds the reference authors' reflections ({meta['teacher']}), which lack "
                f"{len(missing)} of this build's rows; build from those rows (omit --source) or use a new --workdir"
            )
        from recycled_datasets.teacher import reflect_rows, teacher_identity

        reflect_config = _reflect_config(teacher, max_new_tokens, workdir, gates)
        if meta is not None:  # check before paying for calls that could not be mixed with the existing rows
            teacher_id, prompt_version = teacher_identity(reflect_config)
            if (meta["teacher"], meta["prompt_version"]) != (teacher_id, prompt_version):
                raise ConfigError(
                    f"{workdir} holds reflections by {meta['teacher']} (prompt {meta['prompt_version']}), but "
                    f"{len(missing)} new rows would come from {teacher_id} (prompt {prompt_version}); "
                    "use the same teacher, or a new --workdir"
                )
        result = reflect_rows(missing, reflect_config)
        stats = result.stats
        new = result.table.select(REFLECTION_COLUMNS).with_columns(
            pl.Series("source_index", [r.index for r in missing], dtype=pl.Int64)
        )
        new = with_context(new, missing)
        # diagonal: a context column on one side only is null (no earlier turns) on the other
        pool = new if existing is None else pl.concat([existing, new], how="diagonal_relaxed")
        pool = pool.sort("source_index", "id", maintain_order=True).select(reflection_columns(pool.columns))
        meta = {
            **(meta or {}),
            "teacher": result.teacher_id,
            "teacher_revision": result.teacher_revision,
            "prompt_version": result.prompt_version,
            "max_new_tokens": reflect_config.output_budget,
        }
        changed = True
    assert pool is not None and meta is not None  # read from the workdir or made just now
    if changed:
        meta = write_reflections(
            pool,
            reflections_path(workdir),
            teacher=meta["teacher"],
            teacher_revision=meta["teacher_revision"],
            prompt_version=meta["prompt_version"],
            source=source,
            license=license,
            gates=gates.as_dict(),
            max_new_tokens=meta.get("max_new_tokens", max_new_tokens),
        )
    frame = rows_of(pool, [r.id for r in rows])
    return ReflectOutcome(
        frame,
        meta,
        reused=len(rows) - len(missing),
        reflected=len(missing),
        teacher_stats=stats,
        rejudged=rejudged,
        rejudge_stats=rejudge_stats,
    )


def rows_of(reflections: pl.DataFrame, ids: Sequence[str]) -> pl.DataFrame:
    """The reflections of ``ids``, in that order."""
    import polars as pl

    order = pl.DataFrame({"id": list(ids)}, schema={"id": pl.String})
    frame = order.join(reflections, on="id", how="left", maintain_order="left")
    frame = frame.select(reflection_columns(frame.columns))
    lost = frame.filter(pl.col("ori_output").is_null())["id"]
    if lost.len():
        raise StoreError(f"the reflections lack {lost.len()} rows (e.g. {lost[0]}); rebuild them with srecycle build")
    return frame


# ---- stage 3: scores --------------------------------------------------------------------------------------
def student_record(spec: StudentSpec, settings: ScoreConfig) -> dict[str, str]:
    """The student as report.json and scores.json name it (template and dtype as actually used)."""
    return {
        "key": spec.key,
        "model": spec.model,
        "revision": spec.revision,
        "template": settings.template or spec.template,
        "dtype": settings.dtype or spec.dtype,
        "base_model": spec.hub_id,
    }


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


def _pairs_digest(pairs: Sequence[Pair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update("\x1f".join((p.instruction, p.input, p.output)).encode("utf-8"))
        for turn in p.context:  # nothing for rows without context, so their digests stay as they were
            h.update(f"\x1d{turn.role}\x1f{turn.content}".encode())
        h.update(b"\x1e")
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class ScoreOutcome:
    frame: pl.DataFrame
    reused: bool
    pairs: int


def ensure_scores(
    reflections: pl.DataFrame, spec: StudentSpec, settings: ScoreConfig, *, workdir: Path
) -> ScoreOutcome:
    """DIR/students/KEY/scores.parquet for these reflections, reused when scores.json says it matches.

    scores.json records the student, template, dtype, max length and a digest of every pair, so a changed
    reflection or setting rescores. Finished sequences are checkpointed in ``scores.parquet.parts`` so a
    killed run resumes; a different setup under the same key starts that folder over.
    """
    import polars as pl

    from recycled_datasets.scoring import score_pairs

    folder = student_dir(workdir, spec.key)
    out = folder / "scores.parquet"
    meta_path = folder / "scores.json"
    ids, variants, pairs = pairs_of(reflections)
    record = student_record(spec, settings)
    meta = {
        "student": record,
        "max_length": settings.max_length,
        "pairs": len(pairs),
        "pairs_sha256": _pairs_digest(pairs),
    }
    if out.is_file() and meta_path.is_file():
        found = read_json(meta_path, stage_command(workdir, meta_path.name, spec.key))
        if found == meta:
            logger.info("%s: reusing the scores of %d pairs", spec.key, len(pairs))
            frame = read_frame(out, stage_command(workdir, out.name, spec.key))
            return ScoreOutcome(frame, reused=True, pairs=len(pairs))
        logger.info("%s: scores.json differs from this build (student, settings or reflections): rescoring", spec.key)

    parts = folder / "scores.parquet.parts"
    config = replace(settings, template=record["template"], dtype=record["dtype"], cache_dir=parts)
    try:
        scored = score_pairs(pairs, spec, config)
    except StoreError:
        logger.info("%s: checkpoints in %s belong to another setup; starting over", spec.key, parts)
        shutil.rmtree(parts)
        scored = score_pairs(pairs, spec, config)
    if scored is None:  # a non-main rank of a distributed run
        raise ConfigError("srecycle build runs in one process; use srecycle score under torchrun for several ranks")
    frame = pl.concat(
        [pl.DataFrame({"id": ids, "variant": variants}, schema={"id": pl.String, "variant": pl.String}), scored],
        how="horizontal",
    ).select("id", "variant", *SCORE_COLUMNS)
    write_parquet(frame, out, scores_schema())
    write_json(meta_path, meta)
    return ScoreOutcome(read_frame(out, stage_command(workdir, out.name, spec.key)), reused=False, pairs=len(pairs))


# ---- stage 4: selection -----------------------------------------------------------------------------------
def select_and_write(
    scores: pl.DataFrame,
    reflections: pl.DataFrame,
    meta: dict[str, Any],
    student: dict[str, str],
    config: SelectionConfig,
    *,
    workdir: Path,
) -> Selection:
    """Apply the rule and write DIR/students/KEY/subset.parquet and report.json."""
    selection = select_rows(scores, config)
    report = selection.report.with_provenance(
        student=student, teacher=meta["teacher"], prompt_version=meta["prompt_version"], source=meta["source"]
    )
    report = replace(report, teacher_fallbacks=gate_summary(reflections))
    subset = subset_frame(selection.frame, reflections, student=student["key"], teacher=meta["teacher"])
    context = CONTEXT_COLUMN in reflections.columns
    if context:  # the release writes each kept chat row with its earlier turns
        subset = subset.join(reflections.select("id", CONTEXT_COLUMN), on="id", how="left", maintain_order="left")
    folder = student_dir(workdir, student["key"])
    write_parquet(subset, folder / "subset.parquet", subset_schema(context=context))
    atomic_write_bytes(folder / "report.json", report.to_json().encode("utf-8"))
    return Selection(frame=subset, report=report)


def reselect(workdir: Path, key: str, config: SelectionConfig) -> Selection:
    """Select again from a student's cached scores (another mode or top cut): no student, no teacher."""

    folder = student_dir(workdir, key)
    if not (folder / "scores.parquet").is_file() or not (folder / "scores.json").is_file():
        raise StoreError(f"{folder} has no scores: run srecycle build --student {key} --workdir {workdir} first")
    all_reflections, meta = read_reflections(workdir)
    scores = read_frame(folder / "scores.parquet", stage_command(workdir, "scores.parquet", key))
    scores_meta = read_json(folder / "scores.json", stage_command(workdir, "scores.json", key))
    ids = scores["id"].unique(maintain_order=True).to_list()
    reflections = rows_of(all_reflections, ids)
    _, _, pairs = pairs_of(reflections)
    if scores_meta.get("pairs_sha256") != _pairs_digest(pairs):
        raise StoreError(
            f"the scores of {key} were made for other reflections than {reflections_path(workdir)}; "
            f"rebuild them with srecycle build --student {key} --workdir {workdir}"
        )
    return select_and_write(scores, reflections, meta, scores_meta["student"], config, workdir=workdir)


# ---- stage 5: the release tree ----------------------------------------------------------------------------
def materialize(workdir: Path) -> Path:
    """Write DIR/dataset (Hub layout, one config per student plus reflections) from the stage files.

    The tree is written beside the old one and swapped in, so DIR/dataset is never half written and always
    reflects every student built in the workdir.
    """
    from recycled_datasets.hub import write_release_tree

    return write_release_tree(Path(workdir), Path(workdir) / "dataset", legacy=True).root


# ---- the whole build --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildConfig:
    """One build of one student's subset.

    Attributes:
        workdir: the folder of every stage's output (see the workdir contract).
        student: the resolved student (key = the subset's config name).
        source: ``alpaca``, ``wizardlm``, ``sample``, a file/folder/Hub id; ``None`` reuses the rows of
            DIR/reflections.parquet (e.g. after ``import-reflections``).
        teacher: server URL(s) or ``local[:MODEL]``; needed only for rows without reflections.
        max_new_tokens: output budget per teacher call (``None``: the teacher stage's default).
        limit: keep the first N valid source rows.
        skip_invalid: drop invalid source rows (reported) instead of stopping.
        selection: the selection mode and optional top cut.
        scoring: the student's scoring settings.
        release: write DIR/dataset at the end.
        gates: the quality gates of the teacher's sections (a change re-judges stored answers, see
            ``ensure_reflections``).
    """

    workdir: Path
    student: StudentSpec
    source: str | None = None
    teacher: str | None = None
    max_new_tokens: int | None = None
    limit: int | None = None
    skip_invalid: bool = False
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    scoring: ScoreConfig = field(default_factory=ScoreConfig)
    release: bool = True
    gates: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if self.student.key in RESERVED_KEYS:
            raise ConfigError(
                f"{self.student.key!r} cannot be a student's config name (it names another part of the dataset); "
                "pass --name KEY"
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, not {self.limit}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, not {self.max_new_tokens}")


@dataclass(frozen=True)
class BuildResult:
    """What a build did, for the summary table and for callers."""

    workdir: Path
    student: str
    rows: int
    skipped_rows: int
    reflections: ReflectOutcome
    scores: ScoreOutcome
    selection: Selection
    dataset: Path | None
    # Wall seconds per stage (source, teacher, student scores, selection, release tree), in order.
    seconds: dict[str, float] = field(default_factory=dict)


def build(config: BuildConfig) -> BuildResult:
    """Run the stages in a row; each one reuses what the workdir already holds for the same inputs."""
    import time

    seconds: dict[str, float] = {}
    clock = time.monotonic()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.monotonic()
        seconds[stage] = round(now - clock, 3)
        clock = now

    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.source is None:
        frame, meta = read_reflections(workdir)
        rows = _rows_from_frame(frame)
        if config.limit is not None:
            rows = rows[: config.limit]
        info = SourceInfo(rows, meta["source"], meta.get("license", "other"))
    else:
        info = load_source(config.source, limit=config.limit, skip_invalid=config.skip_invalid)
    logger.info("%d source rows from %s", len(info.rows), info.name)
    lap("source")

    reflected = ensure_reflections(
        info.rows,
        workdir=workdir,
        teacher=config.teacher,
        source=info.name,
        license=info.license,
        max_new_tokens=config.max_new_tokens,
        gates=config.gates,
    )
    lap("teacher")
    scored = ensure_scores(reflected.frame, config.student, config.scoring, workdir=workdir)
    lap("student scores")
    student = student_record(config.student, config.scoring)
    selection = select_and_write(
        scored.frame, reflected.frame, reflected.meta, student, config.selection, workdir=workdir
    )
    lap("selection")
    dataset = materialize(workdir) if config.release else None
    lap("release tree")
    return BuildResult(
        workdir, config.student.key, len(info.rows), info.skipped, reflected, scored, selection, dataset, seconds
    )


# ---- reference reflections --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ImportResult:
    rows: int
    source: str
    unchanged: dict[str, int]


def _split_files(folder: Path, split: str) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in (".json", ".jsonl", ".parquet"):
            continue
        stem = path.name.split(".")[0]
        if stem == split or stem.startswith(f"{split}-"):
            found.append(path)
    return found


def _records_of_file(path: Path) -> list[Any]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if not isinstance(data, list):
        raise InputError("expected a JSON list of rows", path=str(path))
    return data


def _reference_splits(source: str) -> dict[str, list[Any]]:
    """The four splits' raw rows, from a local folder (files named by split) or through ``datasets``."""
    path = Path(source)
    if path.is_dir():
        files = {split: _split_files(path, split) for split in REFERENCE_SPLITS}
        if all(files.values()):
            return {split: [rec for f in fs for rec in _records_of_file(f)] for split, fs in files.items()}
        if any(files.values()):
            lacking = [s for s, fs in files.items() if not fs]
            raise InputError(
                f"has no files for the splits {lacking} (expected files named like origin.json)", path=source
            )
    elif path.exists():
        raise InputError(
            "is a file; give the folder that holds the four split files "
            f"({', '.join(REFERENCE_SPLITS)}) or a Hub dataset id",
            path=source,
        )

    from recycled_datasets.hf_datasets import load_dataset

    try:
        loaded = load_dataset(source)
    except Exception as e:  # datasets raises many types: not found, no network, bad layout
        raise InputError(
            f"could not load it with datasets.load_dataset ({type(e).__name__}: {e}); give a local folder with "
            f"the split files ({', '.join(REFERENCE_SPLITS)}) or a reachable Hub dataset id",
            path=source,
        ) from e
    lacking = [s for s in REFERENCE_SPLITS if s not in loaded]
    if lacking:
        raise InputError(f"has the splits {sorted(loaded)}, not {list(REFERENCE_SPLITS)}", path=source)
    return {split: list(loaded[split]) for split in REFERENCE_SPLITS}


def _unwrap(record: Any, source: str, split: str, row: int) -> tuple[str, str, str]:
    if isinstance(record, dict) and isinstance(record.get("data"), dict):
        record = record["data"]
    if not isinstance(record, dict):
        raise InputError(f"split {split}: expected an object, found {type(record).__name__}", path=source, row=row)
    values = []
    for name in ("instruction", "input", "output"):
        value = record.get(name)
        value = "" if value is None and name == "input" else value
        if not isinstance(value, str) or (name != "input" and not value.strip()):
            raise InputError(f"split {split}: '{name}' must be a non-empty string", path=source, row=row, field=name)
        values.append(value)
    return values[0], values[1], values[2]


def import_reflections(source: str, workdir: Path) -> ImportResult:
    """Read the reference authors' four splits into DIR/reflections.parquet + reflections.json.

    Row i of every split is the same source row; the ``origin`` split gives its id. The teacher is recorded
    as ``reference:<source>`` with prompt version ``reference``, so the workdir then builds any student with
    no teacher at all.
    """
    import polars as pl

    splits = _reference_splits(source)
    sizes = {split: len(rows) for split, rows in splits.items()}
    if len(set(sizes.values())) != 1:
        raise InputError(f"the four splits must have one row per source row each, found {sizes}", path=source)
    unwrapped = {
        REFERENCE_SPLITS[split]: [_unwrap(rec, source, split, i) for i, rec in enumerate(rows, start=1)]
        for split, rows in splits.items()
    }
    rows = assign_ids(unwrapped["ori"])
    if not rows:
        raise InputError("the splits hold no rows", path=source)
    columns: dict[str, list[Any]] = {"id": [r.id for r in rows], "source_index": [r.index for r in rows]}
    for v in VARIANTS:
        triples = unwrapped[v]
        for i, f in enumerate(("instruction", "input", "output")):
            columns[f"{v}_{f}"] = [t[i] for t in triples]
    same = {v: 0 for v in VARIANTS[1:]}
    for v in VARIANTS[1:]:
        columns[f"{v}_status"] = [STATUS_OK] * len(rows)
        columns[f"{v}_detail"] = [None] * len(rows)
        same[v] = sum(t == o for t, o in zip(unwrapped[v], unwrapped["ori"], strict=True))
    frame = pl.DataFrame(columns, schema={c: (pl.Int64 if c == "source_index" else pl.String) for c in columns})
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_reflections(
        frame,
        reflections_path(workdir),
        teacher=f"reference:{source}",
        teacher_revision="",
        prompt_version=REFERENCE_PROMPT_VERSION,
        source=source,
        license="other",
    )
    return ImportResult(rows=len(rows), source=source, unchanged=same)


__all__ = [
    "BuildConfig",
    "BuildResult",
    "SelectionReport",
    "build",
    "ensure_reflections",
    "ensure_scores",
    "import_reflections",
    "load_source",
    "materialize",
    "reselect",
    "sample_path",
]
