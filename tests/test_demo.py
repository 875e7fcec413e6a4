"""The demo end to end on a reduced sample: the whole job on the embedded model, offline, on CPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import datasets
import pytest
from huggingface_hub import DatasetCard


@pytest.mark.slow
def test_demo_on_a_reduced_sample(tmp_path):
    workdir = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "160"}
    args = [
        sys.executable,
        "-m",
        "recycled_datasets",
        "demo",
        "--workdir",
        str(workdir),
        "--rows",
        "4",
        "--max-new-tokens",
        "48",
        "--keep-unreflected",
        "--show",
        "3",
        "--compare",
        "2",
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=1500, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    folder = workdir / "dataset"
    subset = datasets.load_dataset(str(folder), "smollm2-135m", split="train")
    assert f"-> {subset.num_rows} rows" in result.stdout
    assert subset.column_names[:3] == ["instruction", "input", "output"]
    assert set(subset["student"]) <= {"smollm2-135m"}
    for row in subset.select(range(min(3, subset.num_rows))):
        assert f"id {row['id']}" in result.stdout  # the rows loaded back are printed
    assert "srecycle demo: summary" in result.stdout
    # The method itself: two rows' four variants side by side, with scores and the branch the rule took.
    assert result.stdout.count(": the four variants") == 2
    assert result.stdout.count("branch: IFD(ins)") == 2 and "-> final = " in result.stdout
    for label in ("instruction", "answer", "status", "IFD", "r-IFD"):
        assert f"│ {label} " in result.stdout
    # The seconds of each stage and the total.
    for stage in ("teacher: reflections", "loading the teacher model", "student: IFD / r-IFD", "release tree"):
        assert re.search(rf"{re.escape(stage)}.*│\s+\d+\.\d │", result.stdout), stage
    assert re.search(r"total .*│\s+\d+\.\d │", result.stdout)

    card = DatasetCard.load(folder / "README.md")
    configs = card.data.to_dict()["configs"]
    assert {c["config_name"] for c in configs} >= {"smollm2-135m", "reflections"}
    assert list(folder.glob("plots/smollm2-135m/*.png"))
    reflections = datasets.load_dataset(str(folder), "reflections", split="train")
    assert reflections.num_rows == 4 * 4  # four variants of each of the 4 rows

    # A rerun reuses every stage: no teacher work, same subset.
    again = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 rows reflected, 4 reused" in again.stdout
    assert datasets.load_dataset(str(folder), "smollm2-135m", split="train")["id"] == subset["id"]
