"""Turn pairs into the token sequences a student scores (docs/method.md, section 3), deduplicated.

Each pair needs four losses: the response given its prompt and alone, the instruction given the
guess-the-instruction prompt and alone. Each is a *job*: a token sequence whose loss is the mean NLL of its
``n`` target tokens. Under the ``split`` convention the conditioned sequence is laid out by
:func:`recycled_datasets.tokens.lay_out` (the layout fine-tuning trains on) and the direct pass reads the same
kept target tokens after the start token alone. Under ``reference`` both are the reference script's:
:func:`recycled_datasets.tokens.lay_out_reference` for the conditioned passes, and the target encoded alone
(special tokens as the tokenizer adds them, cut at ``max_length - len(prompt ids) + 1``), scored after its first
token, for the direct ones. Jobs are
keyed by content, so a sequence shared by several pairs (a row's variants share instructions and responses)
is scored once, and a resumed run recognises the jobs it already finished.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from recycled_datasets.records import Pair
from recycled_datasets.templates import instruction_target, reference_prompt, reference_reverse_prompt, reverse_request
from recycled_datasets.tokens import (
    Exchange,
    Layout,
    encode_whole,
    head_ids,
    lay_out,
    lay_out_reference,
    start_token,
)

__all__ = ["LOSS_NAMES", "Job", "PairPlan", "Planner", "start_token"]

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
    h.update(array("i", ids).tobytes())  # 4 bytes per id, little-endian on every platform torch supports
    return h.hexdigest()


class Planner:
    """Builds jobs for pairs with one tokenizer, template and length limit, collecting unique jobs."""

    def __init__(self, tokenizer: Any, template: str, max_length: int, scoring: str = "split"):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.scoring = scoring
        self.head = head_ids(tokenizer)
        if not self.head and scoring == "split":
            logger.warning(
                "the tokenizer has neither BOS nor EOS: the first target token of each direct pass is not scored"
            )
        self.jobs: dict[str, Job] = {}

    def _add(self, ids: list[int], start: int, n: int) -> str:
        key = _job_key(ids, start)
        if key not in self.jobs:
            self.jobs[key] = Job(key=key, ids=tuple(ids), start=start, n=n)
        return key

    def _unscorable(self, layout: Layout) -> str | None:
        """Why a laid-out pair's conditioned pass has no target token to score, or None when it has one."""
        if not layout.target_tokens:
            return "empty target"
        if layout.n == 0:
            return (
                f"the prompt fills max_length ({layout.start} >= {self.max_length} tokens): "
                "no target token left to score"
            )
        return None

    def _pair_of_jobs(self, layout: Layout) -> tuple[str | None, str | None, int, str | None]:
        """(conditional job, direct job, scored target tokens, reason when missing) for one laid-out pair."""
        if reason := self._unscorable(layout):
            return None, None, 0, reason
        cond = self._add(list(layout.ids), layout.start, layout.n)
        # The direct pass reads the same kept target tokens after the start token alone.
        direct_ids = self.head + list(layout.target)
        direct_start = len(self.head) if self.head else 1
        if len(direct_ids) - direct_start <= 0:
            return cond, None, layout.n, "a one-token target without BOS/EOS cannot be scored directly"
        direct = self._add(direct_ids, direct_start, len(direct_ids) - direct_start)
        return cond, direct, layout.n, None

    def plan(self, pairs: Sequence[Pair]) -> list[PairPlan]:
        if self.scoring == "reference":
            return self._plan_reference(pairs)
        # Both conditional passes see the row's earlier turns (a chat row's context) before the last exchange.
        forward = self._lay_out([Exchange(p.instruction, p.output, p.input, p.context) for p in pairs])
        reverse = self._lay_out(
            [
                Exchange(reverse_request(p.output), instruction_target(p.instruction, p.input), "", p.context)
                for p in pairs
            ]
        )
        return [
            _pair_plan(self._pair_of_jobs(response), self._pair_of_jobs(instruction), response, instruction)
            for response, instruction in zip(forward, reverse, strict=True)
        ]

    def _plan_reference(self, pairs: Sequence[Pair]) -> list[PairPlan]:
        """The reference script's four passes per pair (its rows carry no earlier turns)."""
        tok, limit = self.tokenizer, self.max_length
        prompts = [reference_prompt(self.template, p.instruction, p.input) for p in pairs]
        reverse = [reference_reverse_prompt(self.template, p.output) for p in pairs]
        forward = lay_out_reference(tok, prompts, [p.output for p in pairs], max_length=limit)
        backward = lay_out_reference(
            tok,
            reverse,
            [p.instruction + p.input for p in pairs],  # x' with no separator, as the reference writes it
            spans=[p.instruction for p in pairs],
            max_length=limit,
        )
        # The direct passes are cut at max_length - len(prompt ids, themselves cut at max_length) + 1.
        direct_out = encode_whole(
            tok, [p.output for p in pairs], [limit - min(f.prompt_tokens, limit) + 1 for f in forward]
        )
        direct_ins = encode_whole(
            tok,
            [p.instruction + p.input for p in pairs],
            [limit - min(b.prompt_tokens, limit) + 1 for b in backward],
        )
        plans = []
        for pair, f, b, do, di in zip(pairs, forward, backward, direct_out, direct_ins, strict=True):
            if pair.output == "":  # the reference records no scores for an empty response (only then)
                none = (None, None, 0, "empty response")
                plans.append(_pair_plan(none, none, f, b))
            else:
                plans.append(_pair_plan(self._reference_jobs(f, do), self._reference_jobs(b, di), f, b))
        return plans

    def _reference_jobs(self, layout: Layout, direct_ids: list[int]) -> tuple[str | None, str | None, int, str | None]:
        """(conditioned job, direct job, scored target tokens, reason when missing), the reference's way."""
        if reason := self._unscorable(layout):
            return None, None, 0, reason
        if len(direct_ids) < 2:
            return None, None, 0, "the target alone is one token: nothing after its first token to score"
        cond = self._add(list(layout.ids), layout.start, layout.n)
        direct = self._add(direct_ids, 1, len(direct_ids) - 1)
        return cond, direct, layout.n, None

    def _lay_out(self, exchanges: list[Exchange]) -> list[Layout]:
        return lay_out(self.tokenizer, self.template, exchanges, max_length=self.max_length)


def _pair_plan(response: tuple, instruction: tuple, forward: Layout, reverse: Layout) -> PairPlan:
    """A pair's plan from its two (conditioned job, direct job, scored tokens, missing reason) and its layouts."""
    rc, rd, n_r, ifd_reason = response
    ic, id_, n_i, rifd_reason = instruction
    return PairPlan(
        jobs=(rc, rd, ic, id_),
        n_response=n_r,
        n_instruction=n_i,
        n_prompt=forward.prompt_tokens,
        n_reverse_prompt=reverse.prompt_tokens,
        ifd_reason=ifd_reason,
        rifd_reason=rifd_reason,
    )
