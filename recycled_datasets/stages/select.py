"""The select stage: a student's scores -> the rows it keeps (DIR/students/KEY/subset.parquet, report.json).

Selection reads the student's scores only, so another mode or top cut is a re-select: no student, no
teacher (docs/method.md, section 4). Its inputs are the scores (their digest), this build's rows and the
selection settings; their digest is kept in ``subset.json``, so an unchanged selection is not redone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from recycled_datasets.errors import StoreError
from recycled_datasets.records import CONTEXT_COLUMN
from recycled_datasets.selection import Selection, SelectionConfig, SelectionReport, select_rows, subset_frame
from recycled_datasets.stages.base import SelectStageStats, Stage, StageStats, counts, digest_of
from recycled_datasets.stages.reflect import gate_summary, reflected_rows
from recycled_datasets.workdir import Workdir
from recycled_datasets.workdir.files import read_json, recorded_digest, write_json
from recycled_datasets.workdir.pairs import text_digest
from recycled_datasets.workdir.tables import (
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
        return digest_of(
            recorded_digest(files.scores), recorded_digest(self.workdir.reflections), self.ids, asdict(self.config)
        )

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
        reflections, meta = reflected_rows(self.workdir, ids)
        if self.ids is None:  # scores made for other reflections cannot be selected from
            if scores_meta.get("pairs_sha256") != text_digest(reflections):
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
        write_json(
            files.dir / "subset.json", {"inputs_sha256": inputs, "scores_sha256": recorded_digest(files.scores)}
        )
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


def _stats(name: str, report: SelectionReport) -> SelectStageStats:
    return SelectStageStats(
        name,
        rows=report.rows_kept,
        made=report.rows_kept,
        drops=counts(report.drops),
        fallbacks=counts(report.teacher_fallbacks),
        report=report,
    )
