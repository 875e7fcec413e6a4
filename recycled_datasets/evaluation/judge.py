"""The pairwise judge: both orders of every pair, a verdict parser, the outcome rule and the win score.

The protocol is the paper's (docs/method.md, evaluation): the judge reads a question and two answers in
labelled blocks and gives each an overall score from 1 to 10, the two scores alone on the first line. Every
pair is judged twice, the second time with the answers swapped, because judges favour one position.

The judge is a teacher in everything but its prompt: the same client (servers, retries, the local model), and
the same answer store, so a killed judge run re-sends nothing that was answered and stored. A verdict whose
first line cannot be read is asked once more (sampled, with the next seed: a greedy retry would repeat the
same words); if that fails too the pair is ``invalid``, counted and reported, never a tie.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recycled_datasets.errors import ConfigError, InputError, Rejected
from recycled_datasets.evaluation.testsets import Answer

logger = logging.getLogger(__name__)

JUDGE_PROMPT_VERSION = "srecycle-judge-v1"
WIN, TIE, LOSS, INVALID = "win", "tie", "loss", "invalid"
OUTCOMES = (WIN, TIE, LOSS, INVALID)
DEFAULT_MAX_NEW_TOKENS_HTTP = 512
DEFAULT_MAX_NEW_TOKENS_LOCAL = 64

JUDGE_PROMPT = """You are a fair and careful judge of AI assistants. Read the user's question and the two \
answers below, then rate each answer on how helpful, relevant, accurate and detailed it is, with one overall \
score from 1 to 10 (higher is better).

[Question]
{question}

[The Start of Assistant 1's Answer]
{answer_1}
[The End of Assistant 1's Answer]

[The Start of Assistant 2's Answer]
{answer_2}
[The End of Assistant 2's Answer]

Write the two scores, for Assistant 1 and then Assistant 2, alone on the first line, separated by a space \
(for example: 7 4). From the second line on, explain your scores. Judge the content only: the order in which \
the answers are shown must not sway you, and neither may their length."""


def judge_prompt(question: str, answer_1: str, answer_2: str) -> str:
    return JUDGE_PROMPT.format(question=question, answer_1=answer_1, answer_2=answer_2)


_NUMBER = r"(\d+(?:\.\d+)?)"
_SCORE = rf"{_NUMBER}(?:\s*/\s*10)?"
_PLAIN = re.compile(rf"^\W*(?:scores?\s*[:=]?\s*)?{_SCORE}\s*(?:[,;]|\s|and|vs\.?)\s*{_SCORE}\W*$", re.I)
_LABELLED = re.compile(rf"assistant\s*1\s*[:=\-]?\s*{_SCORE}\W+(?:and\s+)?assistant\s*2\s*[:=\-]?\s*{_SCORE}", re.I)


def parse_verdict(text: str) -> tuple[float, float] | None:
    """(score of assistant 1, score of assistant 2) from the first non-empty line, or None when unreadable.

    Reads ``8 7``, ``8, 7``, ``8/10 7/10``, ``Assistant 1: 8  Assistant 2: 7`` and decimals; a score outside
    1..10 makes the verdict unreadable (it is not a rating on the asked scale).
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    first = lines[0].replace("**", "").strip()
    match = _PLAIN.match(first) or _LABELLED.search(first)
    if match is None:
        return None
    scores = float(match.group(1)), float(match.group(2))
    if not all(1.0 <= s <= 10.0 for s in scores):
        return None
    return scores


def preference(scores: tuple[float, float]) -> int:
    """1 when the first of the two scores is higher, -1 when it is lower, 0 when they are equal."""
    a, b = scores
    return (a > b) - (a < b)


def outcome(first: tuple[float, float], second: tuple[float, float]) -> str:
    """A's outcome from its two judgements, each given as (score of A, score of B) whatever the order shown.

    A wins when it scores higher in both orders, or higher in one and equal in the other; B wins in the
    mirror cases; anything else (equal twice, or one order each way) is a tie.
    """
    signs = [preference(first), preference(second)]
    if max(signs) == 1 and min(signs) >= 0:
        return WIN
    if min(signs) == -1 and max(signs) <= 0:
        return LOSS
    return TIE


def win_score(win: int, tie: int, loss: int) -> float | None:
    """(W - L) / (W + T + L) + 1: 1 is level, 2 means A won every pair, 0 that it lost every one."""
    n = win + tie + loss
    return (win - loss) / n + 1 if n else None


def adjusted_win_rate(win: int, tie: int, loss: int) -> float | None:
    """(W + T / 2) / (W + T + L): a tie is half a win."""
    n = win + tie + loss
    return (win + tie / 2) / n if n else None


@dataclass
class JudgeConfig:
    """Settings of a judge run. The CLI fills the same fields.

    Attributes:
        judge: the judge server URL(s) (``http://host:port/v1`` OpenAI-compatible, ``http://host:8080`` TGI),
            comma-separated, or ``local[:MODEL]`` for an in-process model.
        output_dir: where ``results.json``, ``pairs.parquet`` and ``win_tie_loss.png`` go.
        store_dir: the judge's answer store (default ``OUTPUT_DIR/judge``).
        concurrency: requests in flight per server (default: the server's ``/info``, else 16); local: batch size.
        test_sets: judge only these test sets (default: every set both files answer).
        max_new_tokens: output budget of a verdict (default 512 for servers, 64 for a local judge).
        seed: the seed sent with every request; the one retry of an unreadable verdict uses seed + 1.
        retry_temperature: the sampling temperature of that retry (the first ask is greedy).
        teacher_name: the model name to key stored verdicts by, when the server reports none.
        timeout / max_retries / backoff_base / backoff_max: the client's retry policy (as for the teacher).
        progress: show a progress bar.
    """

    judge: str
    output_dir: Path
    store_dir: Path | None = None
    concurrency: int | None = None
    test_sets: Sequence[str] | None = None
    max_new_tokens: int | None = None
    seed: int = 0
    retry_temperature: float = 0.7
    teacher_name: str | None = None
    timeout: float = 600.0
    max_retries: int = 8
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    progress: bool = True

    def __post_init__(self) -> None:
        from recycled_datasets.teacher.config import is_local

        self.output_dir = Path(self.output_dir)
        self.store_dir = Path(self.store_dir) if self.store_dir is not None else self.output_dir / "judge"
        if self.max_new_tokens is None:
            self.max_new_tokens = DEFAULT_MAX_NEW_TOKENS_LOCAL if is_local(self.judge) else DEFAULT_MAX_NEW_TOKENS_HTTP
        self.reflect_config()  # validates the judge URL, counts and delays the same way the teacher's are

    def reflect_config(self) -> Any:
        """The same settings as a teacher configuration: the judge runs through the teacher's code."""
        from recycled_datasets.teacher.config import ReflectConfig, TeacherClient

        client = TeacherClient(
            concurrency=self.concurrency,
            teacher_name=self.teacher_name,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )
        return ReflectConfig(
            teacher=self.judge,
            store_dir=self.store_dir,
            client=client,
            max_new_tokens=self.max_new_tokens,
            temperature=0.0,
            seed=self.seed,
            retry_temperature=self.retry_temperature,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            progress=self.progress,
        )


@dataclass(frozen=True, slots=True)
class Review:
    """One judgement of a pair in one order: the reply, its scores (assistant 1, assistant 2), why it failed."""

    text: str | None
    scores: tuple[float, float] | None
    attempts: int
    error: str | None = None


@dataclass
class Matchup:
    """Two answers to one question; ``first`` shows A as assistant 1, ``second`` shows B first."""

    test_set: str
    instruction: str
    a: Answer
    b: Answer
    first: Review | None = None
    second: Review | None = None

    @property
    def outcome(self) -> str:
        if self.first is None or self.second is None or self.first.scores is None or self.second.scores is None:
            return INVALID
        a1, b1 = self.first.scores
        b2, a2 = self.second.scores
        return outcome((a1, b1), (a2, b2))


@dataclass
class Pairing:
    """Answers of A and B matched on (test set, instruction), and those without a partner."""

    pairs: list[Matchup]
    only_a: list[Answer] = field(default_factory=list)
    only_b: list[Answer] = field(default_factory=list)


def pair_answers(
    a: Sequence[Answer], b: Sequence[Answer], *, a_name: str, b_name: str, test_sets: Sequence[str] | None = None
) -> Pairing:
    """Match the k-th answer to a question in A with the k-th in B (a question asked twice pairs twice)."""
    if test_sets:
        known = {x.test_set for x in (*a, *b)}
        missing = [name for name in test_sets if name not in known]
        if missing:
            raise ConfigError(
                f"--test-sets: neither answer file has {', '.join(missing)} (they have {', '.join(sorted(known))})"
            )
        a = [x for x in a if x.test_set in test_sets]
        b = [x for x in b if x.test_set in test_sets]
    waiting: dict[tuple[str, str], list[Answer]] = {}
    for answer in b:
        waiting.setdefault((answer.test_set, answer.instruction), []).append(answer)
    pairs, only_a = [], []
    for answer in a:
        partners = waiting.get((answer.test_set, answer.instruction))
        if partners:
            pairs.append(Matchup(answer.test_set, answer.instruction, answer, partners.pop(0)))
        else:
            only_a.append(answer)
    only_b = [x for rest in waiting.values() for x in rest]
    if not pairs:
        raise InputError(
            f"{a_name} and {b_name} share no question (paired on test_set and instruction): "
            "were they generated from the same test sets?"
        )
    if only_a or only_b:
        logger.warning(
            "%d answers of %s and %d of %s have no partner; they are listed in results.json, not judged",
            len(only_a),
            a_name,
            len(only_b),
            b_name,
        )
    return Pairing(pairs, only_a, only_b)


@dataclass
class JudgeStats:
    """What a judge run cost: requests sent (retries included), answers from the store, verdicts asked again."""

    sent: int = 0
    cached: int = 0
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    unreadable_retries: int = 0
    rejected: int = 0
    seconds: float = 0.0


@dataclass
class JudgeRun:
    """The judged pairs and the judge that judged them."""

    pairs: list[Matchup]
    judge: str
    stats: JudgeStats


async def _review(run: Any, pair: Matchup, swapped: bool, stats: JudgeStats) -> Review:
    answers = (pair.b.output, pair.a.output) if swapped else (pair.a.output, pair.b.output)
    prompt = judge_prompt(pair.instruction, *answers)
    text: str | None = None
    for attempt in range(2):
        try:
            text, _ = await run.ask(prompt, attempt)
        except Rejected as e:
            stats.rejected += 1
            return Review(None, None, attempt + 1, f"the judge refused the request: {e.reason}")
        scores = parse_verdict(text)
        if scores is not None:
            return Review(text, scores, attempt + 1)
        if attempt == 0:
            stats.unreadable_retries += 1
            run.meter.one_more()
    return Review(text, None, 2, "no two scores on the first line, twice")


async def _judge_all(pairs: list[Matchup], config: JudgeConfig, meter: Any) -> tuple[str, Any]:
    from recycled_datasets.teacher.config import make_teacher
    from recycled_datasets.teacher.prompts import load_prompts
    from recycled_datasets.teacher.run import TeacherRun
    from recycled_datasets.teacher.store import AnswerStore

    teacher_config = config.reflect_config()
    teacher = make_teacher(teacher_config)
    # The store keys each answer by the prompt version it was asked with: the judge's requests get their own.
    prompts = load_prompts(version=JUDGE_PROMPT_VERSION)
    stats = JudgeStats()
    with AnswerStore.open(teacher_config.store_dir) as store:
        run = TeacherRun(teacher, store, prompts, meter, sampling=teacher_config.sampling)

        async def review(pair: Matchup, swapped: bool) -> None:
            setattr(pair, "second" if swapped else "first", await _review(run, pair, swapped, stats))

        async with run.begun():
            await run.each(functools.partial(review, pair, swapped) for pair in pairs for swapped in (False, True))
    run.count_into(stats)
    return teacher.teacher_id, stats


def judge_pairs(pairs: list[Matchup], config: JudgeConfig) -> JudgeRun:
    """Judge every pair in both orders (filling ``pair.first`` and ``pair.second``); see the module doc."""
    from recycled_datasets.progress import progress
    from recycled_datasets.teacher.run import ProgressMeter

    meter = ProgressMeter()
    started = time.monotonic()
    with progress() if config.progress else contextlib.nullcontext() as bar:
        if bar is not None:
            meter.bar, meter.task = bar, bar.add_task("judge calls", total=2 * len(pairs))
        judge_id, stats = asyncio.run(_judge_all(pairs, config, meter))
    stats.seconds = round(time.monotonic() - started, 3)
    logger.info(
        "judged %d pairs in both orders: %d requests sent (%d retries), %d from the store",
        len(pairs),
        stats.sent,
        stats.retries,
        stats.cached,
    )
    return JudgeRun(pairs, judge_id, stats)
