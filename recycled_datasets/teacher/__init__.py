"""The teacher stage: source rows -> four variants per row, resumable and crash-safe (docs/method.md, 1-2).

Entry points: :func:`reflect_rows` (the stage), :func:`plan_rows` (what a run would send, through the same
code), and :func:`teacher_identity` (the teacher id and prompt version a run records). Modules: ``config``
(the run's settings, the teacher they name), ``base`` (the teacher interface, the store-only teacher),
``client`` and ``transport`` (HTTP servers), ``local`` (in-process transformers), ``prompts`` (wording,
versions, parser), ``replies`` (parsing and judging a reply), ``store`` (answers committed as they arrive),
``run`` (one run's requests), ``variants`` (a row's reflections), ``stage`` (the stage's entry points).
"""

from recycled_datasets.teacher.config import ReflectConfig, TeacherClient
from recycled_datasets.teacher.gates import GateConfig
from recycled_datasets.teacher.prompts import DEFAULT_PROMPT_VERSION, PromptSet, load_prompts, parse_sections
from recycled_datasets.teacher.run import ReflectStats
from recycled_datasets.teacher.stage import (
    ReflectPlan,
    ReflectResult,
    plan_rows,
    reflect_rows,
    teacher_identity,
)
from recycled_datasets.teacher.store import AnswerStore

__all__ = [
    "DEFAULT_PROMPT_VERSION",
    "AnswerStore",
    "GateConfig",
    "PromptSet",
    "ReflectConfig",
    "ReflectPlan",
    "ReflectResult",
    "ReflectStats",
    "TeacherClient",
    "load_prompts",
    "parse_sections",
    "plan_rows",
    "reflect_rows",
    "teacher_identity",
]
