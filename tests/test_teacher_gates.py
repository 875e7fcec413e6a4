"""Quality gates on parsed teacher sections: each gate refuses a real failure, and a clean reflection passes."""

from __future__ import annotations

import pytest

from recycled_datasets.errors import ConfigError
from recycled_datasets.teacher.gates import (
    CUT_OFF,
    DEGENERATE,
    ECHO,
    EMPTY,
    SCAFFOLD_LEAK,
    GateConfig,
    judge_section,
    reason_counts,
)
from recycled_datasets.teacher.prompts import BETTER_ANSWER, NEW_ANSWER, default_prompts
from recycled_datasets.teacher.replies import Judge, parse_instruction_reply, parse_response_reply

PROMPTS = default_prompts()
SCAFFOLD = PROMPTS.scaffold()
HAIKU = "Write a haiku about autumn rain."
HAIKU_ANSWER = "Cold rain on the roof\nmaple leaves slide down the glass\nthe kettle whistles"

# The demo's row 3 as a user saw it: the res variant's "better answer" echoed the prompt's own layout.
ROW3_REPLY = (
    'The answer is weak.\n\n[Better Answer] "The answer is of the best quality." The response is fabricated, and '
    "the response is never going to be improved. The answer is below. [Instruction] Write a haiku about autumn "
    "rain. [Answer] Cold rain on the roof [End]"
)
# The demo's row 1: the ins variant whose new instruction and new answer are one and the same sentence.
ROW1_REPLY = (
    "Step 1: the instruction is too easy.\n"
    "[New Instruction] Convert 25 degrees Celsius to Fahrenheit and show the formula. [End]\n"
    "[New Answer] Convert 25 degrees Celsius to Fahrenheit and show the formula. [End]"
)
# A repetition loop as SmolLM2 writes one at greedy decoding.
LOOP = " ".join(["The rain falls on the roof and the leaves fall down."] * 5)
CLEAN_INSTRUCTION_REPLY = (
    "The instruction is short and asks for little; the answer is fine but gives no imagery beyond one scene.\n\n"
    "[New Instruction] Write two haiku about autumn rain in a city, one from the view of a commuter and one from "
    "the view of a street cat, each following the 5-7-5 syllable pattern, and give each a title. [End]\n\n"
    "[New Answer] Commuter\nGrey drops on my coat\nthe bus hisses at the kerb\numbrellas like shells\n\n"
    "Street Cat\nUnder the parked car\nI watch the gutters running\nwhiskers full of rain [End]"
)


def judge(reply_text: str, *, finish: str | None = "stop", gates: GateConfig | None = None):
    return Judge(gates or GateConfig(), SCAFFOLD, finish)


def test_the_demos_row_3_scaffold_leak_is_refused():
    fields, why = parse_response_reply(
        PROMPTS, ROW3_REPLY, instruction=HAIKU, original=HAIKU_ANSWER, judge=judge(ROW3_REPLY)
    )
    assert fields is None
    assert why.startswith(f"[{SCAFFOLD_LEAK}]") and "[Instruction]" in why


def test_the_demos_row_1_instruction_repeated_as_answer_is_an_echo():
    fields, why = parse_instruction_reply(
        PROMPTS, ROW1_REPLY, original="Convert the temperature from Celsius to Fahrenheit.", judge=judge(ROW1_REPLY)
    )
    assert fields is None
    assert why.startswith(f"[{ECHO}]") and "instruction" in why


def test_a_clean_reflection_passes_every_gate():
    fields, why = parse_instruction_reply(
        PROMPTS, CLEAN_INSTRUCTION_REPLY, original=HAIKU, judge=judge(CLEAN_INSTRUCTION_REPLY)
    )
    assert why is None and fields is not None
    assert fields["instruction"].startswith("Write two haiku") and fields["output"].startswith("Commuter")
    better = "[Better Answer] Rain taps the window\nred maple leaves drift and drown\nsteam curls from my cup [End]"
    fields, why = parse_response_reply(PROMPTS, better, instruction=HAIKU, original=HAIKU_ANSWER, judge=judge(better))
    assert why is None and fields == {
        "output": "Rain taps the window\nred maple leaves drift and drown\nsteam curls from my cup"
    }


@pytest.mark.parametrize(
    "text",
    [
        "Here is the answer. Step 2, a better answer. Rain on the roof.",  # a heading of the prompt
        "You review training data for AI assistants, and you are hard to please. Rain.",  # its first sentence
        "[Input] none. Rain on the roof.",  # the label of the example's input
    ],
)
def test_scaffold_leak_catches_headings_labels_and_sentences_of_the_prompt(text):
    verdict = judge_section(text, marker=BETTER_ANSWER, scaffold=SCAFFOLD)
    assert verdict.gate == SCAFFOLD_LEAK


def test_ordinary_step_lists_are_not_a_leak():
    text = "Step 1: preheat the oven to 180 C.\nStep 2: mix the flour and the eggs.\nStep 3: bake for 30 minutes."
    assert judge_section(text, marker=BETTER_ANSWER, scaffold=SCAFFOLD).ok


def test_echo_of_the_original_instruction_and_answer():
    original = "Describe the main causes of the French Revolution in a short paragraph."
    same = judge_section(original.upper() + " ", marker="New Instruction", original=original)
    assert same.gate == ECHO
    contains = judge_section(f"{original} Then compare them with the American one.", marker="x", original=original)
    assert contains.gate == ECHO
    # A short original may legitimately open a harder instruction.
    harder = judge_section(f"{HAIKU[:-1]} from the view of a cat, in 5-7-5.", marker="x", original=HAIKU)
    assert harder.ok
    assert judge_section(HAIKU_ANSWER, marker=BETTER_ANSWER, instruction=HAIKU, original=HAIKU_ANSWER).gate == ECHO


def test_degenerate_loops_are_refused_and_refrains_below_the_threshold_pass():
    verdict = judge_section(LOOP, marker=NEW_ANSWER)
    assert verdict.gate == DEGENERATE and "5 times" in verdict.why
    token_loop = "Celsius " * 80  # no sentence boundary at all: the compression ratio catches it
    assert judge_section(token_loop, marker=NEW_ANSWER).gate == DEGENERATE
    refrain = "The rain falls on the roof and the leaves fall down. It is cold.\n" * 2
    assert judge_section(refrain, marker=NEW_ANSWER).ok
    assert judge_section(LOOP, marker=NEW_ANSWER, config=GateConfig(max_repeats=6, max_compression=10)).ok


def test_cut_off_needs_the_token_limit_and_an_open_section():
    reply = "Critique.\n[Better Answer] Rain on the roof, the leaves"
    fields, why = parse_response_reply(
        PROMPTS, reply, instruction=HAIKU, original="x", judge=judge(reply, finish="length")
    )
    assert fields is None and why.startswith(f"[{CUT_OFF}]")
    # The same text that ended on its own, or a closed section at the limit, is fine.
    assert parse_response_reply(PROMPTS, reply, instruction=HAIKU, original="x", judge=judge(reply))[0] is not None
    closed = reply + " [End] and more critique"
    assert parse_response_reply(
        PROMPTS, closed, instruction=HAIKU, original="x", judge=judge(closed, finish="length")
    )[0]


def test_punctuation_only_sections_are_empty():
    for text in ("...", "— — —", "**", "?!"):
        assert judge_section(text, marker=BETTER_ANSWER).gate == EMPTY


def test_gates_can_be_turned_off_by_name_and_thresholds_are_checked():
    off = GateConfig.from_options(disabled=[SCAFFOLD_LEAK])
    assert parse_response_reply(PROMPTS, ROW3_REPLY, instruction=HAIKU, original="x", judge=Judge(off, SCAFFOLD))[0]
    config = GateConfig.from_options(["max-repeats=5", "max_compression=6.5"])
    assert config.max_repeats == 5 and config.max_compression == 6.5
    with pytest.raises(ConfigError, match="unknown gate"):
        GateConfig(disabled=("spelling",))
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        GateConfig.from_options(["max_repeats"])
    with pytest.raises(ConfigError, match="not a valid int"):
        GateConfig.from_options(["max_repeats=three"])


def test_a_later_clean_section_is_used_when_the_first_fails_a_gate():
    reply = "[Better Answer] ... [End]\n[Better Answer] Rain taps the glass. [End]"
    fields, _ = parse_response_reply(PROMPTS, reply, instruction=HAIKU, original="x", judge=judge(reply))
    assert fields == {"output": "Rain taps the glass."}


def test_reason_counts_count_each_reason_once_per_detail():
    details = [
        "res_output fell back: attempt 1: [echo] a; attempt 2: [echo] b",
        "attempt 1: [unparsed] no section; attempt 2: [cut_off] limit",
        None,
    ]
    assert reason_counts(details) == {"echo": 1, "cut_off": 1, "unparsed": 1}
