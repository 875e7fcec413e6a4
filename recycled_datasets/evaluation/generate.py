"""A model's answers to test questions, in its own prompt format, greedy, committed as they arrive.

The prompt is the format the model was scored and fine-tuned with (``templates.render_prompt``); a checkpoint
written by ``srecycle finetune`` names its template in ``srecycle_finetune.json``. Locally, questions are
sorted by length and generated in left-padded batches, with the token layout training used
(``[start] + ids(prompt)``). Behind a server (``--server``) the requests go through the teacher's client:
``/v1`` servers get the question as one chat turn (the server applies the model's chat template, so the
template is ``chat``); TGI's native route (``--api generate``) gets the exact prompt text of any template.

Every answer is committed to an answer store (the teacher's, keyed by model, generation settings and prompt)
the moment it is generated, so a killed run resumes and generates nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recycled_datasets.errors import ConfigError, InputError, Rejected, TeacherError
from recycled_datasets.evaluation.testsets import Question, read_questions
from recycled_datasets.teacher.store import ANSWER_OK, AnswerStore, request_key
from recycled_datasets.workdir.files import write_json, write_table
from recycled_datasets.workdir.schema import arrow_schema

logger = logging.getLogger(__name__)

GENERATE_VERSION = "srecycle-generate-v1"
ANSWER_COLUMNS = ("test_set", "id", "instruction", "output", "model", "template", "n_output_tokens", "finish_reason")
DEFAULT_MAX_NEW_TOKENS = 1024


@dataclass
class GenerateConfig:
    """Settings of a generation run. The CLI fills the same fields.

    Attributes:
        model: a ``srecycle finetune`` checkpoint folder, a students-table key, a Hub id, a folder or a .gguf;
            with ``server``, an optional name to record instead of the one the server reports.
        test_sets: test files or folders of them (the paper's five files, or any JSON / JSONL / parquet).
        output: the answers file (``.parquet``); a ``.json`` sidecar beside it says what made it.
        template: the prompt format; default: the checkpoint's own, else the student's.
        server: an OpenAI-compatible or TGI server that serves the model, instead of loading it here.
        api: with ``server``: ``chat`` (one user turn) or ``generate`` (TGI's route, the exact template text).
        max_new_tokens: the answer budget.
        limit: answer only the first N questions of each test set.
        batch_size: local: sequences per ``generate`` call; server: requests in flight.
        store_dir: the answer store (default: ``OUTPUT_STEM.store`` beside the output).
        device: ``cuda`` or ``cpu`` (default: cuda when available).
        students_file: extra students (TOML).
        timeout / max_retries: the server client's retry policy.
        progress: show a progress bar.
    """

    model: str | None
    test_sets: Sequence[Path]
    output: Path
    template: str | None = None
    server: str | None = None
    api: str = "chat"
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    limit: int | None = None
    batch_size: int = 8
    store_dir: Path | None = None
    device: str | None = None
    students_file: Path | None = None
    timeout: float = 600.0
    max_retries: int = 8
    progress: bool = True

    def __post_init__(self) -> None:
        from recycled_datasets.templates import validate_template

        self.output = Path(self.output)
        if self.output.suffix.lower() != ".parquet":
            raise ConfigError(f"--output {self.output} must end in .parquet")
        if self.store_dir is None:
            self.store_dir = self.output.parent / f"{self.output.stem}.store"
        if self.template is not None:
            validate_template(self.template)
        if self.model is None and self.server is None:
            raise ConfigError("give a MODEL, or --server URL for a model behind a server")
        for name in ("max_new_tokens", "batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, not {value}")
        if self.server is not None:
            from recycled_datasets.teacher.transport import APIS, split_urls

            split_urls(self.server)
            if self.api not in APIS:
                raise ConfigError(f"unknown --api {self.api!r}: choose {' or '.join(APIS)}")
            if self.template is None and self.model is not None and Path(self.model).is_dir():
                self.template = checkpoint_template(Path(self.model))  # the served checkpoint's own format
            if self.api == "generate" and self.template in (None, "chat"):
                raise ConfigError(
                    "--api generate sends the exact prompt text: give --template (alpaca, vicuna, wizardlm or none) "
                    "or the checkpoint folder that names it; for the model's chat template use a /v1 server and "
                    "--api chat"
                )
            if self.api == "chat" and self.template not in (None, "chat"):
                raise ConfigError(
                    f"template {self.template} needs the exact prompt text: serve the model with TGI and use "
                    "--api generate with the server's root URL (a /v1 chat server applies the model's chat template)"
                )
        if not self.test_sets:
            raise ConfigError("--test-sets: give a folder of test files or the files themselves")


@dataclass(frozen=True)
class GenerateResult:
    path: Path
    rows: int
    generated: int
    from_store: int
    model: str
    template: str
    seconds: float


def checkpoint_template(folder: Path) -> str | None:
    """The template a ``srecycle finetune`` checkpoint was trained with, or None for any other folder."""
    from recycled_datasets.records import FINETUNE_FILE

    path = Path(folder) / FINETUNE_FILE
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("template")
    except (json.JSONDecodeError, AttributeError) as e:
        raise InputError(f"unreadable fine-tune record ({e})", path=str(path)) from e
    if not isinstance(template, str) or not template:
        raise InputError("names no template", path=str(path), field="template")
    return template


def _rows(questions: list[Question], answers: list[tuple[str, int | None, str | None]], model: str, template: str):
    import pyarrow as pa

    records = [
        dict(zip(ANSWER_COLUMNS, (q.test_set, q.id, q.instruction, text, model, template, n, finish), strict=True))
        for q, (text, n, finish) in zip(questions, answers, strict=True)
    ]
    return pa.Table.from_pylist(records, schema=arrow_schema(ANSWER_COLUMNS, {"n_output_tokens": pa.int64()}))


def _label(model: str) -> str:
    """A short name for tables and cards: a folder's or file's name, else the key or Hub id as given."""
    return Path(model).name if Path(model).exists() else model


# ---- local ---------------------------------------------------------------------------------------------------


class _LocalModel:
    """A transformers model in this process, generating greedy answers in left-padded, length-sorted batches."""

    def __init__(self, config: GenerateConfig):
        from recycled_datasets.models import resolve_student

        assert config.model is not None
        folder_template = checkpoint_template(Path(config.model)) if Path(config.model).is_dir() else None
        self.spec = resolve_student(
            config.model, template=config.template or folder_template, students_file=config.students_file
        )
        self.template = self.spec.template
        self.name = _label(config.model)
        self.config = config
        self.tokenizer: Any = None
        self.model: Any = None

    @property
    def cache_id(self) -> str:
        """What keys this model's answers: its location, and for a folder its weight files as they are now, so
        that a checkpoint trained further in the same folder does not get the old checkpoint's answers."""
        weights = ""
        folder = Path(self.spec.model)
        if folder.is_dir():
            import hashlib

            files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
            stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
            weights = "#" + hashlib.sha256(stamp.encode()).hexdigest()[:16]
        return f"local:{self.spec.model}@{self.spec.revision}{weights}"

    def load(self) -> None:
        import torch

        from recycled_datasets.models import load_model, load_tokenizer

        device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(self.spec)
        self.model = load_model(self.spec, dtype="bfloat16" if device == "cuda" else "float32", device=device)
        self.device = device

    def prompt_ids(self, questions: list[Question]) -> list[list[int]]:
        """The prompt's ids as the model was scored and trained on them (:func:`recycled_datasets.tokens.lay_out`
        with nothing to learn yet): the answer is generated after them."""
        from recycled_datasets.tokens import Exchange, lay_out

        layouts = lay_out(self.tokenizer, self.template, [Exchange(q.instruction, "") for q in questions])
        return [list(layout.ids[: layout.start]) for layout in layouts]

    def generate(self, batch: list[list[int]]) -> list[tuple[str, int, str]]:
        import torch

        from recycled_datasets.teacher.local import generate_batch

        tokenizer = self.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device)
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        results = generate_batch(self.model, tokenizer, inputs, self.config.max_new_tokens, pad, **greedy)
        return [(text.strip(), n, finish) for text, n, finish in results]


def _generate_local(config: GenerateConfig, questions: list[Question], store: AnswerStore, bar: Any) -> tuple:
    local = _LocalModel(config)
    local.load()
    ids = local.prompt_ids(questions)
    context = getattr(local.model.config, "max_position_embeddings", None)
    for q, x in zip(questions, ids, strict=True):
        if isinstance(context, int) and len(x) + config.max_new_tokens > context:
            raise InputError(
                f"{q.test_set} question {q.id}: its prompt is {len(x)} tokens and with --max-new-tokens "
                f"{config.max_new_tokens} does not fit the model's {context}-token context; lower --max-new-tokens "
                "or leave the question out"
            )
    requests = [{"ids": x, "max_new_tokens": config.max_new_tokens} for x in ids]
    keys = [request_key(local.cache_id, GENERATE_VERSION, request) for request in requests]
    hits = [store.get(key) for key in keys]
    answers: list[tuple[str, int | None, str | None] | None] = [
        None if hit is None else (hit.text or "", hit.completion_tokens, hit.finish_reason) for hit in hits
    ]
    todo = [i for i, hit in enumerate(hits) if hit is None]
    from_store = len(questions) - len(todo)
    task = bar.add_task("answers", total=len(questions), completed=from_store) if bar is not None else None
    todo.sort(key=lambda i: len(ids[i]), reverse=True)  # similar lengths share a batch: little padding
    for start in range(0, len(todo), config.batch_size):
        chunk = todo[start : start + config.batch_size]
        for i, (text, n, finish) in zip(chunk, local.generate([ids[i] for i in chunk]), strict=True):
            store.put(
                keys[i],
                teacher=local.cache_id,
                prompt_version=GENERATE_VERSION,
                request=requests[i],
                status=ANSWER_OK,
                text=text,
                finish_reason=finish,
                prompt_tokens=len(ids[i]),
                completion_tokens=n,
            )
            answers[i] = (text, n, finish)
        if bar is not None:
            bar.update(task, advance=len(chunk))
    return answers, from_store, local.name, local.template


# ---- server --------------------------------------------------------------------------------------------------


async def _generate_server(config: GenerateConfig, questions: list[Question], store: AnswerStore, meter: Any):
    from recycled_datasets.teacher.client import HttpTeacher
    from recycled_datasets.teacher.config import Sampling
    from recycled_datasets.teacher.prompts import load_prompts
    from recycled_datasets.teacher.run import TeacherRun
    from recycled_datasets.teacher.transport import RetryPolicy, split_urls
    from recycled_datasets.templates import render_prompt

    assert config.server is not None
    template = config.template or "chat"
    teacher = HttpTeacher(
        split_urls(config.server),
        api=config.api,
        concurrency=config.batch_size,
        timeout=config.timeout,
        retry=RetryPolicy(max_retries=config.max_retries),
        teacher_name=None if config.model is None else _label(config.model),
        raw_prompts=config.api == "generate",
    )
    sampling = Sampling(max_new_tokens=config.max_new_tokens)  # greedy, and asked once
    run = TeacherRun(teacher, store, load_prompts(version=GENERATE_VERSION), meter, sampling=sampling)
    answers: list[tuple[str, int | None, str | None] | None] = [None] * len(questions)

    def text_of(q: Question) -> str:
        # chat: the server's own chat template wraps the question; generate: the exact template text.
        return q.instruction if config.api == "chat" else render_prompt(template, q.instruction)

    async def one(i: int, q: Question) -> None:
        try:
            text, finish = await run.ask(text_of(q), 0)
        except Rejected as e:
            raise TeacherError(
                f"{q.test_set} question {q.id}: the server refused it for good ({e.reason}); raise the "
                "server's input limit or leave the question out"
            ) from e
        payload = teacher.prepare(text_of(q), max_new_tokens=config.max_new_tokens, temperature=0.0, seed=0)
        stored = store.get(request_key(teacher.cache_id, GENERATE_VERSION, payload))
        answers[i] = (text.strip(), stored.completion_tokens if stored else None, finish)

    async with run.begun():
        await run.each(functools.partial(one, i, q) for i, q in enumerate(questions))
    return answers, run.stats.cached, teacher.teacher_id, template


def generate_answers(config: GenerateConfig) -> GenerateResult:
    """Answer every question of the test sets with the model; see the module doc."""
    from recycled_datasets.progress import progress
    from recycled_datasets.teacher.run import ProgressMeter

    started = time.monotonic()
    questions = read_questions(config.test_sets, limit=config.limit)
    with (
        AnswerStore.open(config.store_dir) as store,
        progress() if config.progress else contextlib.nullcontext() as bar,
    ):
        if config.server is None:
            answers, from_store, name, template = _generate_local(config, questions, store, bar)
        else:
            meter = ProgressMeter()
            if bar is not None:
                meter.bar, meter.task = bar, bar.add_task("answers", total=len(questions))
            answers, from_store, name, template = asyncio.run(_generate_server(config, questions, store, meter))
    table = _rows(questions, answers, name, template)
    write_table(table, config.output)
    write_json(
        config.output.with_suffix(".json"),
        {
            "model": name,
            "template": template,
            "server": config.server,
            "max_new_tokens": config.max_new_tokens,
            "test_sets": sorted({q.test_set for q in questions}),
            "rows": len(questions),
        },
    )
    seconds = round(time.monotonic() - started, 3)
    return GenerateResult(
        config.output, len(questions), len(questions) - from_store, from_store, name, template, seconds
    )
