"""The quality gates in a build: counted in the summary, report.json and the card; no prompt text in the subset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from teacher_server import Faults, TeacherServer, realistic_reply

from recycled_datasets.cli import main
from recycled_datasets.records import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "recycled_datasets" / "data" / "sample.jsonl"
STUDENT = "smollm2-135m"
# What the prompts show around the example, written out here rather than taken from the code under test:
# the markers, the labels of the example's fields, and the step headings.
PROMPT_TEXT = re.compile(
    r"\[\s*(new instruction|new answer|better answer|end|instruction|input|answer)\s*\]"
    r"|step \d+, (critique|a new instruction|a new answer|a better answer)",
    re.I,
)
# The demo's row 3: a "better answer" that copies the prompt's layout.
LEAK = (
    '[Better Answer] "The answer is of the best quality." The response is fabricated, and the response is never '
    "going to be improved. The answer is below. [Instruction] {instruction} [Answer] {answer} [End]"
)


def leaky_reply(user_text: str, temperature: float) -> str:
    """Realistic replies, except that every better answer of an original row echoes the prompt's layout."""
    if "[Better Answer]" in user_text and "Explain in depth" not in user_text:
        instruction = re.search(r"\[Instruction\]\n(.*?)\n", user_text).group(1)
        return "Weak.\n" + LEAK.format(instruction=instruction, answer="Cold rain on the roof")
    return realistic_reply(user_text, temperature)


def leaks_in_kept_rows(workdir: Path) -> list[tuple[str, str]]:
    subset = pl.read_parquet(workdir / "students" / STUDENT / "subset.parquet")
    return [
        (r["id"], r["variant"])
        for r in subset.iter_rows(named=True)
        if r["variant"] != "ori" and PROMPT_TEXT.search(f"{r['instruction']}\n{r['input']}\n{r['output']}")
    ]


def test_a_leaking_teacher_is_caught_counted_and_kept_out_of_the_subset(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # summary rows on one line each
    workdir = tmp_path / "work"
    args = ["build", "--workdir", str(workdir), "--student", STUDENT, "--source", str(SAMPLE), "--limit", "3"]
    args += ["--keep-unreflected"]
    with TeacherServer(faults=Faults(reply=leaky_reply)) as server:
        main([*args, "--teacher", server.url])
        printed = capsys.readouterr().out
        calls = server.generation_requests()
        assert leaks_in_kept_rows(workdir) == []
        reflections = pl.read_parquet(workdir / "reflections.parquet")
        assert set(reflections["res_status"]) == {"fell_back"}
        assert all("[scaffold_leak]" in d for d in reflections["res_detail"])
        assert re.search(r"teacher text refused\W+scaffold_leak 3", printed)
        report = json.loads((workdir / "students" / STUDENT / "report.json").read_text())
        assert report["teacher_fallbacks"]["scaffold_leak"] == 3
        card = (workdir / "dataset" / "README.md").read_text()
        assert "`scaffold_leak` 3" in card and "scaffold_leak: 3" in card

        # The grep can fail: with that gate off (re-judged from the store, no teacher call) the leak is kept.
        main([*args, "--teacher", server.url, "--gate-off", "scaffold_leak"])
        assert server.generation_requests() == calls
        reflections = pl.read_parquet(workdir / "reflections.parquet")
        assert set(reflections["res_status"]) == {"ok"} and all(
            "[Instruction]" in o for o in reflections["res_output"]
        )
        assert "0 teacher calls" in capsys.readouterr().out


@pytest.mark.slow
def test_the_embedded_teacher_on_the_bundled_sample_leaves_no_prompt_text_in_the_subset(
    embedded_build: tuple[Path, str],
):
    workdir, printed = embedded_build
    assert "replies refused, per reason (attempts)" in printed and "teacher text refused" in printed
    report = json.loads((workdir / "students" / STUDENT / "report.json").read_text())
    reflections = pl.read_parquet(workdir / "reflections.parquet")
    fell_back = [
        r[f"{v}_detail"]
        for r in reflections.iter_rows(named=True)
        for v in VARIANTS[1:]
        if r[f"{v}_status"] == "fell_back"
    ]
    # Every fallback names its reason, and the report counts them.
    assert all(re.search(r"\[(scaffold_leak|echo|degenerate|cut_off|empty|unparsed)\]", d) for d in fell_back)
    assert bool(fell_back) == bool(report["teacher_fallbacks"])
    assert leaks_in_kept_rows(workdir) == []
