"""Student prompt formats (docs/method.md, section 3). The strings are format constants: keep them byte-exact.

``render_prompt`` builds the prompt part ``T(x, i)`` whose continuation the student scores;
``reverse_request`` wraps a response in the guess-the-instruction request used by r-IFD.

The earlier turns of a chat row (its *context*: an optional system turn, then finished exchanges) come
before the last exchange, in the student's format:

- ``chat``: the student's own chat template over every turn (the context, then the user turn);
- ``vicuna``: FastChat v1.1's multi-turn form: the system turn replaces the default system line, and each
  earlier exchange is ``USER: {u} ASSISTANT: {a}</s>``;
- ``alpaca``, ``wizardlm``, ``none`` (which have no multi-turn form): a transcript of the context before the
  template's text, one ``Role: content`` block per turn (``System``, ``User``, ``Assistant``), each followed
  by a blank line.

Without context every format is exactly the single-turn one, so an Alpaca row and the same row as a
one-turn chat give the same prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recycled_datasets.errors import ConfigError
from recycled_datasets.records import Turn

TEMPLATES: tuple[str, ...] = ("alpaca", "vicuna", "wizardlm", "none", "chat")

# Stanford Alpaca (train.py PROMPT_DICT), byte-exact.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
# FastChat conversation template "vicuna_v1.1" (sep " ", roles USER/ASSISTANT), byte-exact.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA = VICUNA_SYSTEM + " USER: {instruction} ASSISTANT:"
VICUNA_SEP2 = "</s>"  # FastChat v1.1 closes each assistant turn with it
WIZARDLM = "{instruction}\n\n### Response:"

# Our own wording of the r-IFD request: the student sees a response and is asked for its instruction.
REVERSE_REQUEST = (
    "Here is a response written by an assistant. Guess the instruction (and its input, if it had one) "
    "that this response answers.\n\nResponse:\n{response}"
)


# The `reference` scoring convention (docs/method.md, section 3): the request strings of the reference authors'
# scoring script (tianyi-lab/Reflection_Tuning, selection_code/data_analysis.py; Cherry_LLM's is the same),
# format constants kept byte-exact so that IFD and r-IFD match the published scores. Their Alpaca and WizardLM
# prompts are the ones above; their Vicuna prompt for a row with an input labels the input:
VICUNA_WITH_INPUT_REFERENCE = VICUNA_SYSTEM + " USER: {instruction}\nInput:\n{input} ASSISTANT:"
# Their guess-the-instruction request, wrapped in the format's no-input prompt; the target x' is
# instruction + input with no separator.
REFERENCE_REVERSE_REQUEST = (
    "Below is the response to an instruction, please guess the corresponding instruction for the given response.\n"
    "{response}\nGenerate the instruction for the above response."
)
REFERENCE_TEMPLATES: tuple[str, ...] = ("alpaca", "vicuna", "wizardlm")


def reference_prompt(template: str, instruction: str, input: str = "") -> str:
    """``T(x, i)`` as the reference script writes it (single-turn rows, alpaca / vicuna / wizardlm only)."""
    if template == "vicuna" and input:
        return VICUNA_WITH_INPUT_REFERENCE.format(instruction=instruction, input=input)
    if template not in REFERENCE_TEMPLATES:
        raise ConfigError(
            f"the reference scoring convention has no {template!r} form (only {', '.join(REFERENCE_TEMPLATES)}): "
            "use --scoring split"
        )
    return render_prompt(template, instruction, input)


def reference_reverse_prompt(template: str, response: str) -> str:
    """The reference's r-IFD prompt: its guess-the-instruction request in the format's no-input prompt."""
    return reference_prompt(template, REFERENCE_REVERSE_REQUEST.format(response=response))


def _joined(instruction: str, input: str) -> str:
    return f"{instruction}\n{input}" if input else instruction


def context_transcript(context: Sequence[Turn]) -> str:
    """The earlier turns as the plain templates show them: ``Role: content`` and a blank line per turn."""
    return "".join(f"{turn.role.capitalize()}: {turn.content}\n\n" for turn in context)


def _vicuna(instruction: str, context: Sequence[Turn]) -> str:
    if not context:
        return VICUNA.format(instruction=instruction)
    system = context[0].content if context[0].role == "system" else VICUNA_SYSTEM
    text = system + " "
    for turn in context[1:] if context[0].role == "system" else context:
        text += f"USER: {turn.content} " if turn.role == "user" else f"ASSISTANT: {turn.content}{VICUNA_SEP2}"
    return text + f"USER: {instruction} ASSISTANT:"


def render_prompt(
    template: str, instruction: str, input: str = "", *, tokenizer: Any = None, context: Sequence[Turn] = ()
) -> str:
    """The prompt part ``T(x, i)`` of a pair in the student's format, after the row's earlier turns.

    ``chat`` needs the student's tokenizer (its own chat template over the context and the user turn,
    generation prompt added). The text is returned whole; the scorer does not add a second BOS when the
    template already starts with it. See the module doc for how each format shows ``context``.
    """
    if template == "alpaca":
        if input:
            return context_transcript(context) + ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
        return context_transcript(context) + ALPACA_NO_INPUT.format(instruction=instruction)
    if template == "vicuna":
        return _vicuna(_joined(instruction, input), context)
    if template == "wizardlm":
        return context_transcript(context) + WIZARDLM.format(instruction=_joined(instruction, input))
    if template == "none":
        return context_transcript(context) + (f"{instruction}\n{input}\n" if input else f"{instruction}\n")
    if template == "chat":
        if tokenizer is None:
            raise ConfigError("template 'chat' needs the student's tokenizer: pass tokenizer=")
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"template 'chat': the tokenizer of {getattr(tokenizer, 'name_or_path', 'this student')} has no chat "
                "template; choose --template alpaca, vicuna, wizardlm or none"
            )
        turns = [{"role": t.role, "content": t.content} for t in context]
        return tokenizer.apply_chat_template(
            [*turns, {"role": "user", "content": _joined(instruction, input)}],
            tokenize=False,
            add_generation_prompt=True,
        )
    raise ConfigError(f"unknown template {template!r}: choose one of {', '.join(TEMPLATES)}")


def reverse_request(response: str) -> str:
    """The guess-the-instruction request wrapped around a response (r-IFD's ``R(y)``)."""
    return REVERSE_REQUEST.format(response=response)


def instruction_target(instruction: str, input: str = "") -> str:
    """``x'``: the instruction with its input appended after a newline, as r-IFD scores it."""
    return _joined(instruction, input)


def validate_template(template: str) -> str:
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r}: choose one of {', '.join(TEMPLATES)}")
    return template
