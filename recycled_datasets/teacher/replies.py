"""Reading a teacher reply: its sections parsed and judged by the quality gates (``gates.py``), or why not.

A real run and a dry run both parse with these, so they agree on which stored replies count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recycled_datasets.teacher.gates import UNPARSED, GateConfig, Scaffold, judge_section
from recycled_datasets.teacher.prompts import BETTER_ANSWER, NEW_ANSWER, NEW_INSTRUCTION, PromptSet, parse_sections


@dataclass(frozen=True)
class Judge:
    """What the quality gates compare a reply with: the gate settings, the prompts' scaffold, the finish reason."""

    gates: GateConfig = field(default_factory=GateConfig)
    scaffold: Scaffold = field(default_factory=Scaffold)
    finish_reason: str | None = None

    def __call__(self, marker: str, *, instruction: str | None = None, original: str | None = None) -> Any:
        def judge(text: str, closed: bool) -> Any:
            return judge_section(
                text,
                marker=marker,
                finish_reason=self.finish_reason,
                closed=closed,
                scaffold=self.scaffold,
                config=self.gates,
                instruction=instruction,
                original=original,
            )

        return judge


def _why(section: Any) -> str:
    # Every failure reason starts with its name in brackets, so runs and cards can count them.
    return section.reason if section.gate is not None else f"[{UNPARSED}] {section.reason}"


def parse_instruction_reply(
    prompts: PromptSet, text: str, *, original: str = "", judge: Judge | None = None
) -> tuple[dict[str, str] | None, str | None]:
    """The new instruction and its answer from an instruction-reflection reply, or why there are none.

    ``original`` is the instruction being reflected (without its input), which the new one must not echo.
    The run and the dry run (:func:`plan_rows`) both parse with this, so they agree on which replies count.
    """
    judge = judge or Judge(scaffold=prompts.scaffold())
    ph = prompts.placeholders
    instruction = parse_sections(
        text, NEW_INSTRUCTION, ph.get(NEW_INSTRUCTION, ()), judge(NEW_INSTRUCTION, original=original)
    )
    if not instruction.ok:
        return None, _why(instruction)
    answer = parse_sections(text, NEW_ANSWER, ph.get(NEW_ANSWER, ()), judge(NEW_ANSWER, instruction=instruction.text))
    if not answer.ok:
        return None, _why(answer)
    return {"instruction": instruction.text or "", "output": answer.text or ""}, None


def parse_response_reply(
    prompts: PromptSet, text: str, *, instruction: str = "", original: str = "", judge: Judge | None = None
) -> tuple[dict[str, str] | None, str | None]:
    """The better answer from a response-reflection reply, or why there is none.

    ``instruction`` is what the answer answers (without its input) and ``original`` the answer it improves on.
    """
    judge = judge or Judge(scaffold=prompts.scaffold())
    answer = parse_sections(
        text,
        BETTER_ANSWER,
        prompts.placeholders.get(BETTER_ANSWER, ()),
        judge(BETTER_ANSWER, instruction=instruction, original=original),
    )
    return ({"output": answer.text or ""}, None) if answer.ok else (None, _why(answer))
