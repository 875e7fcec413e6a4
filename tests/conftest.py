"""Shared fixtures: the real data beside the repo (skipped when absent), the embedded student, tmp dirs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# A datasets cache of this session's own, set before anything imports datasets (it reads the variable once):
# a cache left by an earlier run is never read back.
_DATASETS_CACHE = tempfile.mkdtemp(prefix="srecycle-tests-datasets-")
os.environ["HF_DATASETS_CACHE"] = _DATASETS_CACHE

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ALPACA = SHARED_DATA / "alpaca" / "alpaca_cherry_5pct.json"


@pytest.fixture(autouse=True, scope="session")
def _offline_env() -> None:
    """Tests never reach the Hub: every model and dataset is local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def alpaca_path() -> Path:
    if not ALPACA.is_file():
        pytest.skip(f"real Alpaca rows not found at {ALPACA} (../shared/data is absent)")
    return ALPACA


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_DATASETS_CACHE, ignore_errors=True)


def tiny_llama(tokenizer, *, hidden_size: int = 64, layers: int = 2):  # noqa: ANN001, ANN201
    """A random-weight Llama sized for tests, with ``tokenizer``'s vocabulary and special ids: real prompts and
    token ids, a training or generation step in milliseconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = hidden_size // 16
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved :func:`tiny_llama` with SmolLM2's real tokenizer beside it; tests read it and never write it."""
    from recycled_datasets.models import load_tokenizer, resolve_student

    tokenizer = load_tokenizer(resolve_student("smollm2-135m"))
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# The one build with the embedded SmolLM2 teacher that the slow tests share (made once per test run, on first
# use): the README's builder example's options, so the installed-builder test compares against it too.
EMBEDDED_BUILD_ARGS = (
    "--source", "sample", "--limit", "3", "--student", "smollm2-135m", "--teacher", "local",
    "--max-new-tokens", "48", "--keep-unreflected",
)  # fmt: skip


@pytest.fixture(scope="session")
def embedded_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(workdir, what the build printed) of ``srecycle build`` with :data:`EMBEDDED_BUILD_ARGS`; read-only."""
    import subprocess
    import sys

    workdir = tmp_path_factory.mktemp("embedded-build") / "work"
    done = subprocess.run(
        [sys.executable, "-m", "recycled_datasets", "build", *EMBEDDED_BUILD_ARGS, "--quiet", "--workdir", workdir],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, f"the shared embedded build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return workdir, done.stdout
