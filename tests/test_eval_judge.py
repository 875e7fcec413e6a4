"""The pairwise judge: outcome rule, win score, verdict parsing, a scripted judge server, bad input.

The scripted judge is the teacher fixture server (tests/teacher_server.py) with a reply function that reads
which answer is shown first and returns the verdict this file's script gives for that question and order.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from teacher_server import (
    Faults,
    TeacherServer,
    kill_once_stored,
    one_line_cli_error,
    payload_content_key,
)

from recycled_datasets.cli import main
from recycled_datasets.evaluation.judge import (
    LOSS,
    TIE,
    WIN,
    adjusted_win_rate,
    judge_prompt,
    outcome,
    parse_verdict,
    win_score,
)
from recycled_datasets.evaluation.report import PAIRS_FILE, PLOT_FILE, RESULTS_FILE
from recycled_datasets.teacher import AnswerStore

CLI = [sys.executable, "-c", "from recycled_datasets.cli import main; main()"]


# ---- the outcome rule and the win score, by hand -------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        # (A, B) scores when A is shown first, then when B is shown first; higher / equal / lower for A
        ((8, 6), (7, 5), WIN),  # higher, higher
        ((8, 6), (6, 6), WIN),  # higher, equal
        ((8, 6), (5, 7), TIE),  # higher, lower: the orders disagree
        ((6, 6), (9, 2), WIN),  # equal, higher
        ((6, 6), (4, 4), TIE),  # equal, equal
        ((6, 6), (3, 4), LOSS),  # equal, lower
        ((5, 7), (8, 2), TIE),  # lower, higher
        ((5, 7), (7, 7), LOSS),  # lower, equal
        ((5, 7), (1, 10), LOSS),  # lower, lower
    ],
)
def test_outcome_rule_in_all_nine_combinations(first, second, expected):
    assert outcome(first, second) == expected


def test_pooled_win_score_of_a_hand_made_table():
    # set x: 3 wins, 1 tie, 1 loss; set y: 0 wins, 2 ties, 2 losses; pooled: 3 / 3 / 3
    assert win_score(3, 1, 1) == pytest.approx(2 / 5 + 1)  # 1.4
    assert win_score(0, 2, 2) == pytest.approx(-2 / 4 + 1)  # 0.5
    assert win_score(3, 3, 3) == pytest.approx(1.0)  # pooled over all 9 pairs, not the mean of 1.4 and 0.5
    assert adjusted_win_rate(3, 3, 3) == pytest.approx(0.5)
    assert win_score(5, 0, 0) == 2.0 and win_score(0, 0, 4) == 0.0
    assert win_score(0, 0, 0) is None  # nothing judged: no score, not a 1


@pytest.mark.parametrize(
    ("text", "scores"),
    [
        ("8 7\nAssistant 1 is more detailed.", (8, 7)),
        ("8, 7\n", (8, 7)),
        ("8/10 7/10\nbecause", (8, 7)),
        ("Assistant 1: 8  Assistant 2: 7\nwhy", (8, 7)),
        ("**Assistant 1: 9 / 10, Assistant 2: 6.5 / 10**", (9, 6.5)),
        ("7.5 8.0\n", (7.5, 8.0)),
        ("\n\n  6 6  \nsame", (6, 6)),
        ("Scores: 9 and 4.\n", (9, 4)),
    ],
)
def test_verdicts_in_the_forms_judges_write(text, scores):
    assert parse_verdict(text) == scores


@pytest.mark.parametrize(
    "text",
    ["", "Both answers are helpful.", "Score: 8", "8 7 6", "0 11\n", "Assistant 2 is better: 4 vs 9 for me\n8 7"],
)
def test_unreadable_verdicts(text):
    assert parse_verdict(text) is None


def test_the_judge_prompt_shows_both_answers_in_labelled_blocks():
    prompt = judge_prompt("Why is the sky blue?", "Rayleigh scattering.", "Because.")
    assert "Why is the sky blue?" in prompt
    assert prompt.index("Assistant 1's Answer]\nRayleigh scattering.") < prompt.index(
        "Assistant 2's Answer]\nBecause."
    )
    assert "1 to 10" in prompt and "first line" in prompt


# ---- the scripted judge server -------------------------------------------------------------------------------

UNREADABLE = "Both answers have merits and flaws."
# question -> (reply with A shown first, reply with B shown first); a pair of replies means (greedy, the retry)
SCRIPT = {
    "vicuna": [
        ("8 6", "6 8", WIN),
        ("8/10 7/10", "7 7", WIN),
        ("5 5", "5 5", TIE),
        ("7 8", "9, 4", LOSS),
        ("Assistant 1: 8  Assistant 2: 7", "Assistant 1: 8 Assistant 2: 7", TIE),
        ("6.5 7.5", "7 7", LOSS),
    ],
    "koala": [
        ((UNREADABLE, "9 3"), "3 9", WIN),
        ((UNREADABLE, UNREADABLE), "3 9", "invalid"),
        ("4 4", "8 2", LOSS),
        ("10 1", "1 10", WIN),
        ("2 3", "2 3", TIE),
        ("7 7", "7 7", TIE),
    ],
}
EXPECTED = {
    "vicuna": {"win": 2, "tie": 2, "loss": 2, "invalid": 0, "win_score": 1.0, "inconsistent": 3 / 6},
    "koala": {"win": 2, "tie": 2, "loss": 1, "invalid": 1, "win_score": 1.2, "inconsistent": 2 / 5},
    "all": {"win": 4, "tie": 4, "loss": 3, "invalid": 1, "win_score": 1 / 11 + 1, "inconsistent": 5 / 11},
}
DISTINCT_REQUESTS = 24 + 2  # both orders of 12 pairs, plus one retry for each of the two unreadable first asks


def question(test_set: str, i: int) -> str:
    return f"Question {i} of {test_set}: explain topic {i}."


def scripted_reply(user_text: str, temperature: float) -> str:
    q = re.search(r"\[Question\]\n(.*?)\n\n", user_text, re.S).group(1)
    first = re.search(r"Assistant 1's Answer\]\n(.*?)\n\[The End", user_text, re.S).group(1)
    test_set, i = re.match(r"Question (\d+) of (\w+)", q).group(2, 1)
    a_first, b_first, _ = SCRIPT[test_set][int(i)]
    reply = a_first if first.startswith("Answer of A") else b_first
    if isinstance(reply, tuple):
        reply = reply[1] if temperature > 0 else reply[0]
    return f"{reply}\nThe explanation of the scores."


def write_answers(tmp_path: Path) -> tuple[Path, Path]:
    a, b = [], []
    for test_set, rows in SCRIPT.items():
        for i in range(len(rows)):
            a.append({"test_set": test_set, "instruction": question(test_set, i), "output": f"Answer of A to {i}."})
            b.append(
                {"test_set": test_set, "instruction": question(test_set, i), "output": f"Answer of B, {i}, long."}
            )
    a.append({"test_set": "koala", "instruction": "A question only A answered.", "output": "Answer of A alone."})
    pa, pb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    pa.write_text("".join(json.dumps(r) + "\n" for r in a), encoding="utf-8")
    pb.write_text("".join(json.dumps(r) + "\n" for r in b), encoding="utf-8")
    return pa, pb


def judge_args(a: Path, b: Path, url: str, out: Path, *extra: str) -> list[str]:
    return ["judge", str(a), str(b), "--judge", url, "--output", str(out), "--backoff-base", "0.05", "-q", *extra]


def check_report(out: Path) -> dict:
    results = json.loads((out / RESULTS_FILE).read_text())
    for name, expected in EXPECTED.items():
        got = results["all"] if name == "all" else results["test_sets"][name]
        for key, value in expected.items():
            assert got[key] == pytest.approx(value), (name, key, got)
    assert set(results["test_sets"]) == {"vicuna", "koala"}
    assert results["unpaired"] == {"a": [{"test_set": "koala", "instruction": "A question only A answered."}], "b": []}
    pairs = pl.read_parquet(out / PAIRS_FILE)
    assert pairs.height == 12
    for test_set, rows in SCRIPT.items():
        for i, (_, _, expected) in enumerate(rows):
            row = pairs.filter((pl.col("test_set") == test_set) & (pl.col("instruction") == question(test_set, i)))
            assert row["outcome"].to_list() == [expected], (test_set, i)
    invalid = pairs.filter(pl.col("outcome") == "invalid")
    assert invalid["attempts_a_first"].to_list() == [2] and invalid["score_a_first_a"].to_list() == [None]
    # the scores of the B-first order are stored from A's side: question 0 of vicuna said "6 8" with B first
    q0 = pairs.filter(pl.col("instruction") == question("vicuna", 0))
    assert q0.select("score_a_first_a", "score_a_first_b", "score_b_first_a", "score_b_first_b").row(0) == (8, 6, 8, 6)
    assert (out / PLOT_FILE).stat().st_size > 1000
    return results


def test_scripted_judge_with_429s_counts_what_the_script_says(tmp_path, capsys):
    a, b = write_answers(tmp_path)
    out = tmp_path / "eval"
    with TeacherServer(model="fixture/judge-70b", faults=Faults(burst_429=3, reply=scripted_reply)) as srv:
        main(judge_args(a, b, srv.v1, out)[:-1])  # not quiet: the table is printed
        printed = capsys.readouterr().out
        results = check_report(out)
        assert results["judge"] == "fixture/judge-70b"
        assert results["requests"]["sent"] == DISTINCT_REQUESTS + 3 and results["requests"]["retries"] == 3
        assert results["requests"]["unreadable_verdicts_asked_again"] == 2
        assert srv.outcomes() == {"ok": DISTINCT_REQUESTS, "429": 3}
        assert re.search(r"koala\W+2\W+2\W+1\W+1\W+1\.200", printed), printed
        assert re.search(r"all\W+4\W+4\W+3\W+1\W+1\.091", printed), printed
        assert "1 answers of A, 0 of B" in printed

        # The same judgement again: every verdict comes from the store.
        srv.reset_log()
        main(judge_args(a, b, srv.v1, out))
        assert srv.generation_requests() == 0
        assert json.loads((out / RESULTS_FILE).read_text())["requests"]["from_store"] == DISTINCT_REQUESTS


def test_kill_9_halfway_then_the_rerun_resends_nothing_stored(tmp_path):
    a, b = write_answers(tmp_path)
    out = tmp_path / "eval"
    env = {**os.environ, "SRECYCLE_QUIET": "1"}
    faults = Faults(p429=0.2, latency=0.3, reply=scripted_reply, seed=3)
    with TeacherServer(model="fixture/judge-70b", max_concurrent_requests=2, faults=faults) as srv:
        kill_once_stored(CLI + judge_args(a, b, srv.v1, out), out / "judge", DISTINCT_REQUESTS // 2, env=env)
        assert not (out / RESULTS_FILE).exists()
        with AnswerStore.open(out / "judge") as store:
            stored = {payload_content_key(request) for _, request in store.requests()}
        assert DISTINCT_REQUESTS // 2 <= len(stored) < DISTINCT_REQUESTS

        srv.reset_log()
        done = subprocess.run(CLI + judge_args(a, b, srv.v1, out), env=env, timeout=180, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()
        assert [e.key for e in srv.events if e.key in stored] == []  # no stored verdict was asked for again
        answered = srv.answered()
        assert sum(answered.values()) == DISTINCT_REQUESTS - len(stored)  # exactly the rest, each once
        assert max(answered.values()) == 1
    check_report(out)


# ---- bad input -----------------------------------------------------------------------------------------------


def test_bad_answer_files_are_one_line_errors(tmp_path, capsys):
    a, b = write_answers(tmp_path)
    judge = ["--judge", "http://127.0.0.1:9/v1", "--output", str(tmp_path / "eval")]  # never reached

    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"test_set": "lima", "instruction": "Something else.", "output": "x"}) + "\n")
    err = one_line_cli_error(capsys, ["judge", str(a), str(other), *judge])
    assert "share no question" in err

    no_output = tmp_path / "no_output.jsonl"
    no_output.write_text(json.dumps({"test_set": "vicuna", "instruction": question("vicuna", 0)}) + "\n")
    err = one_line_cli_error(capsys, ["judge", str(a), str(no_output), *judge])
    assert "no_output.jsonl, row 1, field 'output': missing column" in err

    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    err = one_line_cli_error(capsys, ["judge", str(empty), str(b), *judge])
    assert "empty.parquet: the file is empty" in err

    err = one_line_cli_error(capsys, ["judge", str(a), str(b), *judge, "--test-sets", "wizardlm"])
    assert "wizardlm" in err
    assert not (tmp_path / "eval" / RESULTS_FILE).exists()
