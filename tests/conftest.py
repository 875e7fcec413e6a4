"""Shared fixtures: the real data beside the repo (skipped when absent), the embedded student, tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ALPACA = SHARED_DATA / "alpaca" / "alpaca_cherry_5pct.json"


@pytest.fixture(autouse=True, scope="session")
def _offline_env() -> None:
    """Tests never reach the Hub: every model and dataset is local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _fresh_datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A datasets cache of this session's own: a cache left by an earlier run is never read back."""
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf_datasets_cache"))


@pytest.fixture
def alpaca_path() -> Path:
    if not ALPACA.is_file():
        pytest.skip(f"real Alpaca rows not found at {ALPACA} (../shared/data is absent)")
    return ALPACA
