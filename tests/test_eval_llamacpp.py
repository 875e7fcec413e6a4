"""``srecycle judge`` against a real third-party server: llama-cpp-python serving the SmolLM2 GGUF as judge.

The server is the one the teacher's integration test starts (tests/test_teacher_llamacpp.py); the test skips,
saying why, when llama-cpp-python[server] or ../shared/data is missing. SmolLM2-135M is no real judge: the
test checks that every pair is judged in both orders through the server, each outcome counted (an unreadable
verdict as invalid), and that a rerun sends nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest
from test_teacher_llamacpp import llama_server, posts  # noqa: F401 - the fixture is used by name

from recycled_datasets.evaluation.judge import OUTCOMES
from recycled_datasets.evaluation.report import PAIRS_FILE, PLOT_FILE, RESULTS_FILE

CLI = [sys.executable, "-c", "from recycled_datasets.cli import main; main()"]
QUESTIONS = [
    ("What is the capital of France?", "The capital of France is Paris.", "France is a country."),
    ("Name two primary colors.", "Red and blue are primary colors.", "Green."),
    ("What is 12 times 3?", "12 times 3 is 36.", "It is 15."),
]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_judge_3_pairs_with_llama_cpp_then_rerun_sends_nothing(llama_server, tmp_path):  # noqa: F811
    url, log = llama_server
    files = {}
    for side, column in (("a", 1), ("b", 2)):
        rows = [{"test_set": "mini", "instruction": q[0], "output": q[column]} for q in QUESTIONS]
        files[side] = tmp_path / f"{side}.jsonl"
        files[side].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "eval"
    args = ["judge", str(files["a"]), str(files["b"]), "--judge", f"{url}/v1", "--output", str(out)]
    args += ["--max-new-tokens", "24", "--concurrency", "2", "-q"]
    env = {**os.environ, "SRECYCLE_QUIET": "1"}

    first = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    results = json.loads((out / RESULTS_FILE).read_text())
    pairs = pl.read_parquet(out / PAIRS_FILE)
    assert results["judge"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")  # the name the server reports
    assert pairs.height == 3 and sum(results["all"][o] for o in OUTCOMES) == 3
    assert pairs["review_a_first"].null_count() == 0 and pairs["review_b_first"].null_count() == 0
    sent = posts(log)
    asked_again = results["requests"]["unreadable_verdicts_asked_again"]
    assert sent == results["requests"]["sent"] == 6 + asked_again  # both orders of 3 pairs, plus retries
    assert (out / PLOT_FILE).is_file()

    again = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert posts(log) == sent  # every verdict came from the store
    assert pl.read_parquet(out / PAIRS_FILE).equals(pairs)
