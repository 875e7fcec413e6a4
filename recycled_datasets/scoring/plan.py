"""Turn pairs into the token sequences a student scores (docs/method.md, section 3), deduplicated.

Each pair needs four losses: the response given its prompt and alone, the instruction given the
guess-the-instruction prompt and alone. Each is a *job*: a token sequence ``[start] + prefix + target``
(truncated on the right at ``max_length``) whose loss is the mean NLL of the ``n`` target tokens. Jobs are
keyed by content, so a sequence shared by several pairs (a row's variants share instructions and responses)
is scored once, and a resumed run recognises the jobs it already finished.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from recycled_datasets.records import Pair
from recycled_datasets.templates import instruction_target, render_prompt, reverse_request

logger = logging.getLogger(__name__)

# The four losses of a pair, in the order PairPlan.jobs holds them.
LOSS_NAMES = ("loss_response_cond", "loss_response_direct", "loss_instruction_cond", "loss_instruction_direct")


@dataclass(frozen=True, slots=True)
class Job:
    """One scored sequence: ``ids[start : start + n]`` are the target tokens, each predicted from its prefix."""

    key: str
    ids: tuple[int, ...]
    start: int
    n: int


@dataclass(frozen=True, slots=True)
class PairPlan:
    """The jobs of one pair (``None`` where a loss cannot be computed) and why a score would be missing."""

    jobs: tuple[str | None, str | None, str | None, str | None]
    n_response: int
    n_instruction: int
    n_prompt: int
    n_reverse_prompt: int
    ifd_reason: str | None
    rifd_reason: str | None


def _job_key(ids: Sequence[int], start: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(start.to_bytes(4, "little"))
    h.update(b"".join(i.to_bytes(4, "little") for i in ids))
    return h.hexdigest()


def start_token(tokenizer: Any) -> int | None:
    """BOS if the tokenizer has one, else EOS as a start-of-text token, else ``None`` (docs/method.md, section 3)."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return None


class Planner:
    """Builds jobs for pairs with one tokenizer, template and length limit, collecting unique jobs."""

    def __init__(self, tokenizer: Any, template: str, max_length: int):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.start = start_token(tokenizer)
        if self.start is None:
            logger.warning(
                "the tokenizer has neither BOS nor EOS: the first target token of each direct pass is not scored"
            )
        self.jobs: dict[str, Job] = {}

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _prefix(self, ids: list[int]) -> list[int]:
        # A chat template that writes BOS itself must not get a second one from us.
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return ids[1:] if bos is not None and ids[:1] == [bos] else ids

    def _add(self, ids: list[int], start: int, n: int) -> str:
        key = _job_key(ids, start)
        if key not in self.jobs:
            self.jobs[key] = Job(key=key, ids=tuple(ids), start=start, n=n)
        return key

    def _pair_of_jobs(self, prompt: list[int], target: list[int]) -> tuple[str | None, str | None, int, str | None]:
        """(conditional job, direct job, scored target tokens, reason when missing) for one target."""
        head = [self.start] if self.start is not None else []
        prefix = head + self._prefix(prompt)
        if not target:
            return None, None, 0, "empty target"
        room = self.max_length - len(prefix)
        n = max(0, min(len(target), room))
        if n == 0:
            return (
                None,
                None,
                0,
                (
                    f"the prompt fills max_length ({len(prefix)} >= {self.max_length} tokens): "
                    "no target token left to score"
                ),
            )
        cond = self._add(prefix + target[:n], len(prefix), n)
        direct_ids = head + target[:n]
        direct_start = len(head) if head else 1
        if len(direct_ids) - direct_start <= 0:
            return cond, None, n, "a one-token target without BOS/EOS cannot be scored directly"
        direct = self._add(direct_ids, direct_start, len(direct_ids) - direct_start)
        return cond, direct, n, None

    def plan(self, pairs: Sequence[Pair]) -> list[PairPlan]:
        tok = self.tokenizer
        # Both conditional passes see the row's earlier turns (a chat row's context) before the last exchange.
        prompts = self._encode(
            [render_prompt(self.template, p.instruction, p.input, tokenizer=tok, context=p.context) for p in pairs]
        )
        responses = self._encode([p.output for p in pairs])
        reverse = self._encode(
            [render_prompt(self.template, reverse_request(p.output), tokenizer=tok, context=p.context) for p in pairs]
        )
        instructions = self._encode([instruction_target(p.instruction, p.input) for p in pairs])
        plans = []
        for prompt, response, rev, instruction in zip(prompts, responses, reverse, instructions, strict=True):
            rc, rd, n_r, ifd_reason = self._pair_of_jobs(prompt, response)
            ic, id_, n_i, rifd_reason = self._pair_of_jobs(rev, instruction)
            plans.append(
                PairPlan(
                    jobs=(rc, rd, ic, id_),
                    n_response=n_r,
                    n_instruction=n_i,
                    n_prompt=len(prompt),
                    n_reverse_prompt=len(rev),
                    ifd_reason=ifd_reason,
                    rifd_reason=rifd_reason,
                )
            )
        return plans
