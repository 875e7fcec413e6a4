"""``datasets`` builders over an sRecycled workdir: one config per student, plus ``reflections`` and ``scores``.

The work is done once by the stages (``srecycle build``) and kept in the workdir; these builders only read
those files, so preparing a config never calls the teacher or the student. Point ``data_dir`` at the
workdir::

    builder = SRecycledAlpaca(config_name="llama2-7b", data_dir="runs/alpaca")
    builder.download_and_prepare()
    subset = builder.as_dataset("train")

Configs: every student key (the subset of that student: ``instruction``, ``input``, ``output``, the row as
chat turns in ``messages`` / ``prompt`` / ``completion``, and its provenance), ``reflections`` (the four
variants of every source row, student independent, one row per variant) and ``scores`` (every variant of
every row with each built student's scores). A student key that is not in the shipped students table is
accepted as a config name too, since users add their own students.
The datasets cache is keyed by a digest of the stage files, so a rebuilt workdir is never served stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets.builder import Key

from recycled_datasets.chat import context_from_json, turns_of
from recycled_datasets.errors import ConfigError, StoreError
from recycled_datasets.records import (
    CHAT_COLUMNS,
    CONTEXT_COLUMN,
    REFLECTION_COLUMNS,
    RELEASE_SUBSET_COLUMNS,
    SCORE_COLUMNS,
    SUBSET_COLUMNS,
    VARIANTS,
)

logger = logging.getLogger(__name__)

REFLECTIONS = "reflections"
SCORES = "scores"
_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_VERSION = datasets.Version("1.0.0")
_CITATION = """\
@inproceedings{li2024selective,
  title     = {Selective Reflection-Tuning: Student-Selected Data Recycling for {LLM} Instruction-Tuning},
  author    = {Li, Ming and Chen, Lichang and Chen, Jiuhai and He, Shwai and Gu, Jiuxiang and Zhou, Tianyi},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2024},
  year      = {2024}
}
"""


def _string() -> datasets.Value:
    return datasets.Value("string")


def _turns() -> datasets.List:
    return datasets.List({"role": _string(), "content": _string()})


def subset_features() -> datasets.Features:
    """A student's subset: the training fields and the row as chat turns, then its provenance and scores."""
    types = {"ifd": datasets.Value("float64"), "rifd": datasets.Value("float64")}
    types |= {c: _turns() for c in CHAT_COLUMNS}
    return datasets.Features({c: types.get(c, _string()) for c in RELEASE_SUBSET_COLUMNS})


def reflections_features() -> datasets.Features:
    """One row per (source row, variant); the same layout as the release tree's ``reflections`` config."""
    return datasets.Features(
        {
            "id": _string(),
            "source_index": datasets.Value("int64"),
            "variant": _string(),
            "instruction": _string(),
            "input": _string(),
            "output": _string(),
            **{c: _turns() for c in CHAT_COLUMNS},
            "status": _string(),
            "detail": _string(),
        }
    )


def scores_features() -> datasets.Features:
    """Every variant of every row with one student's scores; ``student`` names the student."""
    types: dict[str, datasets.Value] = {}
    for c in SCORE_COLUMNS:
        if c in ("ifd", "rifd") or c.startswith("loss_"):
            types[c] = datasets.Value("float64")
        elif c.startswith("n_"):
            types[c] = datasets.Value("int64")
        else:
            types[c] = _string()
    base = {c: _string() for c in ("student", "id", "variant", "instruction", "input", "output")}
    return datasets.Features({**base, **types})


@dataclass
class SRecycledConfig(datasets.BuilderConfig):
    """A config of an sRecycled builder: ``reflections``, ``scores`` or a student key (its subset)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _KEY.match(self.name or ""):
            raise ConfigError(
                f"{self.name!r} is not a config name: use a student key (lowercase letters, digits, '.', '_', '-'), "
                f"'{REFLECTIONS}' or '{SCORES}'"
            )

    @property
    def kind(self) -> str:
        return self.name if self.name in (REFLECTIONS, SCORES) else "student"


def _shipped_student_keys() -> list[str]:
    from recycled_datasets.models import students_table

    return sorted(students_table(extra=None))


def _workdir_digest(workdir: Path) -> str:
    """A digest of the stage files, so the datasets cache follows the workdir's content."""
    h = hashlib.sha256()
    files = [workdir / "reflections.parquet", workdir / "reflections.json"]
    students = workdir / "students"
    if students.is_dir():
        for folder in sorted(p for p in students.iterdir() if p.is_dir()):
            files += [folder / n for n in ("subset.parquet", "scores.parquet", "report.json")]
    for path in files:
        if path.is_file():
            h.update(str(path.relative_to(workdir)).encode())
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


class SRecycled(datasets.GeneratorBasedBuilder):
    """sRecycled data of any source in Alpaca form (instruction, input, output), read from a workdir."""

    BUILDER_CONFIG_CLASS = SRecycledConfig
    VERSION = _VERSION
    BUILDER_CONFIGS = [
        SRecycledConfig(name=REFLECTIONS, version=_VERSION, description="The four variants of every source row."),
        SRecycledConfig(name=SCORES, version=_VERSION, description="Every variant with each student's scores."),
        *(
            SRecycledConfig(name=key, version=_VERSION, description=f"The subset selected by the student {key}.")
            for key in _shipped_student_keys()
        ),
    ]
    SOURCE_HINT: str | None = None  # a word the workdir's source should contain (checked with a warning)
    DESCRIPTION = "Selective Reflection-Tuning data: teacher-recycled variants, selected per student."
    HOMEPAGE = "https://arxiv.org/abs/2402.10110"
    LICENSE: str | None = None  # None: the license recorded in the workdir's reflections.json

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        data_dir = kwargs.get("data_dir")
        if data_dir and kwargs.get("hash") is None and Path(data_dir).is_dir():
            kwargs["hash"] = _workdir_digest(Path(data_dir))
        super().__init__(*args, **kwargs)

    def _create_builder_config(
        self, config_name: str | None = None, custom_features: Any = None, config_id: str | None = None, **kwargs: Any
    ) -> tuple[datasets.BuilderConfig, str]:
        # A user's own student key is a config made on the fly (the shipped table cannot list every student).
        if isinstance(config_name, str) and config_name not in self.builder_configs:
            return super()._create_builder_config(None, custom_features, config_id, name=config_name, **kwargs)
        return super()._create_builder_config(config_name, custom_features, config_id, **kwargs)

    # ---- datasets API -------------------------------------------------------------------------------------
    def _info(self) -> datasets.DatasetInfo:
        kind = self.config.kind
        features = (
            reflections_features()
            if kind == REFLECTIONS
            else scores_features()
            if kind == SCORES
            else subset_features()
        )
        return datasets.DatasetInfo(
            description=self.DESCRIPTION,
            features=features,
            homepage=self.HOMEPAGE,
            license=self.LICENSE or self._workdir_license(),
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        workdir = self._workdir()
        if self.config.kind == REFLECTIONS:
            files = {"reflections": workdir / "reflections.parquet"}
        elif self.config.kind == SCORES:
            files = {"reflections": workdir / "reflections.parquet", "students": workdir / "students"}
        else:
            folder = workdir / "students" / self.config.name
            if not (folder / "subset.parquet").is_file():
                built = sorted(p.parent.name for p in (workdir / "students").glob("*/subset.parquet"))
                raise StoreError(
                    f"{workdir} has no subset for the student {self.config.name!r} (built: {built or 'none'}); "
                    f"run srecycle build --workdir {workdir} --student {self.config.name}"
                )
            files = {"subset": folder / "subset.parquet"}
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={k: str(v) for k, v in files.items()})]

    def _generate_examples(self, **files: str) -> Iterator[tuple[Key, dict[str, Any]]]:
        if self.config.kind == REFLECTIONS:
            rows = self._reflection_rows(Path(files["reflections"]))
        elif self.config.kind == SCORES:
            rows = self._score_rows(Path(files["reflections"]), Path(files["students"]))
        else:
            rows = (_with_turns(row) for row in _read(Path(files["subset"]), SUBSET_COLUMNS, optional=True))
        for index, row in enumerate(rows):
            yield Key(0, index), row

    # ---- reading the stage files --------------------------------------------------------------------------
    def _workdir(self) -> Path:
        if not self.config.data_dir:
            raise ConfigError(
                f"{type(self).__name__} reads an srecycle workdir: pass data_dir=DIR (made by srecycle build)"
            )
        workdir = Path(self.config.data_dir)
        if not (workdir / "reflections.parquet").is_file():
            raise StoreError(f"{workdir} holds no reflections.parquet: run srecycle build --workdir {workdir} first")
        self._check_source(workdir)
        return workdir

    def _meta(self) -> dict[str, Any]:
        path = Path(self.config.data_dir or "") / "reflections.json"
        return json.loads(path.read_text(encoding="utf-8")) if self.config.data_dir and path.is_file() else {}

    def _workdir_license(self) -> str:
        return str(self._meta().get("license") or "other")

    def _check_source(self, workdir: Path) -> None:
        source = str(self._meta().get("source", ""))
        if self.SOURCE_HINT and self.SOURCE_HINT not in source.lower():
            logger.warning(
                "%s was built from %r, which does not look like %s; %s reads it anyway",
                workdir,
                source,
                self.SOURCE_HINT,
                type(self).__name__,
            )

    @staticmethod
    def _reflection_rows(path: Path) -> Iterator[dict[str, Any]]:
        for row in _read(path, REFLECTION_COLUMNS, optional=True):
            for v in VARIANTS:
                yield _with_turns(
                    {
                        "id": row["id"],
                        "source_index": row["source_index"],
                        "variant": v,
                        "instruction": row[f"{v}_instruction"],
                        "input": row[f"{v}_input"] or "",
                        "output": row[f"{v}_output"],
                        CONTEXT_COLUMN: row.get(CONTEXT_COLUMN),
                        "status": "ok" if v == "ori" else row[f"{v}_status"],
                        "detail": None if v == "ori" else row[f"{v}_detail"],
                    }
                )

    @staticmethod
    def _score_rows(reflections: Path, students: Path) -> Iterator[dict[str, Any]]:
        texts = {
            (row["id"], v): (row[f"{v}_instruction"], row[f"{v}_input"] or "", row[f"{v}_output"])
            for row in _read(reflections, REFLECTION_COLUMNS)
            for v in VARIANTS
        }
        folders = (
            sorted(p for p in students.iterdir() if (p / "scores.parquet").is_file()) if students.is_dir() else []
        )
        if not folders:
            raise StoreError(f"{students} holds no scores: build at least one student with srecycle build")
        for folder in folders:
            for row in _read(folder / "scores.parquet", ("id", "variant", *SCORE_COLUMNS)):
                text = texts.get((row["id"], row["variant"]))
                if text is None:
                    raise StoreError(
                        f"{folder / 'scores.parquet'} scores a row that {reflections} does not hold ({row['id']}); "
                        f"rebuild the student {folder.name}"
                    )
                instruction, input_, output = text
                yield {
                    "student": folder.name,
                    "id": row["id"],
                    "variant": row["variant"],
                    "instruction": instruction,
                    "input": input_,
                    "output": output,
                    **{c: row[c] for c in SCORE_COLUMNS},
                }


def _read(path: Path, columns: tuple[str, ...], *, optional: bool = False) -> list[dict[str, Any]]:
    """The rows of a stage file; ``optional`` also keeps its ``context`` column when it has one."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise StoreError(f"{path} is missing: run srecycle build on its workdir")
    table = pq.read_table(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise StoreError(f"{path} lacks the columns {missing}; rebuild it with srecycle build")
    extra = [CONTEXT_COLUMN] if optional and CONTEXT_COLUMN in table.column_names else []
    return table.select([*columns, *extra]).to_pylist()


def _with_turns(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its chat columns after ``output``, as the release tree writes them (``context`` consumed)."""
    context = context_from_json(row.pop(CONTEXT_COLUMN, None))
    messages = turns_of(row["instruction"], row["input"] or "", row["output"], context)
    chat = {"messages": messages, "prompt": messages[:-1], "completion": messages[-1:]}
    out: dict[str, Any] = {}
    for name, value in row.items():
        out[name] = value
        if name == "output":
            out.update(chat)
    return out


class SRecycledAlpaca(SRecycled):
    """sRecycled Alpaca: the 52,002 Stanford Alpaca rows (tatsu-lab/alpaca), recycled and selected per student."""

    SOURCE_HINT = "alpaca"
    DESCRIPTION = (
        "sRecycled Alpaca: each Stanford Alpaca row reflected by a teacher into four variants, and the one each "
        "student finds worth learning from, selected by IFD and reverse IFD."
    )
    LICENSE = "cc-by-nc-4.0"


class SRecycledWizardLM(SRecycled):
    """sRecycled WizardLM: the WizardLM evol-instruct 70k rows (instruction and output only), recycled."""

    SOURCE_HINT = "wizard"
    DESCRIPTION = (
        "sRecycled WizardLM: each WizardLM evol-instruct 70k row reflected by a teacher into four variants, and "
        "the one each student finds worth learning from, selected by IFD and reverse IFD."
    )


class SRecycledGeneric(SRecycled):
    """sRecycled data of any source in Alpaca form; the license is the one recorded in the workdir."""


__all__ = [
    "REFLECTIONS",
    "SCORES",
    "SRecycled",
    "SRecycledAlpaca",
    "SRecycledConfig",
    "SRecycledGeneric",
    "SRecycledWizardLM",
    "reflections_features",
    "scores_features",
    "subset_features",
]
