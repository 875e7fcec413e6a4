"""The config of an sRecycled builder: which table to make, from which rows, with which teacher and student.

A config's name is what ``load_dataset(repo, NAME)`` of a release takes: a student key (that student's
subset), ``reflections`` (every variant of every row) or ``scores`` (every variant's scores for the
config's students). The other fields are the options of ``srecycle build``; each is checked when the config
is made, so a wrong value is one :class:`~recycled_datasets.errors.ConfigError` before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets

from recycled_datasets.errors import ConfigError
from recycled_datasets.models import DEFAULT_STUDENT
from recycled_datasets.selection import Mode
from recycled_datasets.workdir import REFLECTIONS_CONFIG, SCORES_CONFIG, check_config_name

if TYPE_CHECKING:
    from recycled_datasets.scoring import ScoreConfig
    from recycled_datasets.selection import SelectionConfig
    from recycled_datasets.stages import PromptFiles
    from recycled_datasets.teacher.config import TeacherClient
    from recycled_datasets.teacher.gates import GateConfig

STAGE_CONFIGS = (REFLECTIONS_CONFIG, SCORES_CONFIG)
_UNNAMED = "default"  # the name datasets gives a config when the caller names none


@dataclass
class SRecycledConfig(datasets.BuilderConfig):
    """What one ``download_and_prepare()`` makes, and how.

    Attributes:
        name: the config: a student key (its subset; a key of the shipped students table, of
            ``students_file``, or any new lowercase key naming the model given in ``student``), ``reflections``
            or ``scores``.
        workdir: the folder that keeps the teacher's answers and every stage's output (required). A later
            build with the same workdir reuses them: a second student costs no teacher call.
        source: where the rows come from: ``alpaca``, ``wizardlm``, ``sample``, or a JSON/JSONL/parquet file,
            folder or Hub id of Alpaca or chat rows. ``None``: the builder's own dataset (for the generic
            ``SRecycled``, the rows already in the workdir).
        teacher: a server URL (TGI, OpenAI-compatible; comma-separated to share load) or ``local[:MODEL]``;
            contacted only for rows the workdir has not reflected yet.
        student: the student of a student config: a key of the students table, a Hub id, a model folder or
            a ``.gguf`` file. ``None``: the config name as a key of the table. For ``scores``, the student
            scored when ``students`` is empty (default: the embedded ``smollm2-135m``).
        students: the students of the ``scores`` config (keys or models, as ``student``), in that order.
        students_file: a TOML file of extra students (``$SRECYCLE_STUDENTS`` is read too).
        template: the students' prompt format (``alpaca``, ``vicuna``, ``wizardlm``, ``none``, ``chat``);
            ``None``: each student's own.
        mode: ``paper`` keeps rows whose final variant is ``res`` or ``both``; ``keep-unreflected`` also
            keeps ``ins`` and ``ori`` finals.
        top_k: after the rule, keep only the k kept rows with the highest IFD.
        top_p: the same as a percentage of the kept rows (give ``top_k`` or ``top_p``, not both).
        limit: use only the first N valid source rows.
        max_new_tokens: the output budget of each teacher call (``None``: the teacher stage's default).
        skip_invalid: drop invalid source rows (counted) instead of stopping at the first.
        max_length: tokens per scored sequence; longer ones are truncated.
        dtype: the students' dtype when scoring (``bfloat16`` or ``float32``; ``None``: the student's own).
        scoring: the scores' token layout, ``reference`` or ``split`` (``None``: the student's, else reference for
            single-turn alpaca/vicuna/wizardlm rows, else split; docs/method.md, section 3).
        batch_tokens: padded tokens per scoring forward pass (``None``: by device).
        gates: quality-gate settings ``NAME=VALUE`` (``srecycle build --gate``), e.g. ``max_repeats=4``.
        gates_off: quality gates not to run (``srecycle build --gate-off``).
        prompt_instruction / prompt_response: your reflection prompt files (``srecycle build
            --prompt-instruction`` / ``--prompt-response``): plain text, or TOML with a system message and the
            forms for rows with an input (``recycled_datasets/teacher/prompts.py``). ``None``: the packaged one.
        prompt_version: the name the answers of your prompts are cached under (``None``: a hash of the files).
        teacher_client: how the teacher client talks to its servers: concurrency, API, timeouts, retries
            (:class:`recycled_datasets.teacher.config.TeacherClient`; ``None``: its defaults).
    """

    workdir: str | Path | None = None
    source: str | None = None
    teacher: str | None = None
    student: str | None = None
    students: tuple[str, ...] = ()
    students_file: str | Path | None = None
    template: str | None = None
    mode: Mode = "paper"
    top_k: int | None = None
    top_p: float | None = None
    limit: int | None = None
    max_new_tokens: int | None = None
    skip_invalid: bool = False
    max_length: int = 2048
    dtype: str | None = None
    scoring: str | None = None
    batch_tokens: int | None = None
    gates: tuple[str, ...] = ()
    gates_off: tuple[str, ...] = ()
    prompt_instruction: str | Path | None = None
    prompt_response: str | Path | None = None
    prompt_version: str | None = None
    teacher_client: TeacherClient | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_name()
        if self.workdir is None or not str(self.workdir):
            raise ConfigError(
                f"config {self.name!r} needs workdir=DIR: the folder that keeps the teacher's answers and the "
                "stages' output (a later build reuses them)"
            )
        if self.students and self.name != SCORES_CONFIG:
            raise ConfigError(f"students= lists the students of the 'scores' config, not of {self.name!r}")
        for value, what in ((self.limit, "limit"), (self.max_new_tokens, "max_new_tokens")):
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ConfigError(f"{what} must be at least 1, not {value!r}")
        if isinstance(self.teacher_client, dict):  # load_dataset(..., teacher_client={"concurrency": 4})
            from recycled_datasets.teacher.config import TeacherClient

            try:
                self.teacher_client = TeacherClient(**self.teacher_client)
            except TypeError as e:
                raise ConfigError(f"teacher_client: {e}; its fields: {', '.join(TeacherClient.__slots__)}") from e
        # Build the stage settings once, so each of their own checks runs now.
        self.selection()
        self.score_config()
        self.gate_config()
        self.prompts()

    def _check_name(self) -> None:
        if self.name == _UNNAMED:
            raise ConfigError(
                "name the config: config_name=STUDENT_KEY (a student's subset), 'reflections' or 'scores'"
            )
        if self.name in STAGE_CONFIGS:
            return
        try:
            check_config_name(self.name)
        except ConfigError as e:
            raise ConfigError(
                f"{self.name!r} is not a config of an sRecycled builder: give a student key (lowercase letters, "
                f"digits, '.', '_' and '-', not a reserved name), '{REFLECTIONS_CONFIG}' or '{SCORES_CONFIG}'"
            ) from e

    @property
    def is_student(self) -> bool:
        """Whether this config is a student's subset (not ``reflections`` or ``scores``)."""
        return self.name not in STAGE_CONFIGS

    @property
    def root(self) -> Path:
        """The workdir as a path."""
        return Path(str(self.workdir))

    def selection(self) -> SelectionConfig:
        from recycled_datasets.selection import SelectionConfig

        return SelectionConfig(mode=self.mode, top_k=self.top_k, top_p=self.top_p)

    def score_config(self) -> ScoreConfig:
        """The scoring settings (the template goes to the student itself, as ``srecycle build`` does)."""
        from recycled_datasets.scoring import ScoreConfig

        return ScoreConfig(
            max_length=self.max_length, dtype=self.dtype, batch_tokens=self.batch_tokens, scoring=self.scoring
        )

    def gate_config(self) -> GateConfig:
        from recycled_datasets.teacher.gates import GateConfig

        return GateConfig.from_options(self.gates, self.gates_off)

    def prompts(self) -> PromptFiles:
        """The teacher's prompt files (read now, so a missing or malformed file fails before any work)."""
        from recycled_datasets.stages import PromptFiles

        return PromptFiles.of(self.prompt_instruction, self.prompt_response, self.prompt_version)

    def score_students(self) -> tuple[str, ...]:
        """The students the ``scores`` config scores, in order."""
        return tuple(self.students) or (self.student or DEFAULT_STUDENT,)
