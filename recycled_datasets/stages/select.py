"""The select stage: a student's scores -> the rows it keeps (DIR/students/KEY/subset.parquet, report.json).

Selection reads the student's scores only, so another mode or top cut is a re-select: no student, no
teacher (docs/method.md, section 4). Its inputs are the scores (their digest), this build's rows and the
selection settings; their digest is kept in ``subset.json``, so an unchanged selection is not redone.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from recycled_datasets.errors import StoreError
from recycled_datasets.records import CONTEXT_COLUMN
from recycled_datasets.selection import Selection, SelectionConfig, SelectionReport, select_rows, subset_frame
from recycled_datasets.stages.base import Stage, StageStats, counts, digest_of
from recycled_datasets.stages.reflect import gate_summary, read_rows, rows_of
from recycled_datasets.stages.score import pairs_digest, pairs_of
from recycled_datasets.workdir import Workdir
from recycled_datasets.workdir.files import digest_path, read_json, write_json
from recycled_datasets.workdir.tables import (
    read_reflections,
    read_scores,
    read_scores_meta,
    read_subset_table,
    write_subset,
)


@dataclass
class SelectStage(Stage):
    """The subset of student ``key`` under ``config`` (see the module docstring).

    Attributes:
        workdir: the workdir (the student's scores must be there).
        key: the student's key.
        config: the selection mode and optional top cut.
        ids: the rows to select from (default: every row the student scored).
    """

    name = "select"

    workdir: Workdir
    key: str
    config: SelectionConfig = field(default_factory=SelectionConfig)
    ids: list[str] | None = None

    def _scores_meta(self) -> dict[str, Any]:
        meta = read_scores_meta(self.workdir, self.key)
        if meta is None:
            raise StoreError(
                f"{self.workdir.student(self.key).dir} has no scores: run srecycle build --student {self.key} "
                f"--workdir {self.workdir.root} first"
            )
        return meta

    def _inputs_digest(self) -> str:
        files = self.workdir.student(self.key)
        return digest_of(_digest_of(files.scores), _digest_of(self.workdir.reflections), self.ids, asdict(self.config))

    def done(self) -> bool:
        files = self.workdir.student(self.key)
        meta_path = files.dir / "subset.json"
        if not (files.subset.is_file() and files.report.is_file() and meta_path.is_file()):
            return False
        return read_json(meta_path, self.workdir.command("subset.json", self.key)).get("inputs_sha256") == (
            self._inputs_digest()
        )

    def select(self) -> Selection:
        """Apply the rule and write the subset, its report and the digest of the inputs."""
        scores_meta = self._scores_meta()
        scores = read_scores(self.workdir, self.key)
        ids = self.ids if self.ids is not None else scores["id"].unique(maintain_order=True).to_list()
        reflections, meta = read_rows(self.workdir, ids)
        if self.ids is None:  # scores made for other reflections cannot be selected from
            _, _, pairs = pairs_of(reflections)
            if scores_meta.get("pairs_sha256") != pairs_digest(pairs):
                raise StoreError(
                    f"the scores of {self.key} were made for other reflections than {self.workdir.reflections}; "
                    f"rebuild them with srecycle build --student {self.key} --workdir {self.workdir.root}"
                )
        inputs = self._inputs_digest()  # before anything is written: a failure here leaves the old files whole
        selection = select_rows(scores, self.config)
        report = selection.report.with_provenance(
            student=scores_meta["student"],
            teacher=meta["teacher"],
            prompt_version=meta["prompt_version"],
            source=meta["source"],
        )
        report = replace(report, teacher_fallbacks=gate_summary(reflections))
        subset = subset_frame(selection.frame, reflections, student=self.key, teacher=meta["teacher"])
        if CONTEXT_COLUMN in reflections.columns:  # the release writes each kept chat row with its earlier turns
            subset = subset.join(reflections.select("id", CONTEXT_COLUMN), on="id", how="left", maintain_order="left")
        write_subset(self.workdir, self.key, subset, report.as_dict())
        files = self.workdir.student(self.key)
        write_json(files.dir / "subset.json", {"inputs_sha256": inputs, "scores_sha256": _digest_of(files.scores)})
        return Selection(frame=subset, report=report)

    def _run(self) -> StageStats:
        report = self.select().report
        return _stats(self.name, report)

    def reuse(self) -> StageStats:
        """The stats of the selection already written (when :meth:`done`)."""
        from recycled_datasets.workdir.tables import read_report

        report = SelectionReport.from_dict(read_report(self.workdir, self.key))
        read_subset_table(self.workdir, self.key)  # checks the file against its digest
        stats = _stats(self.name, report)
        stats.reused, stats.made = stats.rows, 0
        return stats


def _digest_of(path: Path) -> str:
    """The sha256 recorded beside a stage file, or, where it was lost (``cp dir/*`` skips dot-files), the file's."""
    try:
        return digest_path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return hashlib.sha256(path.read_bytes()).hexdigest()


def stale_students(workdir: Workdir, keys: list[str]) -> dict[str, str]:
    """The students among ``keys`` whose files no longer match the workdir, each with why.

    A student is stale when its scores were made for other text than the reflections now hold for its rows (a
    re-judge with other gates, or an import, rewrote them after it was built), or when its subset was selected
    from other scores than those beside it (a build stopped between the two). Publishing such a student would
    pair one text with another text's scores.
    """
    frame = None
    stale: dict[str, str] = {}
    for key in keys:
        files = workdir.student(key)
        meta = read_scores_meta(workdir, key)
        if meta is None:
            stale[key] = "it has no scores.json"
            continue
        if frame is None:
            frame, _ = read_reflections(workdir)
        ids = read_scores(workdir, key)["id"].unique(maintain_order=True).to_list()
        try:
            _, _, pairs = pairs_of(rows_of(frame, ids))
        except StoreError:
            stale[key] = f"its scores hold rows that {workdir.reflections.name} no longer has"
            continue
        if meta.get("pairs_sha256") != pairs_digest(pairs):
            stale[key] = f"its scores were made for other text than {workdir.reflections.name} now holds"
            continue
        record_path = files.dir / "subset.json"
        if record_path.is_file():
            record = read_json(record_path, workdir.command("subset.json", key))
            if record.get("scores_sha256") not in (None, _digest_of(files.scores)):
                stale[key] = "its subset was selected from other scores than those beside it"
    return stale


def rebuild_command(workdir: Workdir, key: str) -> str:
    """The command that makes ``key``'s scores and subset again, from what its scores.json records."""
    meta = read_scores_meta(workdir, key) or {}
    student = meta.get("student") if isinstance(meta.get("student"), dict) else {}
    root = workdir.root
    source = student.get("imported_from")
    if source:
        local = str(source).startswith("local:")
        where = f" (DIR: the folder {str(source)[6:]} they came from)" if local else ""
        return (
            f"srecycle import-scores {'DIR' if local else source} --student {key} --workdir {root}{where}, then "
            f"srecycle select --workdir {root} --student {key}"
        )
    from recycled_datasets.errors import ConfigError
    from recycled_datasets.models import students_table

    model = student.get("model")
    try:
        known = students_table().get(key)
    except ConfigError:  # a broken $SRECYCLE_STUDENTS: name the student by its model
        known = None
    if known is not None and (not model or known.model == model):
        parts = [f"srecycle build --workdir {root} --student {key}"]
        defaults = {"template": known.template, "dtype": known.dtype, "scoring": known.scoring or None}
    else:
        parts = [f"srecycle build --workdir {root} --student {model or key}"] + ([f"--name {key}"] if model else [])
        defaults = {}
    for option in ("template", "scoring", "dtype"):
        value = student.get(option)
        if value and value != defaults.get(option, value if option == "scoring" else None):
            parts.append(f"--{option} {value}")
    return " ".join(parts)


def stale_error(workdir: Workdir, stale: dict[str, str]) -> StoreError:
    """One line naming every stale student, why, and the command that rebuilds each."""
    why = "; ".join(f"{key}: {reason}" for key, reason in stale.items())
    commands = "; ".join(rebuild_command(workdir, key) for key in stale)
    return StoreError(
        f"student(s) {', '.join(stale)} no longer match the workdir's reflections ({why}); nothing stale is "
        f"published: rebuild with {commands} (scores are reused where the text is unchanged)"
    )


def _stats(name: str, report: SelectionReport) -> StageStats:
    return StageStats(
        name,
        rows=report.rows_kept,
        made=report.rows_kept,
        drops=counts(report.drops),
        fallbacks=counts(report.teacher_fallbacks),
        detail={"report": report},
    )
