"""What every teacher is: the HTTP servers (``client``), the in-process model (``local``) and the store alone.

A run calls :meth:`Teacher.begin` once: the handshake that tells the model's name and limits, which the
request keys depend on. Then :meth:`Teacher.prepare` turns each user turn into a request (its key in the
answer store is a hash of it) and :meth:`Teacher.complete` answers it; :meth:`Teacher.close` ends the run.
:class:`StoreOnlyTeacher` stands for another teacher with everything but the answering: it prepares the
same requests, so the same keys, and answers none of them. A dry run and a re-judging run use it, so they go
through the very code of a real run.
"""

from __future__ import annotations

import abc
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recycled_datasets.teacher.store import AnswerStore


@dataclass(frozen=True, slots=True)
class Reply:
    """One teacher answer with its token usage (``None`` where the server did not say)."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass
class CallStats:
    """What the teacher calls cost: requests sent (retries included), retries by reason, refusals, tokens."""

    sent: int = 0
    retries: int = 0
    retry_reasons: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Token limits a server announced (``None`` where it announced nothing)."""

    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    max_concurrent_requests: int | None = None


def chat_messages(prompt: str, system: str = "") -> list[dict[str, str]]:
    """The chat turns of one request: the system message (only when there is one), then the user turn."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def apply_chat_template(tokenizer: Any, prompt: str, system: str = "", *, tokenize: bool) -> Any:
    """The teacher's chat template over one request, with the generation prompt; a template that refuses a
    system turn is a :class:`~recycled_datasets.errors.ConfigError` (the text is never moved silently)."""
    from recycled_datasets.errors import ConfigError

    try:
        return tokenizer.apply_chat_template(
            chat_messages(prompt, system), tokenize=tokenize, add_generation_prompt=True
        )
    except Exception as e:  # jinja2's TemplateError, raised by the template itself ("System role not supported")
        if not system or type(e).__name__ != "TemplateError":
            raise
        raise ConfigError(
            f"the teacher's chat template refuses a system message ({e}); move the prompt file's system text "
            "into its user template"
        ) from e


class NotStored(Exception):
    """A store-only teacher was asked for a request the store does not hold (the run records it, never raises it)."""


class Teacher(abc.ABC):
    """A model that answers one user turn at a time. See the module doc for the order of the calls.

    Attributes:
        teacher_id: the model's name, recorded with the reflections (known after :meth:`begin`).
        teacher_revision: the model's revision where the teacher reports one, else empty.
        window: requests the teacher takes at once; a run keeps about twice as many rows under way.
    """

    teacher_id: str = ""
    teacher_revision: str = ""
    window: int = 1

    @property
    @abc.abstractmethod
    def cache_id(self) -> str:
        """What keys this teacher's answers in the store: the model, whichever server or protocol serves it."""

    @abc.abstractmethod
    async def begin(self, store: AnswerStore | None = None, *, generate: bool = True) -> None:
        """The run's one handshake. ``store`` may remember an earlier one, so that a run whose answers are all
        stored needs no server; without ``generate`` nothing is loaded that only answering needs."""

    @abc.abstractmethod
    def prepare(
        self, prompt: str, *, max_new_tokens: int, temperature: float, seed: int, system: str = ""
    ) -> dict[str, Any]:
        """The request for one user turn (after the system message ``system``, if any), its output budget fitted
        to the teacher's context.

        Raises :class:`~recycled_datasets.errors.Rejected` when the prompt alone does not fit.
        """

    @abc.abstractmethod
    async def complete(self, payload: dict[str, Any], stats: CallStats) -> Reply:
        """The answer to one prepared request, counted in ``stats``."""

    async def close(self) -> None:
        """Free what :meth:`begin` took; safe to call more than once, and after a failed :meth:`begin`."""
        return None


class StoreOnlyTeacher(Teacher):
    """``teacher`` without its answers: the same handshake and requests, and :class:`NotStored` for each one.

    Its handshake never loads the weights of a local model; servers are contacted only when the store does
    not remember their handshake.
    """

    def __init__(self, teacher: Teacher):
        self.teacher = teacher

    @property
    def teacher_id(self) -> str:  # type: ignore[override]
        return self.teacher.teacher_id

    @property
    def teacher_revision(self) -> str:  # type: ignore[override]
        return self.teacher.teacher_revision

    @property
    def window(self) -> int:  # type: ignore[override]
        return self.teacher.window

    @property
    def cache_id(self) -> str:
        return self.teacher.cache_id

    async def begin(self, store: AnswerStore | None = None, *, generate: bool = True) -> None:
        await self.teacher.begin(store, generate=False)

    def prepare(
        self, prompt: str, *, max_new_tokens: int, temperature: float, seed: int, system: str = ""
    ) -> dict[str, Any]:
        return self.teacher.prepare(
            prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, system=system
        )

    async def complete(self, payload: dict[str, Any], stats: CallStats) -> Reply:
        raise NotStored()

    async def close(self) -> None:
        await self.teacher.close()
