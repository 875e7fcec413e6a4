"""The stages of a build, each from workdir files to workdir files with one interface (:class:`Stage`):
source rows -> reflect (teacher) -> score (student) -> select -> release (docs/method.md, section 8)."""

from recycled_datasets.stages.base import Stage, StageStats
from recycled_datasets.stages.build import BuildConfig, BuildResult, build, stages_of
from recycled_datasets.stages.reflect import PromptFiles, ReflectStage
from recycled_datasets.stages.release import ReleaseStage
from recycled_datasets.stages.score import ScoreStage
from recycled_datasets.stages.select import SelectStage
from recycled_datasets.stages.source import SourceInfo, load_source, sample_path

__all__ = [
    "BuildConfig",
    "BuildResult",
    "PromptFiles",
    "ReflectStage",
    "ReleaseStage",
    "ScoreStage",
    "SelectStage",
    "SourceInfo",
    "Stage",
    "StageStats",
    "build",
    "load_source",
    "sample_path",
    "stages_of",
]
