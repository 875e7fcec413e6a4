"""The demo: its bundled reference reflections, and a run end to end on the embedded model, offline, on CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from recycled_datasets.cli.demo import reference_reflections_path
from recycled_datasets.stages.reference import REFERENCE_SPLITS, import_reflections
from recycled_datasets.stages.source import load_source, sample_path
from recycled_datasets.workdir.tables import read_reflections


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    result = import_reflections(str(reference_reflections_path()), workdir)
    frame, meta = read_reflections(workdir)
    return result, frame, meta


def test_the_bundled_reflections_import_cleanly_as_the_sample_rows(imported):
    result, frame, meta = imported
    sample = load_source("sample").rows
    assert result.rows == frame.height == len(sample) == 30
    # Row i of the origin split is row i of the bundled sample, so the ids are the sample's own.
    assert frame["id"].to_list() == [r.id for r in sample]
    assert frame["ori_instruction"].to_list() == [r.instruction for r in sample]
    assert result.unchanged == {"ins": 0, "res": 0, "both": 0}
    assert meta["teacher"].startswith("reference:") and meta["rows"] == 30
    for v in ("ins", "res", "both"):
        assert set(frame[f"{v}_status"].to_list()) == {"ok"}


def test_every_reflection_differs_from_its_original(imported):
    _, frame, _ = imported
    for i, r in enumerate(frame.iter_rows(named=True), start=1):
        # ins: a new, self-contained instruction with its own answer and no input
        assert r["ins_instruction"].strip() != r["ori_instruction"].strip(), i
        assert r["ins_input"] == "" and r["both_input"] == "", i
        assert r["ins_output"].strip() != r["ori_output"].strip(), i
        # res: the original instruction and input with a different (better) answer
        assert (r["res_instruction"], r["res_input"]) == (r["ori_instruction"], r["ori_input"]), i
        assert r["res_output"].strip() != r["ori_output"].strip(), i
        # both: the ins instruction with an answer other than ins's own (and the original's)
        assert r["both_instruction"] == r["ins_instruction"], i
        assert r["both_output"].strip() not in (r["ins_output"].strip(), r["ori_output"].strip()), i


def test_the_bundled_reflections_ship_with_the_package():
    folder = reference_reflections_path()
    assert folder.parent == sample_path().parent
    for split in REFERENCE_SPLITS:
        lines = (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 30 and all(set(json.loads(line)) == {"instruction", "input", "output"} for line in lines)
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert f"data/{folder.name}/*" in pyproject["tool"]["setuptools"]["package-data"]["recycled_datasets"]


@pytest.mark.slow
def test_demo_shows_the_method_and_the_tiny_teacher(tmp_path):
    workdir = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "160"}
    args = [sys.executable, "-m", "recycled_datasets", "demo", "--workdir", str(workdir), "--rows", "1"]
    args += ["--max-new-tokens", "24", "--compare", "3", "--compare-original", "1", "--show", "2"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = result.stdout

    # Part 1: the subset holds the reference reflections the student chose (paper mode: res and both finals).
    folder = workdir / "reference" / "dataset"
    subset = datasets.load_dataset(str(folder), "smollm2-135m", split="train")
    assert subset.num_rows > 0 and set(subset["variant"]) <= {"res", "both"}
    assert f"-> {subset.num_rows} rows" in stdout
    for row in subset.select(range(2)):
        assert f"id {row['id']}" in stdout
    # rows where a reflection won and rows where the original was kept, each with the branch and its numbers
    assert "rows where the student took a reflection" in stdout
    assert "rows where the student kept the original" in stdout
    branches = re.findall(r"branch: IFD\(ins\) \d\.\d{3} (?:>|is not >) IFD\(ori\) \d\.\d{3}, .* -> (\w+);", stdout)
    assert len(branches) == 4 and "ori" in branches and set(branches) & {"both", "res"}, branches
    for label in ("instruction", "answer", "IFD", "r-IFD"):
        assert f"│ {label} " in stdout
    picture = re.search(r"picture of the selection .*: (\S+\.png)", stdout)
    assert picture and Path(picture.group(1)).is_file()

    # Part 2: the tiny teacher on one row, labelled as such, with each variant's status and its replies.
    assert "a tiny model as teacher" in stdout and "far too small" in stdout
    assert re.search(r"\b(used|refused \(\w)", stdout) and "reply: instruction reflection (ins)" in stdout
    assert re.search(r"this run: \d+ teacher calls", stdout)
    assert "srecycle demo: summary" in stdout and re.search(r"total .*│\s+\d+\.\d │", stdout)

    # A rerun reuses the stored answers (no teacher call) and every stage; the subset is the same.
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"rerun.*0 teacher calls", again.stdout)
    assert "(reused)" in again.stdout
    assert datasets.load_dataset(str(folder), "smollm2-135m", split="train")["id"] == subset["id"]
