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
