"""Teacher prompts: the two reflection prompts, their version, and the parser of the teacher's reply.

The method behind them is in docs/method.md, section 2.

The wording lives in text files (``recycled_datasets/prompts/*.txt``) so that users can swap in their own, for
instance the paper's exact prompts. A prompt file is plain text with these placeholders:

- ``{instruction}``, ``{input}``, ``{response}``: the example's fields;
- ``{input_section}``: a labelled ``[Input]`` block when the example has an input, else nothing;
- ``{input_note}`` / ``{input_note_short}``: ", its input" / " and input" when it has one, else nothing.

The markers (``[New Instruction]``, ``[New Answer]``, ``[Better Answer]``, ``[End]``) are a format constant.
Cached answers are keyed by the prompt version, and a change of wording always yields a new version: the
default prompts carry a name bumped by hand, user prompts a hash of their text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from recycled_datasets.chat import teacher_context
from recycled_datasets.errors import ConfigError
from recycled_datasets.records import Turn
from recycled_datasets.teacher.gates import Scaffold, Verdict, scaffold_of

DEFAULT_PROMPT_VERSION = "srecycle-v1"
INSTRUCTION_PROMPT_FILE = "instruction_reflection.txt"
RESPONSE_PROMPT_FILE = "response_reflection.txt"

NEW_INSTRUCTION = "New Instruction"
NEW_ANSWER = "New Answer"
BETTER_ANSWER = "Better Answer"
END = "End"
MARKERS: tuple[str, ...] = (NEW_INSTRUCTION, NEW_ANSWER, BETTER_ANSWER)
_PLACEHOLDERS = ("{instruction}", "{input}", "{response}", "{input_section}", "{input_note}", "{input_note_short}")


@dataclass(frozen=True)
class PromptSet:
    """The two reflection prompts and the version that keys their cached answers.

    Attributes:
        instruction: the instruction-reflection prompt (writes ``[New Instruction]`` and ``[New Answer]``).
        response: the response-reflection prompt (writes ``[Better Answer]``).
        version: the prompt version recorded in the store and in ``reflections.json``.
        placeholders: per marker, the words the prompt itself puts between the marker and ``[End]`` (a reply
            that repeats them did not do the work); read from the prompts by the parser itself.
    """

    instruction: str
    response: str
    version: str
    placeholders: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, text in (("instruction", self.instruction), ("response", self.response)):
            if "{instruction}" not in text or "{response}" not in text:
                raise ConfigError(
                    f"the {name}-reflection prompt must contain the placeholders {{instruction}} and {{response}} "
                    f"(and {{input_section}} or {{input}} to show the example's input)"
                )
        for marker, text in (
            (NEW_INSTRUCTION, self.instruction),
            (NEW_ANSWER, self.instruction),
            (BETTER_ANSWER, self.response),
        ):
            if f"[{marker}]" not in text:
                raise ConfigError(f"the prompt must ask for the marker [{marker}] (the markers are a format constant)")
        if not self.version.strip():
            raise ConfigError("the prompt version must not be empty")
        if not self.placeholders:
            found = {m: _layout_placeholders(self.instruction + "\n" + self.response, m) for m in MARKERS}
            object.__setattr__(self, "placeholders", found)

    def scaffold(self) -> Scaffold:
        """The labels, headings and phrases of both prompts, which the quality gates look for in a reply."""
        return scaffold_of((self.instruction, self.response), [p for ps in self.placeholders.values() for p in ps])

    def render_instruction(self, instruction: str, input: str, response: str, context: Sequence[Turn] = ()) -> str:
        """The instruction-reflection request for one example (after its earlier turns, for a chat row)."""
        return teacher_context(context) + _fill(self.instruction, instruction, input, response)

    def render_response(self, instruction: str, input: str, response: str, context: Sequence[Turn] = ()) -> str:
        """The response-reflection request for one example (after its earlier turns, for a chat row)."""
        return teacher_context(context) + _fill(self.response, instruction, input, response)


def _fill(template: str, instruction: str, input: str, response: str) -> str:
    # Substitute in one pass so that braces or placeholder names inside the data are never expanded.
    values = {
        "{instruction}": instruction,
        "{input}": input,
        "{response}": response,
        "{input_section}": f"\n[Input]\n{input}\n" if input else "",
        "{input_note}": ", its input" if input else "",
        "{input_note_short}": " and input" if input else "",
    }
    pattern = re.compile("|".join(re.escape(p) for p in sorted(_PLACEHOLDERS, key=len, reverse=True)))
    return pattern.sub(lambda m: values[m.group(0)], template)


def _layout_placeholders(prompt: str, marker: str) -> tuple[str, ...]:
    """Every text the prompt itself puts in ``marker``'s section (its layout example, "between [X] and [End]").

    A reply that echoes the prompt contains these; they are never the teacher's own text.
    """
    matches = list(_MARKER_RE.finditer(prompt))
    found = []
    for i, m in enumerate(matches):
        if _canonical(m.group("b") or m.group("n")) == marker:
            end = matches[i + 1].start() if i + 1 < len(matches) else len(prompt)
            text = _normalize(prompt[m.end() : end])
            if text and len(text) < 200:
                found.append(text)
    return tuple(dict.fromkeys(found))


def default_prompts() -> PromptSet:
    """The packaged prompts, in this project's own words."""
    folder = resources.files("recycled_datasets").joinpath("prompts")
    return PromptSet(
        instruction=folder.joinpath(INSTRUCTION_PROMPT_FILE).read_text(encoding="utf-8"),
        response=folder.joinpath(RESPONSE_PROMPT_FILE).read_text(encoding="utf-8"),
        version=DEFAULT_PROMPT_VERSION,
    )


def load_prompts(
    instruction_file: Path | None = None, response_file: Path | None = None, version: str | None = None
) -> PromptSet:
    """The default prompts with either replaced by a user's file.

    User prompts get the version ``custom-<hash of both texts>`` unless ``version`` names one, so that
    answers cached for one wording are never served for another.
    """
    default = default_prompts()
    if instruction_file is None and response_file is None:
        return default if version is None else PromptSet(default.instruction, default.response, version)
    texts = []
    for path, fallback in ((instruction_file, default.instruction), (response_file, default.response)):
        if path is None:
            texts.append(fallback)
            continue
        if not Path(path).is_file():
            raise ConfigError(f"prompt file {path} does not exist")
        try:
            texts.append(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"prompt file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    digest = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()[:12]
    return PromptSet(texts[0], texts[1], version or f"custom-{digest}")


# ---- Parsing the teacher's reply -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    """One parsed section: its text, or why there is no usable text (``text`` is None then).

    ``closed`` says whether the section ended at ``[End]`` or at the next marker rather than at the end of the
    reply (a reply cut off by the token limit leaves its last section open); ``gate`` names the quality gate
    that refused the section, if one did.
    """

    text: str | None
    reason: str | None = None
    closed: bool = True
    gate: str | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None


def _marker_regex() -> re.Pattern[str]:
    def alternatives(markers: tuple[str, ...]) -> str:
        return "|".join(re.escape(m).replace(r"\ ", r"[ \t_]*") for m in markers)

    # [Marker] anywhere, or a bare "Marker:" at the start of a line (optionally a markdown heading or bold).
    # "End" only counts in brackets: a bare "End:" is too common in ordinary text.
    bracketed = rf"\[[ \t]*(?P<b>{alternatives((*MARKERS, END))})[ \t]*\]:?"
    emphasis = r"(?:\*\*|__)?"
    bare = rf"(?:(?<=\n)|^)[ \t]*(?:#+[ \t]*)?{emphasis}(?P<n>{alternatives(MARKERS)}){emphasis}[ \t]*:{emphasis}"
    return re.compile(f"{bracketed}|{bare}", re.I)


_MARKER_RE = _marker_regex()
# The parser refuses exactly three things: an empty section, the prompt's own placeholder words, and N/A.
# Anything else is the teacher's text, however short or odd ("None.", "[1, 2, 3]", '{"a": 1}' are real
# answers), and goes on to the quality gates (gates.py).
_NA = "n/a"
# One pair of brackets around the whole section: a model that echoes "<the answer goes here>" still echoes it.
_WRAPPED_RE = re.compile(r"^(?:<(.*)>|\[(.*)\]|\{(.*)\}|\((.*)\))$", re.S)


def _canonical(name: str) -> str:
    squashed = re.sub(r"[\s_]+", "", name).lower()
    for marker in (*MARKERS, END):
        if marker.replace(" ", "").lower() == squashed:
            return marker
    raise AssertionError(f"unknown marker {name!r}")  # the regex only matches known names


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip(" \t\n.:;\"'`*").lower()


def _unwrapped(norm: str) -> str:
    match = _WRAPPED_RE.match(norm)
    return _normalize(next(g for g in match.groups() if g is not None)) if match else norm


def _clean(text: str) -> str:
    text = text.strip()
    # Markdown emphasis or quotes wrapped around the whole section are layout, not content.
    for wrapper in ("**", "__", '"', "`"):
        if len(text) > 2 * len(wrapper) and text.startswith(wrapper) and text.endswith(wrapper):
            inner = text[len(wrapper) : -len(wrapper)]
            if wrapper not in inner:
                text = inner.strip()
    return text.strip()


def parse_sections(
    reply: str,
    marker: str,
    placeholders: tuple[str, ...] = (),
    judge: Callable[[str, bool], Verdict] | None = None,
) -> Section:
    """The text of ``marker``'s section in a teacher reply (parsing rules: docs/method.md).

    A section starts at ``[Marker]`` or a bare ``Marker:`` line and ends at ``[End]``, at the next marker, or
    at the end of the text. When the marker occurs several times (a model that echoes the layout, or rewrites
    its draft) the first usable section wins. The parser itself refuses three things, and the reason says
    which: an empty section, ``N/A``, and a section that is the prompt's own placeholder words
    (``placeholders``, as the prompt puts them between the marker and ``[End]``, possibly wrapped in one pair
    of brackets). ``judge`` (the quality gates, see ``teacher/gates.py``) gets each remaining candidate's text
    and whether it was closed, and may refuse it too; its reason then starts with the gate's name in brackets.
    """
    matches = list(_MARKER_RE.finditer(reply))
    wanted = [i for i, m in enumerate(matches) if _canonical(m.group("b") or m.group("n")) == marker]
    if not wanted:
        return Section(None, f"no [{marker}] section in the reply")
    reasons: list[str] = []
    gates: list[str | None] = []
    normalized_placeholders = {_normalize(p) for p in placeholders}
    for i in wanted:
        start = matches[i].end()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(reply)
        text = _clean(reply[start:end])
        norm = _normalize(text)
        closed = i + 1 < len(matches)
        if not norm:  # nothing, or only layout (quotes, emphasis, dots) around nothing
            reasons.append(f"the [{marker}] section is empty")
        elif norm == _NA:
            reasons.append(f"the [{marker}] section says N/A")
        elif norm in normalized_placeholders or _unwrapped(norm) in normalized_placeholders:
            reasons.append(f"the [{marker}] section still holds the prompt's placeholder ({text[:60]!r})")
        else:
            verdict = judge(text, closed) if judge is not None else None
            if verdict is None or verdict.ok:
                return Section(text, closed=closed)
            gates.append(verdict.gate)
            reasons.append(verdict.describe())
    reason = reasons[0] if len(set(reasons)) == 1 else "; ".join(dict.fromkeys(reasons))
    # Named by a gate only when every candidate was refused by one (else the parser's reason comes first).
    return Section(None, reason, gate=gates[0] if len(gates) == len(reasons) else None)
