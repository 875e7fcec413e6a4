"""The teacher stage: source rows -> four variants per row, resumable and crash-safe (docs/method.md, 1-2).

Entry points: :func:`reflect_rows` (the stage), :func:`plan_rows` (what a run would send), and
:func:`teacher_identity` (the teacher id and prompt version a run records). Modules: ``prompts`` (wording,
versions, parser), ``store`` (answers committed as they arrive), ``client`` (HTTP servers), ``local``
(in-process transformers), ``stage`` (the flow of calls per row).
"""

from recycled_datasets.teacher.prompts import DEFAULT_PROMPT_VERSION, PromptSet, load_prompts, parse_sections
from recycled_datasets.teacher.stage import (
    ReflectConfig,
    ReflectPlan,
    ReflectResult,
    ReflectStats,
    plan_rows,
    reflect_rows,
    teacher_identity,
)
from recycled_datasets.teacher.store import AnswerStore

__all__ = [
    "DEFAULT_PROMPT_VERSION",
    "AnswerStore",
    "PromptSet",
    "ReflectConfig",
    "ReflectPlan",
    "ReflectResult",
    "ReflectStats",
    "load_prompts",
    "parse_sections",
    "plan_rows",
    "reflect_rows",
    "teacher_identity",
]
