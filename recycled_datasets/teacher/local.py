"""The in-process teacher: a transformers model generating in batches, for runs without a server.

``local`` is the embedded SmolLM2-135M-Instruct; ``local:KEY`` is any entry of the students table (or a Hub
id, folder or .gguf), loaded through :mod:`recycled_datasets.models`. It is far too small to be a good
teacher; it exists so that the whole pipeline runs end to end on a laptop with nothing else installed.

Requests from the stage queue up; a batcher takes whatever is waiting (up to ``batch_size`` requests with the
same generation settings), runs one left-padded ``generate`` in a worker thread, and answers each caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from recycled_datasets.errors import ConfigError, Rejected
from recycled_datasets.models import DEFAULT_STUDENT, load_model, load_tokenizer, pretrained_path, resolve_student
from recycled_datasets.teacher.base import CallStats, Reply, ServerLimits, Teacher, apply_chat_template

if TYPE_CHECKING:
    from recycled_datasets.teacher.store import AnswerStore

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 8


def local_model_key(teacher: str) -> str:
    """The model part of ``local[:MODEL]`` (the embedded default when none is given)."""
    if teacher != "local" and not teacher.startswith("local:"):
        raise ConfigError(f"not a local teacher: {teacher!r} (expected local or local:MODEL)")
    return teacher.partition(":")[2] or DEFAULT_STUDENT


def _settings(payload: dict[str, Any]) -> tuple[int, float, int]:
    return payload["max_new_tokens"], payload["temperature"], payload["seed"]


@dataclass
class _Pending:
    payload: dict[str, Any]
    future: asyncio.Future[Reply]


class LocalTeacher(Teacher):
    """A transformers causal LM in this process, fed in batches. See the module doc."""

    def __init__(self, model: str = DEFAULT_STUDENT, *, batch_size: int | None = None, device: str = "cpu"):
        self.spec = resolve_student(model)
        self.batch_size = batch_size or DEFAULT_BATCH
        if self.batch_size < 1:
            raise ConfigError("the local teacher's batch size (--concurrency) must be at least 1")
        self.device = device
        self.teacher_id = self.spec.hub_id
        self.teacher_revision = self.spec.revision
        # Two batches' worth of requests in the window: the next batch is ready when one ends.
        self.window = 2 * self.batch_size
        self._tokenizer_lock = threading.Lock()
        self.tokenizer: Any = None
        self.limits = ServerLimits()
        self._model: Any = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._batcher: asyncio.Task[None] | None = None

    @property
    def cache_id(self) -> str:
        # Keyed by the weights actually run, not the model's public name: a de-quantized GGUF in transformers
        # does not answer like the same model behind a server.
        return f"local:{self.spec.model}@{self.spec.revision}"

    async def begin(self, store: AnswerStore | None = None, *, generate: bool = True) -> None:
        """The handshake is local: nothing to remember in ``store``; see :meth:`start`."""
        await self.start(generate=generate)

    async def start(self, *, generate: bool = True) -> None:
        """Load the tokenizer and the context limit, and with ``generate`` the weights and the batcher too."""
        from transformers import AutoConfig

        self.tokenizer = await asyncio.to_thread(load_tokenizer, self.spec)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model_config = await asyncio.to_thread(AutoConfig.from_pretrained, pretrained_path(self.spec))
        limit = getattr(model_config, "max_position_embeddings", None)
        self.limits = ServerLimits(max_total_tokens=limit if isinstance(limit, int) else None)
        if generate:
            self._model = await asyncio.to_thread(load_model, self.spec, dtype="float32", device=self.device)
            self._queue = asyncio.Queue()
            self._batcher = asyncio.create_task(self._run_batches())

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
            self._batcher = None

    def prepare(
        self, prompt: str, *, max_new_tokens: int, temperature: float, seed: int, system: str = ""
    ) -> dict[str, Any]:
        """The request for one user turn (after ``system``): the chat-templated prompt and a budget that fits the
        context."""
        if self.tokenizer is None:
            raise RuntimeError("LocalTeacher.start() was not awaited")
        with self._tokenizer_lock:  # the batcher thread pads with the same (stateful) fast tokenizer
            text = apply_chat_template(self.tokenizer, prompt, system, tokenize=False)
            n_prompt = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        budget = max_new_tokens
        if self.limits.max_total_tokens is not None:
            room = self.limits.max_total_tokens - n_prompt
            if room < 1:
                raise Rejected(
                    f"the prompt is {n_prompt} tokens; the model's context is {self.limits.max_total_tokens}"
                )
            budget = min(budget, room)
        return {
            "api": "local",
            "inputs": text,
            "max_new_tokens": budget,
            "temperature": temperature,
            "seed": seed,
            "prompt_tokens": n_prompt,
        }

    async def complete(self, payload: dict[str, Any], stats: CallStats) -> Reply:
        if self._queue is None:
            raise RuntimeError("LocalTeacher.start() was not awaited")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(payload, future))
        stats.sent += 1
        reply = await future
        stats.prompt_tokens += reply.prompt_tokens or 0
        stats.completion_tokens += reply.completion_tokens or 0
        return reply

    async def _run_batches(self) -> None:
        assert self._queue is not None
        held: list[_Pending] = []
        while True:
            if not held:
                held.append(await self._queue.get())
            while not self._queue.empty():
                held.append(self._queue.get_nowait())
            settings = _settings(held[0].payload)
            batch = [p for p in held if _settings(p.payload) == settings][: self.batch_size]
            held = [p for p in held if p not in batch]
            try:
                replies = await asyncio.to_thread(self._generate, [p.payload["inputs"] for p in batch], *settings)
            except Exception as e:  # a failed generate must reach every caller waiting on this batch
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(e)
                continue
            for pending, (text, n_new, finish) in zip(batch, replies, strict=True):
                if not pending.future.done():
                    pending.future.set_result(Reply(text, finish, pending.payload["prompt_tokens"], n_new))

    def _generate(
        self, prompts: list[str], max_new_tokens: int, temperature: float, seed: int
    ) -> list[tuple[str, int, str]]:
        import torch

        tokenizer = self.tokenizer
        # A fast tokenizer keeps its padding setting on the shared Rust object; a call without padding from
        # the event loop's thread (prepare) would switch it off in the middle of this one.
        with self._tokenizer_lock:
            tokenizer.padding_side = "left"
            batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            torch.manual_seed(seed)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        return generate_batch(self._model, tokenizer, batch, max_new_tokens, tokenizer.pad_token_id, **sampling)


def generate_batch(
    model: Any, tokenizer: Any, inputs: Mapping[str, Any], max_new_tokens: int, pad_token_id: int, **sampling: Any
) -> list[tuple[str, int, str]]:
    """Generate after the left-padded ``inputs`` (``input_ids`` and ``attention_mask``): for each row, the new
    text decoded up to the first end-of-sequence token, its number of tokens, and ``stop`` or ``length``."""
    import torch

    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id, **sampling)
    configured = getattr(model.generation_config, "eos_token_id", None)
    eos = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])} - {None}
    results = []
    for row in out[:, inputs["input_ids"].shape[1] :].tolist():
        end = next((i for i, token in enumerate(row) if token in eos), None)
        ids = row if end is None else row[:end]
        finish = "length" if end is None else "stop"
        results.append((tokenizer.decode(ids, skip_special_tokens=True), len(ids), finish))
    return results
