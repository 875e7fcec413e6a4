"""The base ``datasets`` builder of sRecycled data: ``download_and_prepare()`` runs the stages.

The config (:class:`SRecycledConfig`) names the table and the options of ``srecycle build``. Preparing a
student config reflects the rows with the teacher (answers already stored in the workdir are reused), scores
every variant with the student and selects its subset; ``reflections`` stops after the teacher, ``scores``
after scoring the config's students. The tables yielded are the release views of the workdir
(:mod:`recycled_datasets.workdir.views`), so a builder gives exactly the rows and features a release of the
same workdir publishes. Any student key is a config: name it with ``config_name`` and say which model it is
with ``student=`` (or a students file)::

    builder = SRecycledSample(config_name="my-model", student="my-org/my-model-7b", template="vicuna",
                              teacher="http://teacher:8080", workdir="runs/sample")
    builder.download_and_prepare()
    subset = builder.as_dataset("train")

``reflections`` holds every row the workdir has reflected (its table only grows, so a smaller ``limit`` never
costs a teacher call later), as a release of that workdir does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import datasets
import pyarrow as pa
from datasets.builder import Key

from recycled_datasets.errors import ConfigError
from recycled_datasets.sources import license_of
from recycled_datasets.workdir import REFLECTIONS_CONFIG, Workdir
from recycled_datasets.workdir.schema import (
    features,
    reflections_long_schema,
    release_scores_schema,
    release_subset_schema,
)

from .config import SRecycledConfig
from .stages import inputs_digest, run_reflections, run_scores, run_student

if TYPE_CHECKING:
    from recycled_datasets.selection import SelectionReport

SRECYCLED_CITATION = """\
@inproceedings{li2024selective,
  title     = {Selective Reflection-Tuning: Student-Selected Data Recycling for {LLM} Instruction-Tuning},
  author    = {Li, Ming and Chen, Lichang and Chen, Jiuhai and He, Shwai and Gu, Jiuxiang and Zhou, Tianyi},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2024},
  year      = {2024}
}
"""


class SRecycled(datasets.ArrowBasedBuilder):
    """sRecycled data of any source in Alpaca or chat form: give ``source=`` (default: the workdir's rows).

    Subclasses name one dataset: its source, licence, citation and description.
    """

    BUILDER_CONFIG_CLASS = SRecycledConfig
    # No listed configs: every config is made from the caller's keyword arguments and checked as it is made,
    # so a student key of the user's own is a config like a shipped one.
    BUILDER_CONFIGS: ClassVar[list[datasets.BuilderConfig]] = []
    VERSION = datasets.Version("2.0.0")

    SOURCE: ClassVar[str | None] = None
    LICENSE: ClassVar[str | None] = None  # default: the source's, from recycled_datasets.sources.KNOWN_SOURCES
    HOMEPAGE: ClassVar[str] = "https://arxiv.org/abs/2402.10110"
    CITATION: ClassVar[str] = SRECYCLED_CITATION
    DESCRIPTION: ClassVar[str] = (
        "Selective Reflection-Tuning data: each row rewritten by a teacher into four variants (original, new "
        "instruction, better answer, both), and per student the variant it learns most from, selected by IFD "
        "and reverse IFD."
    )

    config: SRecycledConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # datasets reuses a prepared config from its cache by config and this hash: key it by what the build
        # starts from, so a changed workdir or source runs the stages again instead of serving old rows.
        if kwargs.get("hash") is None and kwargs.get("workdir"):
            kwargs["hash"] = inputs_digest(Path(str(kwargs["workdir"])), kwargs.get("source") or self.SOURCE)
        super().__init__(*args, **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=self.DESCRIPTION,
            features=features(self._schema()),
            homepage=self.HOMEPAGE,
            license=self.LICENSE or (license_of(self.SOURCE) if self.SOURCE else None),
            citation=self.CITATION,
        )

    def _schema(self) -> pa.Schema:
        if self.config.is_student:
            return release_subset_schema()
        return reflections_long_schema() if self.config.name == REFLECTIONS_CONFIG else release_scores_schema()

    def stage_config(self) -> SRecycledConfig:
        """The config with this builder's source filled in: what the stages run."""
        if self.config.source is not None or self.SOURCE is None:
            return self.config
        return replace(self.config, source=self.SOURCE)

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        config = self.stage_config()
        students: tuple[str, ...] = ()  # a tuple: datasets would take a list for shards
        if config.is_student:
            _check_kept(run_student(config).report, config.name)
        elif config.name == REFLECTIONS_CONFIG:
            run_reflections(config)
        else:
            students = tuple(run_scores(config))
        kwargs = {"workdir": str(config.root), "students": students}
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs=kwargs)]

    def _generate_tables(self, workdir: str, students: tuple[str, ...]) -> Iterator[tuple[Key, pa.Table]]:
        from recycled_datasets.workdir.views import release_reflections, release_scores, release_subset

        wd = Workdir(Path(workdir))
        if self.config.is_student:
            tables = release_subset(wd, self.config.name)
        elif self.config.name == REFLECTIONS_CONFIG:
            tables = release_reflections(wd)
        else:
            tables = release_scores(wd, list(students))
        for index, table in enumerate(tables):  # at most views.BATCH_ROWS rows each
            yield Key(0, index), table


def _check_kept(report: SelectionReport, key: str) -> None:
    """A subset needs a row: datasets cannot make an empty split, so say why the selection kept none."""
    if report.rows_kept:
        return
    drops = ", ".join(f"{n} {why}" for why, n in sorted(report.drops.items()) if n) or "none recorded"
    raise ConfigError(
        f"the selection of {key!r} ({report.mode} mode) kept 0 of {report.rows_in} rows (dropped: {drops}); "
        "its scores stay in the workdir, so selecting again (e.g. mode='keep-unreflected') scores nothing again"
    )
