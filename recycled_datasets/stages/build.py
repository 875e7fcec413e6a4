"""The build: source rows -> reflect -> score -> select -> release, a short loop over the stages.

Each stage reuses what the workdir already holds for the same inputs, so a second student on the same
workdir is a scoring job only (the teacher is not contacted when every row has its reflections), and every
file is written with fixed options in source order, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from recycled_datasets.errors import ConfigError
from recycled_datasets.models import StudentSpec
from recycled_datasets.scoring import ScoreConfig, dist_info
from recycled_datasets.selection import SelectionConfig, SelectionReport
from recycled_datasets.stages.base import ReleaseStageStats, SelectStageStats, Stage, StageStats
from recycled_datasets.stages.reflect import PromptFiles, ReflectStage
from recycled_datasets.stages.release import ReleaseStage
from recycled_datasets.stages.score import ScoreStage
from recycled_datasets.stages.select import SelectStage
from recycled_datasets.stages.source import SourceInfo, load_source, rows_from_frame
from recycled_datasets.teacher.gates import GateConfig
from recycled_datasets.workdir import Workdir, check_config_name
from recycled_datasets.workdir.tables import read_reflections

if TYPE_CHECKING:
    from recycled_datasets.teacher.config import TeacherClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    """One build of one student's subset.

    Attributes:
        workdir: the folder of every stage's output (see :mod:`recycled_datasets.workdir`).
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
        gates: the quality gates of the teacher's sections (a change re-judges stored answers).
        prompts: the user's reflection prompt files (default: the packaged prompts).
        client: how the teacher client talks to its servers (default: its defaults).
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
    prompts: PromptFiles = field(default_factory=PromptFiles)
    client: TeacherClient | None = None

    def __post_init__(self) -> None:
        check_config_name(self.student.key)
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, not {self.limit}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, not {self.max_new_tokens}")


@dataclass(frozen=True)
class BuildResult:
    """What a build did: the rows it read and each stage's stats, in order."""

    workdir: Path
    student: str
    rows: int
    skipped_rows: int
    stats: dict[str, StageStats]
    dataset: Path | None
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per step: source, then each stage

    @property
    def report(self) -> SelectionReport:
        """The selection report of this build's student."""
        stats = self.stats["select"]
        assert isinstance(stats, SelectStageStats) and stats.report is not None
        return stats.report


def source_rows(config: BuildConfig) -> SourceInfo:
    """The build's source rows: from its source, or those of the workdir's reflections."""
    if config.source is not None:
        return load_source(config.source, limit=config.limit, skip_invalid=config.skip_invalid)
    frame, meta = read_reflections(Workdir(config.workdir))
    rows = rows_from_frame(frame)
    if config.limit is not None:
        rows = rows[: config.limit]
    return SourceInfo(rows, meta["source"], meta.get("license", "other"))


def stages_of(config: BuildConfig, info: SourceInfo) -> list[Stage]:
    """The stages of a build, in the order they run."""
    wd = Workdir(config.workdir)
    ids = [r.id for r in info.rows]
    stages: list[Stage] = [
        ReflectStage(
            wd,
            info.rows,
            config.teacher,
            info.name,
            info.license,
            config.max_new_tokens,
            config.gates,
            config.prompts,
            config.client,
        ),
        ScoreStage(wd, ids, config.student, config.scoring),
        SelectStage(wd, config.student.key, config.selection, ids),
    ]
    return [*stages, ReleaseStage(wd)] if config.release else stages


STAGE_NAMES = ("reflect", "score", "select", "release")


def build(config: BuildConfig, *, until: str | None = None) -> BuildResult:
    """Run the stages in a row; each one reuses what the workdir already holds for the same inputs.

    ``until`` stops after that stage (``reflect``: the teacher's part only; ``score``: no selection).

    Under ``torchrun`` every rank scores its share and only rank 0 selects and releases (the other ranks stop
    after the score stage); the teacher pass must be finished before (``srecycle reflect`` in one process).
    """
    if until is not None and until not in STAGE_NAMES:
        raise ConfigError(f"until must be one of {', '.join(STAGE_NAMES)}, not {until!r}")
    start = time.monotonic()
    Path(config.workdir).mkdir(parents=True, exist_ok=True)
    info = source_rows(config)
    logger.info("%d source rows from %s", len(info.rows), info.name)
    seconds = {"source": round(time.monotonic() - start, 3)}
    stats: dict[str, StageStats] = {}
    dist = dist_info()
    rows, skipped, stages = len(info.rows), info.skipped, stages_of(config, info)
    del info  # the source rows live in the reflect stage, and go with it once it has run
    while stages:
        stage = stages.pop(0)  # a stage that has run is dropped with its caches (pairs, rows)
        if dist.world > 1 and stage.name == "reflect" and not stage.done():
            raise ConfigError(
                f"under torchrun the ranks only score: the teacher pass of {config.workdir} is not finished; finish "
                "it in one process (srecycle reflect SOURCE --teacher URL "
                f"--output {config.workdir}/reflections.parquet --store {config.workdir}/teacher), then launch the "
                "build without --source"
            )
        stats[stage.name] = stage.run()
        seconds[stage.name] = stats[stage.name].seconds
        if stage.name == until or (stage.name == "score" and not dist.main):
            break
    release = stats.get("release")
    dataset = release.root if isinstance(release, ReleaseStageStats) else None
    return BuildResult(Path(config.workdir), config.student.key, rows, skipped, stats, dataset, seconds)
