"""Teacher prompts and the reply parser (docs/method.md, section 2), on replies shaped like real teachers'."""

from __future__ import annotations

from pathlib import Path

import pytest

from recycled_datasets.errors import ConfigError
from recycled_datasets.teacher.prompts import (
    BETTER_ANSWER,
    DEFAULT_PROMPT_VERSION,
    NEW_ANSWER,
    NEW_INSTRUCTION,
    default_prompts,
    load_prompts,
    parse_sections,
)

PROMPTS = default_prompts()
PH = PROMPTS.placeholders


def parse(reply: str, marker: str) -> tuple[str | None, str | None]:
    section = parse_sections(reply, marker, PH.get(marker, ()))
    return section.text, section.reason


def test_well_formed_reply_with_critique():
    reply = (
        "The instruction is vague: it does not say which audience the tips are for.\n"
        "The answer lists three generic tips without explanation.\n\n"
        "[New Instruction] Give five evidence-based study techniques for a university student preparing for a "
        "statistics exam, and explain why each one works. [End]\n\n"
        "[New Answer] 1. Spaced repetition: reviewing material over increasing intervals...\n"
        "2. Retrieval practice: testing yourself...\n\nIn the end, combine them. [End]"
    )
    instruction, _ = parse(reply, NEW_INSTRUCTION)
    answer, _ = parse(reply, NEW_ANSWER)
    assert instruction.startswith("Give five evidence-based study techniques")
    assert instruction.endswith("why each one works.")
    # Multi-line answers survive whole, and the word "end" inside the text does not cut them.
    assert answer.startswith("1. Spaced repetition") and answer.endswith("In the end, combine them.")


def test_bare_markdown_forms_are_accepted():
    reply = (
        "### Critique\nToo short.\n\n**New Instruction:** Compare bubble sort and merge sort on 10^6 integers.\n\n"
        "**New Answer:** Merge sort runs in O(n log n)...\n"
    )
    assert parse(reply, NEW_INSTRUCTION)[0] == "Compare bubble sort and merge sort on 10^6 integers."
    assert parse(reply, NEW_ANSWER)[0] == "Merge sort runs in O(n log n)..."
    heading = "## Better Answer:\nPhotosynthesis turns light into chemical energy."
    assert parse(heading, BETTER_ANSWER)[0] == "Photosynthesis turns light into chemical energy."


def test_section_runs_to_next_marker_or_end_of_text():
    # A reply cut by the token limit: no [End] at all; the last section runs to the end of the text.
    reply = "[new instruction] Write a haiku about rain in Kyoto.\n[NEW ANSWER] Grey roofs drink the rain"
    assert parse(reply, NEW_INSTRUCTION)[0] == "Write a haiku about rain in Kyoto."
    assert parse(reply, NEW_ANSWER)[0] == "Grey roofs drink the rain"


def test_missing_marker_is_a_failure_with_reason():
    text, reason = parse("Here is a better answer: water boils at 100 °C at sea level.", BETTER_ANSWER)
    assert text is None
    assert reason == "no [Better Answer] section in the reply"


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("[Better Answer] N/A [End]", "N/A"),
        ("[Better Answer]\n\n[End]", "empty"),
        ("[Better Answer] the improved answer goes here [End]", "placeholder"),
        ("[Better Answer] <the improved answer goes here> [End]", "placeholder"),
        ("[Better Answer] ... [End]", "empty"),
    ],
)
def test_unusable_sections_fail_with_their_reason(reply, why):
    text, reason = parse(reply, BETTER_ANSWER)
    assert text is None
    assert why in reason


@pytest.mark.parametrize("answer", ["None.", "[1, 2, 3]", '{"a": 1}', "<br> tags break lines in HTML."])
def test_short_or_bracketed_answers_are_real_answers(answer):
    # Only an empty section, N/A and the prompt's own placeholder words are failures (docs/method.md, section 2).
    assert parse(f"[Better Answer] {answer} [End]", BETTER_ANSWER) == (answer, None)
    assert parse(f"[New Instruction] Say it.\n[New Answer]\n{answer}\n[End]", NEW_ANSWER) == (answer, None)


def test_echoed_prompt_layout_is_skipped_for_the_real_section():
    # Small models often repeat the prompt's instructions before answering.
    reply = (
        "Step 2: put it between [New Instruction] and [End].\n"
        "[New Instruction] the new instruction goes here [End]\n"
        "[New Instruction] Describe three causes of the French Revolution with dates. [End]\n"
        "[New Answer] 1789... [End]"
    )
    assert parse(reply, NEW_INSTRUCTION)[0] == "Describe three causes of the French Revolution with dates."


def test_only_placeholders_reports_placeholder():
    reply = "[New Instruction] the new instruction goes here [End]\n[New Answer] N/A [End]"
    assert "placeholder" in parse(reply, NEW_INSTRUCTION)[1]
    assert "N/A" in parse(reply, NEW_ANSWER)[1]


def test_render_keeps_data_braces_and_shows_input_only_when_present():
    with_input = PROMPTS.render_response("Fill {blank} in", "The {input} text", "answer {response}")
    assert "Fill {blank} in" in with_input and "[Input]\nThe {input} text" in with_input
    assert "answer {response}" in with_input
    without = PROMPTS.render_instruction("Say hi", "", "hi")
    assert "[Input]" not in without and "{input" not in without


def test_user_prompt_files_get_their_own_version(tmp_path: Path):
    custom = tmp_path / "response.txt"
    custom.write_text(
        "Improve this.\n{instruction}\n{input_section}\n{response}\n[Better Answer] your answer [End]\n",
        encoding="utf-8",
    )
    prompts = load_prompts(response_file=custom)
    assert prompts.version.startswith("custom-") and prompts.version != DEFAULT_PROMPT_VERSION
    assert prompts.placeholders[BETTER_ANSWER] == ("your answer",)
    custom.write_text(custom.read_text() + "Be concise.\n", encoding="utf-8")
    assert load_prompts(response_file=custom).version != prompts.version  # new wording, new version
    assert load_prompts(response_file=custom, version="paper-v1").version == "paper-v1"


def test_prompt_file_without_markers_is_refused(tmp_path: Path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Rewrite {instruction} / {response} better.", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[Better Answer\]"):
        load_prompts(response_file=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_prompts(instruction_file=tmp_path / "missing.txt")
