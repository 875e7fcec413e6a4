"""The settings of a teacher run, and the teacher they name.

:class:`ReflectConfig` holds every option of the reflect stage (the CLI fills the same fields);
:func:`make_teacher` picks the teacher it names: servers (``client``), the in-process model (``local``), or,
for a run that must not generate, the store alone (``base.StoreOnlyTeacher``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recycled_datasets.errors import ConfigError
from recycled_datasets.teacher.base import StoreOnlyTeacher, Teacher
from recycled_datasets.teacher.client import HttpTeacher
from recycled_datasets.teacher.gates import GateConfig
from recycled_datasets.teacher.local import LocalTeacher, local_model_key
from recycled_datasets.teacher.replicas import DEFAULT_COOLDOWN, Cooldown
from recycled_datasets.teacher.transport import (
    APIS,
    DEFAULT_MAX_RETRY_SECONDS,
    DEFAULT_TIMEOUT,
    RetryPolicy,
    split_urls,
)


@dataclass(frozen=True, slots=True)
class Sampling:
    """How a run asks: the output budget, and the temperature and seed of a first ask and of its one retry.

    The retry after an unusable reply is sampled (``retry_temperature``, seed + 1) when the first ask was
    greedy, since a greedy retry would return the same text.
    """

    max_new_tokens: int
    temperature: float = 0.0
    retry_temperature: float = 0.7
    seed: int = 0

    def of(self, attempt: int) -> tuple[float, int]:
        """(temperature, seed) of a request's first ask (``attempt`` 0) or of its retry."""
        if attempt == 0:
            return self.temperature, self.seed
        return self.temperature or self.retry_temperature, self.seed + attempt


# A server's budget is what its context leaves after the prompt (known from /info or /v1/models), at most this
# cap, the reference's (their scripts ask for min(2048, context - prompt)); the cap alone when the server does not
# announce its context. The embedded local teacher is a tiny demo model: a short budget keeps its runs quick.
DEFAULT_MAX_NEW_TOKENS_HTTP = 2048
DEFAULT_MAX_NEW_TOKENS_LOCAL = 256


@dataclass(frozen=True, slots=True)
class TeacherClient:
    """How a run talks to its teacher servers, apart from what it asks: ``srecycle reflect`` and ``srecycle
    build`` (and a builder's ``teacher_client=``) take the same options. None of them changes a reply's cache key
    except ``teacher_name``, which names a server that reports no model.

    Attributes:
        concurrency: requests in flight per server (default: the server's ``max_concurrent_requests`` from
            ``/info``, else 16); for the local teacher, the generation batch size (default 8).
        api: ``chat`` (``/v1/chat/completions``, every server) or ``generate`` (TGI's native route with the
            teacher's chat template applied here; needs ``tokenizer`` or a Hub model id the server reports).
        tokenizer: the teacher's tokenizer (students-table key, Hub id or folder), for exact prompt lengths.
        teacher_name: the model name to cache answers under when the server does not report one.
        timeout: seconds to wait for one answer before retrying it.
        health_timeout: seconds to wait at start for the servers to report healthy (``--wait-ready``).
        max_retries: retries per request for 429, 5xx, timeouts and dropped connections.
        max_retry_seconds: the most one request may take, attempts and waits together (``--max-retry-time``).
    """

    concurrency: int | None = None
    api: str = "chat"
    tokenizer: str | None = None
    teacher_name: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    health_timeout: float = 300.0
    max_retries: int = 8
    max_retry_seconds: float = DEFAULT_MAX_RETRY_SECONDS

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ConfigError(f"unknown --api {self.api!r}: choose {' or '.join(APIS)}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {self.concurrency}")
        if min(self.timeout, self.health_timeout, self.max_retry_seconds) <= 0:
            raise ConfigError("timeouts must be positive numbers of seconds")
        if self.max_retries < 0:
            raise ConfigError("max_retries must be >= 0")


def is_local(teacher: str) -> bool:
    return teacher == "local" or teacher.startswith("local:")


@dataclass
class ReflectConfig:
    """Everything the reflect stage needs besides the rows. The CLI fills the same fields.

    Attributes:
        teacher: server URL(s), comma-separated (``http://host:8080`` for TGI, ``http://host:port/v1`` for
            OpenAI-compatible), or ``local[:MODEL]`` for the in-process transformers teacher.
        store_dir: folder of the answer store (``DIR/teacher`` in a workdir).
        max_new_tokens: output budget per call (default 2048 for servers, the reference's cap, and 256 for the
            local teacher), lowered per request to what the server's context leaves after the prompt when the
            server announces its context (TGI ``/info`` ``max_total_tokens``, vLLM ``/v1/models``
            ``max_model_len``).
        limit: reflect only the first N rows.
        temperature: 0 is greedy decoding (the default and the paper's setting).
        seed: generation seed sent with every request.
        retry_temperature: sampling temperature of the one retry after an unusable reply when decoding is greedy.
        instruction_prompt / response_prompt: the user's prompt files (see ``teacher/prompts.py``).
        prompt_version: the name answers are cached under (default: the packaged version, or a hash of the
            user's prompt files).
        client: how the client talks to its servers (:class:`TeacherClient`; a dict of its fields is accepted).
        backoff_base / backoff_max: the retry delay is ``backoff_base * 2**attempt`` (jittered), capped.
        replica_cooldown: with several teacher URLs, seconds a replica that keeps failing is set aside before one
            request probes it (doubling while it keeps failing, up to 10 minutes); see ``teacher/replicas.py``.
        durable: fsync every committed answer (survives power loss, not only a killed process).
        retry_rejected: resend requests the server refused before (after raising its limits).
        progress: show a progress bar (still off when not on a terminal or with ``--quiet``).
        gates: the quality gates every parsed section must pass (``teacher/gates.py``).
        store_only: re-judge from the answer store and never call the teacher (the local model's weights are
            not even loaded); a request not in the store makes its variant fall back with the reason
            ``not_asked``. Builds use it when only the gates changed.
    """

    teacher: str = "local"
    store_dir: Path = Path("teacher")
    client: TeacherClient = field(default_factory=TeacherClient)
    max_new_tokens: int | None = None
    limit: int | None = None
    temperature: float = 0.0
    seed: int = 0
    retry_temperature: float = 0.7
    instruction_prompt: Path | None = None
    response_prompt: Path | None = None
    prompt_version: str | None = None
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    replica_cooldown: float = DEFAULT_COOLDOWN
    durable: bool = True
    retry_rejected: bool = False
    progress: bool = True
    gates: GateConfig = field(default_factory=GateConfig)
    store_only: bool = False

    def __post_init__(self) -> None:
        self.store_dir = Path(self.store_dir)
        if not self.teacher.strip():
            raise ConfigError("--teacher is empty: give a server URL or local[:MODEL]")
        if is_local(self.teacher):
            local_model_key(self.teacher)
        else:
            split_urls(self.teacher)
        if isinstance(self.client, dict):
            self.client = TeacherClient(**self.client)
        for name in ("max_new_tokens", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, not {value}")
        if self.temperature < 0 or self.retry_temperature < 0:
            raise ConfigError("temperatures must be >= 0 (0 is greedy decoding)")
        if self.replica_cooldown <= 0:
            raise ConfigError("the replica cool-down must be a positive number of seconds")
        if self.backoff_base < 0 or self.backoff_max < 0:
            raise ConfigError("the backoff delays must be >= 0")

    @property
    def output_budget(self) -> int:
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return DEFAULT_MAX_NEW_TOKENS_LOCAL if is_local(self.teacher) else DEFAULT_MAX_NEW_TOKENS_HTTP

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.output_budget, self.temperature, self.retry_temperature, self.seed)


def make_teacher(config: ReflectConfig, *, health_timeout: float | None = None) -> Teacher:
    """The teacher ``config`` names, not yet begun: the store alone with ``store_only``; the judge uses it too."""
    teacher: Teacher
    client = config.client
    if is_local(config.teacher):
        teacher = LocalTeacher(local_model_key(config.teacher), batch_size=client.concurrency)
    else:
        tokenizer = load_teacher_tokenizer(client.tokenizer) if client.tokenizer else None
        teacher = HttpTeacher(
            split_urls(config.teacher),
            api=client.api,
            concurrency=client.concurrency,
            timeout=client.timeout,
            health_timeout=health_timeout or client.health_timeout,
            retry=RetryPolicy(
                max_retries=client.max_retries,
                base=config.backoff_base,
                cap=config.backoff_max,
                max_seconds=client.max_retry_seconds,
            ),
            cooldown=Cooldown(seconds=config.replica_cooldown),
            teacher_name=client.teacher_name,
            tokenizer=tokenizer,
            seed=config.seed,
        )
    return StoreOnlyTeacher(teacher) if config.store_only else teacher


def load_teacher_tokenizer(name: str) -> Any:
    """The teacher's tokenizer from a students-table key, a Hub id, a folder or a .gguf file.

    Resolved like a student (``--student`` accepts the same names), so both stages find a model the same way.
    """
    from recycled_datasets.models import load_tokenizer, resolve_student

    try:
        spec = resolve_student(name)
    except ConfigError as e:
        raise ConfigError(f"teacher tokenizer: {e}") from e
    return load_tokenizer(spec)
