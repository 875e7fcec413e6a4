"""The token layout of a (prompt, target) pair for a student: the one place the scorer and the trainer share.

Two conventions (docs/method.md, section 3), chosen by :func:`resolve_scoring`: ``split`` (this module's
:func:`lay_out`, below) and ``reference`` (:func:`lay_out_reference`: exactly the reference authors' scoring
script, for single-turn rows in the alpaca, vicuna and wizardlm formats). The ``split`` layout:

A subset is selected by how a student scored its pairs, so fine-tuning must train on the very token ids that
were scored (docs/method.md, section 3, "Token layout"). :func:`lay_out` is that layout, and both
``scoring.plan`` (what the student scores) and ``finetune.data`` (what the student trains on) build their
sequences with it:

- the prompt is the student's template over the row's earlier turns and its last user turn
  (:func:`recycled_datasets.templates.render_prompt`);
- the prompt and the target are tokenized apart, without special tokens, so no token merges across the boundary;
- the sequence opens with the start token (BOS, else EOS as a start-of-text token), which is not doubled when
  the prompt text already begins with BOS (a chat template that writes it);
- the target carries the loss; the trainer adds the tokenizer's EOS after it (``stop=True``) so the model learns
  to stop, which is the only token the scorer never scores;
- the sequence is cut on the right at ``max_length`` (every token counted): the target loses its tail, and a
  prompt that fills ``max_length`` on its own leaves no target token (nothing to score or to train on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from recycled_datasets.errors import ConfigError
from recycled_datasets.records import Turn
from recycled_datasets.templates import REFERENCE_TEMPLATES, reference_prompt, render_prompt

IGNORE_INDEX = -100  # the label of a token that carries no loss (PyTorch's cross-entropy default)
SCORINGS: tuple[str, ...] = ("reference", "split")


def resolve_scoring(scoring: str | None, template: str, *, multi_turn: bool, preferred: str | None = None) -> str:
    """The scoring convention to use: the one asked for, else ``reference`` where it exists, else ``split``.

    ``reference`` exists for single-turn rows in the alpaca, vicuna and wizardlm formats (the reference script has
    no chat form and no earlier turns); asking for it elsewhere (``scoring``) is an error rather than a silent
    switch. ``preferred`` is a default, not a request (a students-table entry): it gives way to ``split`` where
    ``reference`` has no form, so the paper's students still score chat data.
    """
    exists = template in REFERENCE_TEMPLATES and not multi_turn
    if scoring is None or scoring == "":
        if preferred and preferred not in SCORINGS:
            raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, not {preferred!r}")
        if preferred == "split":
            return "split"
        return "reference" if exists else "split"
    if scoring not in SCORINGS:
        raise ConfigError(f"--scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}")
    if scoring == "reference":
        if template not in REFERENCE_TEMPLATES:
            raise ConfigError(
                f"--scoring reference exists for the {', '.join(REFERENCE_TEMPLATES)} templates, not {template!r} "
                "(the reference script has no chat form): use --scoring split"
            )
        if multi_turn:
            raise ConfigError(
                "--scoring reference scores single-turn rows only (the reference script has no earlier turns); "
                "these rows have earlier turns: use --scoring split"
            )
    return scoring


@dataclass(frozen=True, slots=True)
class Exchange:
    """One (prompt, target) pair before layout: a user turn after the row's earlier turns, and the text to learn.

    Attributes:
        instruction: the user turn's instruction (for r-IFD, the guess-the-instruction request).
        target: the text whose tokens carry the loss (the response; for r-IFD, the instruction).
        input: the optional input joined to the instruction by the template.
        context: the row's earlier turns (a chat row's system turn and finished exchanges), shown before it.
    """

    instruction: str
    target: str
    input: str = ""
    context: tuple[Turn, ...] = ()


@dataclass(frozen=True, slots=True)
class Layout:
    """The token ids of one pair and where its loss starts.

    Attributes:
        prompt: the rendered prompt text.
        prompt_tokens: tokens of the prompt text alone (a BOS the template writes included).
        target_tokens: tokens of the target text alone, before the stop token and the cut at ``max_length``.
        ids: ``[start token] + ids(prompt) + ids(target) [+ EOS]``, cut on the right at ``max_length``; a prompt
            longer than ``max_length`` is kept whole with no target token after it.
        start: the position of the first target token: ``ids[:start]`` is the prefix and carries no loss.
    """

    prompt: str
    prompt_tokens: int
    target_tokens: int
    ids: tuple[int, ...]
    start: int

    @property
    def n(self) -> int:
        """Target tokens kept (the stop token included when there is one)."""
        return len(self.ids) - self.start

    @property
    def target(self) -> tuple[int, ...]:
        return self.ids[self.start :]

    @property
    def mask(self) -> list[int]:
        """1 where a token carries the loss, 0 on the prefix."""
        return [0] * self.start + [1] * self.n

    @property
    def labels(self) -> list[int]:
        """The ids with the prefix replaced by :data:`IGNORE_INDEX`: what a causal LM's loss is computed on."""
        return [IGNORE_INDEX] * self.start + list(self.target)


def start_token(tokenizer: Any) -> int | None:
    """BOS if the tokenizer has one, else EOS as a start-of-text token, else ``None``."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return None


def head_ids(tokenizer: Any) -> list[int]:
    """What every sequence opens with: the start token, or nothing when the tokenizer has none."""
    start = start_token(tokenizer)
    return [start] if start is not None else []


def encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text alone, without special tokens."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def lay_out(
    tokenizer: Any,
    template: str,
    exchanges: Sequence[Exchange],
    *,
    max_length: int | None = None,
    stop: bool = False,
) -> list[Layout]:
    """Lay out each exchange as the student sees it (see the module doc); one :class:`Layout` per exchange.

    ``max_length`` ``None`` cuts nothing. ``stop`` appends the tokenizer's EOS to the target (training).
    """
    prompts = [
        render_prompt(template, e.instruction, e.input, tokenizer=tokenizer, context=e.context) for e in exchanges
    ]
    head = head_ids(tokenizer)
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    tail = [eos] if stop and eos is not None else []
    layouts = []
    for text, prompt, target in zip(
        prompts, encode(tokenizer, prompts), encode(tokenizer, [e.target for e in exchanges]), strict=True
    ):
        prefix = head + (prompt[1:] if bos is not None and prompt[:1] == [bos] else prompt)
        body = target + tail
        if max_length is not None:
            body = body[: max(0, max_length - len(prefix))]
        layouts.append(
            Layout(
                prompt=text,
                prompt_tokens=len(prompt),
                target_tokens=len(target),
                ids=(*prefix, *body),
                start=len(prefix),
            )
        )
    return layouts


def encode_whole(
    tokenizer: Any,
    texts: Sequence[str],
    max_lengths: Sequence[int | None],
    full: Sequence[Sequence[int]] | None = None,
) -> list[list[int]]:
    """``tokenizer.encode(text, truncation=True, max_length=m)`` of each text, as the reference script calls it.

    Special tokens as the tokenizer adds them. One batched call (or ``full``, the texts' ids already encoded
    that way, uncut); only a text longer than its ``m`` is encoded again with the tokenizer's own truncation, so
    where the special tokens go after a cut is the tokenizer's business.
    """
    if not texts:
        return []
    full = tokenizer(list(texts))["input_ids"] if full is None else full
    out = []
    for text, ids, limit in zip(texts, full, max_lengths, strict=True):
        if limit is not None and len(ids) > limit:
            ids = tokenizer.encode(text, truncation=True, max_length=limit)
        out.append(list(ids))
    return out


def lay_out_reference(
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    spans: Sequence[str] | None = None,
    max_length: int,
    stop: bool = False,
) -> list[Layout]:
    """The reference script's conditioned pass: ``prompt + target`` tokenized as one string, cut at ``max_length``.

    The loss starts after the first ``len(encode(text[:text.rfind(span)]))`` tokens (``span`` defaults to the
    target; the reference's r-IFD pass looks for the instruction alone, its input following it). Tokens merged
    across the boundary stay merged, as they did for the reference. ``stop`` appends EOS for training when there
    is room and the tokenizer did not already end the sequence with it.
    """
    wholes = [p + t for p, t in zip(prompts, targets, strict=True)]
    full = tokenizer(wholes)["input_ids"] if wholes else []
    ids_of = encode_whole(tokenizer, wholes, [max_length] * len(wholes), full)
    untruncated = [len(i) for i in full]
    prompt_lengths = [len(i) for i in encode_whole(tokenizer, list(prompts), [None] * len(prompts))]
    if spans is None:  # the text before the last occurrence of the target, at the end of prompt + target: the prompt
        prefix_lengths = prompt_lengths
    else:
        cuts = [w[: w.rfind(span)] for w, span in zip(wholes, spans, strict=True)]
        prefix_lengths = [len(i) for i in encode_whole(tokenizer, cuts, [None] * len(cuts))]
    eos = getattr(tokenizer, "eos_token_id", None)
    layouts = []
    for prompt, ids, total, prefix, n_prompt in zip(
        prompts, ids_of, untruncated, prefix_lengths, prompt_lengths, strict=True
    ):
        start = max(prefix, 1)  # the first token is never predicted (a model's labels= path shifts by one)
        if stop and eos is not None and len(ids) < max_length and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
        layouts.append(
            Layout(
                prompt=prompt,
                prompt_tokens=n_prompt,
                target_tokens=max(0, total - start),
                ids=tuple(ids),
                start=min(start, len(ids)),
            )
        )
    return layouts


def reference_layouts(
    tokenizer: Any, template: str, exchanges: Sequence[Exchange], *, max_length: int, stop: bool = False
) -> list[Layout]:
    """Each single-turn exchange in the reference script's layout (the trainer's entry point; see above)."""
    prompts = []
    for e in exchanges:
        if e.context:
            raise ConfigError("the reference scoring convention has no form for rows with earlier turns")
        prompts.append(reference_prompt(template, e.instruction, e.input))
    return lay_out_reference(tokenizer, prompts, [e.target for e in exchanges], max_length=max_length, stop=stop)
