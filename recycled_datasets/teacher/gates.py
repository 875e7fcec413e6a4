"""Quality gates on every parsed teacher section: text that parses is not yet a reflection.

A small teacher (and now and then a large one) answers with the prompt's own scaffolding, restates the
original, loops on one sentence, or stops at its token limit in the middle of a section. Each of these is a
named gate; a section that fails one is treated like an unparsable reply (one retry, then the original field),
and the gate's name is written into the variant's ``detail`` so that runs, ``report.json`` and the dataset
card can count the reasons. See docs/method.md, section 2.

The gates read only the reply text, its finish reason and the example it reflects, so they run on stored
answers as well: changing a threshold re-judges a workdir without asking the teacher again.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from recycled_datasets.errors import ConfigError

SCAFFOLD_LEAK = "scaffold_leak"
ECHO = "echo"
DEGENERATE = "degenerate"
CUT_OFF = "cut_off"
EMPTY = "empty"
GATES: tuple[str, ...] = (SCAFFOLD_LEAK, ECHO, DEGENERATE, CUT_OFF, EMPTY)
# Not a gate: the reply had no usable section at all (the parser's own failures), counted beside the gates.
UNPARSED = "unparsed"
# A request that a re-judging run would have had to send (it never calls the teacher).
NOT_ASKED = "not_asked"
REASONS: tuple[str, ...] = (*GATES, UNPARSED, NOT_ASKED)
_TAG_RE = re.compile(r"\[(" + "|".join(REASONS) + r")\]")


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the quality gates; every gate can be turned off by name.

    Attributes:
        disabled: names of gates not to run (``scaffold_leak``, ``echo``, ``degenerate``, ``cut_off``,
            ``empty``).
        max_repeats: a sentence or line that occurs this many times in one section makes it degenerate
            (a repetition loop).
        min_repeat_chars: sentences or lines shorter than this (after normalizing) are not counted as
            repeats, so that list bullets or short refrains in a poem do not trip the loop gate.
        max_compression: a section whose zlib compression ratio (raw bytes / compressed bytes) is above this
            is degenerate: ordinary prose compresses about 2-3x, a loop far more.
        min_compression_chars: the compression ratio is judged only on sections at least this long (short
            texts do not compress at all).
        echo_min_words: a new instruction that contains the original whole is an echo only when the
            original has at least this many words (a short original such as "Write a haiku." may be the
            legitimate start of a harder instruction); equal texts are always an echo.
        echo_share: an answer that contains its instruction whole is an echo when the instruction makes up at
            least this share of the answer's characters.
    """

    disabled: tuple[str, ...] = ()
    max_repeats: int = 3
    min_repeat_chars: int = 16
    max_compression: float = 4.0
    min_compression_chars: int = 200
    echo_min_words: int = 8
    echo_share: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "disabled", tuple(sorted(set(self.disabled))))
        unknown = [g for g in self.disabled if g not in GATES]
        if unknown:
            raise ConfigError(f"unknown gate {unknown[0]!r}: the gates are {', '.join(GATES)}")
        if self.max_repeats < 2:
            raise ConfigError(f"max_repeats must be at least 2, not {self.max_repeats}")
        if self.min_repeat_chars < 0 or self.min_compression_chars < 0 or self.echo_min_words < 1:
            raise ConfigError("min_repeat_chars and min_compression_chars must be >= 0, echo_min_words >= 1")
        numbers = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "disabled"}
        for name, value in numbers.items():
            if not math.isfinite(value):  # nan compares false with everything: it would turn its gate off
                raise ConfigError(f"{name} must be a finite number, not {value}")
        if self.max_compression <= 1.0:
            raise ConfigError(f"max_compression must be above 1, not {self.max_compression}")
        if not 0.0 < self.echo_share <= 1.0:
            raise ConfigError(f"echo_share must be in (0, 1], not {self.echo_share}")

    def enabled(self, gate: str) -> bool:
        return gate not in self.disabled

    def as_dict(self) -> dict[str, Any]:
        """The settings as reflections.json records them (a changed value re-judges the workdir)."""
        d = asdict(self)
        d["disabled"] = list(self.disabled)
        return d

    @classmethod
    def from_options(cls, settings: Iterable[str] = (), disabled: Iterable[str] = ()) -> GateConfig:
        """The config of ``--gate NAME=VALUE`` settings and ``--gate-off NAME`` options."""
        values: dict[str, Any] = {"disabled": tuple(disabled)}
        numeric = {f: t for f, t in cls.__annotations__.items() if f != "disabled"}
        for item in settings:
            name, sep, raw = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in numeric:
                raise ConfigError(f"--gate {item!r}: expected NAME=VALUE with NAME one of {', '.join(numeric)}")
            kind = float if numeric[name] == "float" else int
            try:
                values[name] = kind(raw)
            except ValueError as e:
                raise ConfigError(f"--gate {item!r}: {raw!r} is not a valid {kind.__name__}") from e
        return cls(**values)


@dataclass(frozen=True)
class Scaffold:
    """What a prompt shows around the example: texts that never belong in the teacher's own sections.

    Attributes:
        labels: bracketed labels of the prompt (``[Instruction]``, ``[Input]``, ``[Answer]``, the markers).
        headings: the step headings of the prompt (``Step 1, critique``).
        phrases: the prompt's placeholder words and its longer sentences, normalized.
    """

    labels: tuple[str, ...] = ()
    headings: tuple[str, ...] = ()
    phrases: tuple[str, ...] = field(default_factory=tuple)


_LABEL_RE = re.compile(r"\[([A-Za-z][A-Za-z ]{0,30})\]")
# "Step 1, critique." in the prompt: the step number with its title (a bare "Step 1:" is common in real answers).
_HEADING_RE = re.compile(r"^[ \t]*(step[ \t]+\d+[ \t]*,[^.\n:]{1,40})[.:]", re.I | re.M)
_FIELD_RE = re.compile(r"\{[a-z_]+\}")
# The labelled input block the prompts add for rows with an input (see prompts._fill).
_ALWAYS_LABELS = ("Input",)


def scaffold_of(prompt_texts: Iterable[str], placeholders: Iterable[str] = ()) -> Scaffold:
    """The scaffold of the given prompt templates (before the example is filled in)."""
    labels: dict[str, None] = dict.fromkeys(_ALWAYS_LABELS)
    headings: dict[str, None] = {}
    phrases: dict[str, None] = {}
    for text in prompt_texts:
        labels.update(dict.fromkeys(m.group(1).strip() for m in _LABEL_RE.finditer(text)))
        headings.update(dict.fromkeys(normalize(m.group(1)) for m in _HEADING_RE.finditer(text)))
        for sentence in _sentences(_FIELD_RE.sub(" ", _LABEL_RE.sub(" ", text))):
            if len(sentence.split()) >= 6:
                phrases[sentence] = None
    for p in placeholders:
        norm = normalize(p)
        if len(norm.split()) >= 3:  # "the answer goes here", not a stray "and" between two markers
            phrases[norm] = None
    return Scaffold(tuple(labels), tuple(headings), tuple(phrases))


@dataclass(frozen=True, slots=True)
class Verdict:
    """A gate's judgement of one section: ``gate`` is None when it passed, else the gate and why."""

    gate: str | None = None
    why: str | None = None

    @property
    def ok(self) -> bool:
        return self.gate is None

    def describe(self) -> str:
        """``[gate] why``: the form written into a variant's detail, counted by :func:`reason_counts`."""
        return f"[{self.gate}] {self.why}"


PASS = Verdict()


def normalize(text: str) -> str:
    """Lower case, one space between words, no punctuation at either end: how the gates compare texts."""
    text = unicodedata.normalize("NFKC", text)
    return re.sub(r"\s+", " ", text).strip(" \t\n.,:;!?\"'`*_-#").lower()


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [n for n in (normalize(p) for p in parts) if n]


def judge_section(
    text: str,
    *,
    marker: str,
    finish_reason: str | None = None,
    closed: bool = True,
    scaffold: Scaffold = Scaffold(),
    config: GateConfig = GateConfig(),
    instruction: str | None = None,
    original: str | None = None,
) -> Verdict:
    """Judge one parsed section of a teacher reply; the first gate that fails decides.

    Args:
        text: the section as the parser returned it.
        marker: the section's marker (for messages).
        finish_reason: why the teacher stopped (``length`` = at its token limit).
        closed: whether the section was closed by ``[End]`` or by the next marker, not by the end of the text.
        scaffold: the prompt's labels, headings and phrases (:func:`scaffold_of`).
        instruction: for an answer, the instruction it answers (an answer that restates it is an echo).
        original: the text the section replaces (the original instruction for a new instruction, the
            original answer for a better answer): equal to it, or containing it whole, is an echo.
    """
    for gate, check in (
        (EMPTY, _empty),
        (CUT_OFF, _cut_off),
        (SCAFFOLD_LEAK, _scaffold_leak),
        (ECHO, _echo),
        (DEGENERATE, _degenerate),
    ):
        if not config.enabled(gate):
            continue
        why = check(
            text,
            marker=marker,
            finish_reason=finish_reason,
            closed=closed,
            scaffold=scaffold,
            config=config,
            instruction=instruction,
            original=original,
        )
        if why is not None:
            return Verdict(gate, why)
    return PASS


def _empty(text: str, *, marker: str, **_: Any) -> str | None:
    if not any(ch.isalnum() for ch in text):
        return f"the [{marker}] section has no letters or digits ({text.strip()[:40]!r})"
    return None


def _cut_off(text: str, *, marker: str, finish_reason: str | None, closed: bool, **_: Any) -> str | None:
    if finish_reason == "length" and not closed:
        return f"the teacher hit its token limit inside the [{marker}] section (no [End])"
    return None


def _scaffold_leak(text: str, *, marker: str, scaffold: Scaffold, **_: Any) -> str | None:
    for label in scaffold.labels:
        pattern = r"\[[ \t]*" + re.escape(label).replace(r"\ ", r"[ \t_]*") + r"[ \t]*\]"
        if re.search(pattern, text, re.I):
            return f"the [{marker}] section holds the prompt's label [{label}]"
    lowered = normalize(text)
    for heading in scaffold.headings:
        if re.search(re.escape(heading).replace(r"\ ", r"\s+"), lowered):
            return f"the [{marker}] section holds the prompt's heading {heading!r}"
    for phrase in scaffold.phrases:
        if phrase in lowered:
            return f"the [{marker}] section copies the prompt's words ({phrase[:50]!r})"
    return None


def _echo(
    text: str, *, marker: str, config: GateConfig, instruction: str | None, original: str | None, **_: Any
) -> str | None:
    norm = normalize(text)
    if original is not None:
        orig = normalize(original)
        if orig and norm == orig:
            return f"the [{marker}] section repeats the original unchanged"
        if orig and len(orig.split()) >= config.echo_min_words and orig in norm and instruction is None:
            return f"the [{marker}] section contains the original instruction whole"
    if instruction is not None:
        ins = normalize(instruction)
        if ins and norm == ins:
            return f"the [{marker}] section is its instruction, not an answer to it"
        if ins and ins in norm and len(ins) >= config.echo_share * len(norm):
            return f"the [{marker}] section mostly restates its instruction"
    return None


def _degenerate(text: str, *, marker: str, config: GateConfig, **_: Any) -> str | None:
    counts = Counter(s for s in _sentences(text) if len(s) >= config.min_repeat_chars)
    if counts:
        sentence, n = counts.most_common(1)[0]
        if n >= config.max_repeats:
            return f"the [{marker}] section repeats one sentence {n} times ({sentence[:50]!r})"
    raw = text.encode("utf-8")
    if len(raw) >= config.min_compression_chars:
        ratio = len(raw) / len(zlib.compress(raw, 9))
        if ratio > config.max_compression:
            return f"the [{marker}] section compresses {ratio:.1f}x (a loop; limit {config.max_compression})"
    return None


def reason_counts(details: Iterable[str | None]) -> dict[str, int]:
    """Per reason, how many of ``details`` name it (each detail counts a reason once)."""
    counts: Counter[str] = Counter()
    for detail in details:
        if detail:
            counts.update(set(_TAG_RE.findall(detail)))
    return {r: counts[r] for r in REASONS if counts[r]}


__all__ = [
    "GATES",
    "REASONS",
    "GateConfig",
    "Scaffold",
    "Verdict",
    "judge_section",
    "reason_counts",
    "scaffold_of",
]
