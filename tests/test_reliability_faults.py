"""Teacher servers that misbehave, and teacher URLs that are wrong: every case ends in exit 0 with what failed
recorded, or in exit 2 with one line, never a traceback; and no answer is stored under a model that did not
give it, nor a credential anywhere it could be read.

The servers are ``teacher_server.TeacherServer`` in one fault mode each, on 127.0.0.1, bounded in requests
and in time.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from teacher_server import MODES, Faults, TeacherServer
from test_reliability import cli, one_line_error

ROW = {"instruction": "Name a primary colour.", "input": "", "output": "Red is a primary colour."}
MODEL = "fixture/teacher-7b"


def rows_file(tmp_path: Path, n: int = 1) -> Path:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({**ROW, "instruction": f"{ROW['instruction']} ({i})"}) + "\n" for i in range(n))
    )
    return rows


def stored(store: Path) -> list[tuple[str, str, object]]:
    """(teacher, status, text) of every stored answer."""
    with sqlite3.connect(store / "answers.sqlite") as db:
        return list(db.execute("SELECT teacher, status, text FROM answers"))


def reflect(capsys, tmp_path: Path, url: str, *extra: str | Path, rows: int = 1) -> tuple[int, str, str, Path]:
    out = tmp_path / "o.parquet"
    code, _, err = cli(
        capsys,
        "reflect",
        rows_file(tmp_path, rows),
        "--teacher",
        url,
        "--output",
        out,
        "--store",
        tmp_path / "store",
        "--max-retries",
        "1",
        *extra,
    )
    return code, err, out


# What each fault mode must end in: exit 2 and words of its one line, or exit 0 and the status of the variants.
EXPECTED = {
    "non_utf8": (2, "unusable answer body"),
    "content_not_str": (2, "unusable answer body"),
    "usage_str": (0, "ok"),
    "redirect_loop": (2, "redirect"),
    "bad_gzip": (2, "unusable answer body"),
    "surrogate": (0, "failed"),
    "trickle": (2, "no answer within 2 s"),
    "models_not_list": (2, "names no model"),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_fault_mode_ends_in_exit_0_with_failures_recorded_or_one_line(mode: str, tmp_path: Path, capsys):
    """Acceptance 2 / items 12 and 13: one attempt has one deadline, and no reply fault is a traceback."""
    assert set(EXPECTED) == set(MODES)
    faults = Faults(mode=mode, trickle=0.3, trickle_for=12.0)
    started = time.monotonic()
    with TeacherServer(faults=faults, tgi=mode != "models_not_list", max_requests=400) as server:
        code, err, out = reflect(capsys, tmp_path, server.v1, "--timeout", "2")
    took = time.monotonic() - started
    want_code, want = EXPECTED[mode]
    assert code == want_code, err
    if code == 2:
        assert want in one_line_error(err)
    else:
        assert "Traceback" not in err
        table = pl.read_parquet(out)
        assert {table[f"{v}_status"][0] for v in ("ins", "res")} == {want}, table.row(0, named=True)
    # Two attempts of at most 2 s each, and the wait between them: never the trickle's 12 s.
    assert took < 10, took
    answers = stored(tmp_path / "store") if (tmp_path / "store" / "answers.sqlite").exists() else []
    assert all(teacher == MODEL and (text is None or isinstance(text, str)) for teacher, _, text in answers)


def test_a_lone_surrogate_in_a_reply_is_recorded_as_failed_with_its_reason(tmp_path: Path, capsys):
    with TeacherServer(faults=Faults(mode="surrogate")) as server:
        code, err, out = reflect(capsys, tmp_path, server.v1, "--quiet")
    assert code == 0, err
    table = pl.read_parquet(out)
    assert table["res_status"][0] == "failed" and "not valid Unicode" in table["res_detail"][0]
    assert {status for _, status, _ in stored(tmp_path / "store")} == {"rejected"}


def test_usage_counts_that_are_not_numbers_are_ignored_not_summed(tmp_path: Path, capsys):
    with TeacherServer(faults=Faults(mode="usage_str")) as server:
        code, err, out = reflect(capsys, tmp_path, server.v1, "--quiet")
    assert code == 0, err
    assert pl.read_parquet(out)["ins_status"][0] == "ok"
    with sqlite3.connect(tmp_path / "store" / "answers.sqlite") as db:
        assert {row for row in db.execute("SELECT prompt_tokens, completion_tokens FROM answers")} == {(None, None)}


def test_a_server_that_switches_its_model_stops_the_run_and_nothing_is_misattributed(tmp_path: Path, capsys):
    """Item 6: a reply from another model stops the run; what the first model answered stays stored."""
    with TeacherServer(faults=Faults(switch_after=3), max_concurrent_requests=2) as server:
        # One request at a time, so that every answer the first model gave has arrived when the switch is seen.
        code, err, out = reflect(capsys, tmp_path, server.v1, "--concurrency", "1", rows=6)
        named = dict(server.named)
        line = one_line_error(err)
        assert code == 2 and "fixture/other-model-13b" in line and MODEL in line, line
        answers = stored(tmp_path / "store")
        assert answers and all(teacher == MODEL for teacher, _, _ in answers)
        # What the first model answered is kept, nothing of the second's.
        assert named[MODEL] == 3 and named["fixture/other-model-13b"] >= 1 and len(answers) == 3

        # A rerun against the switched server stops before sending anything, and the store is unchanged.
        time.sleep(0.5)  # a request the first run sent as it stopped may still be arriving
        server.reset_log()
        code, err, _ = reflect(capsys, tmp_path, server.v1, rows=6)
        assert code == 2 and "fixture/other-model-13b" in one_line_error(err)
        assert server.generation_requests() == 0
    assert stored(tmp_path / "store") == answers


def test_a_provider_that_answers_with_a_snapshot_name_is_the_same_model_until_it_changes(tmp_path: Path, capsys):
    """Asked for an alias, a provider names a dated snapshot in every reply: that is no switch; a later change is."""
    snapshot = MODEL + "-2024-08-06"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with TeacherServer(faults=Faults(answer_as=snapshot)) as server:
        code, err, _ = reflect(capsys, tmp_path / "a", server.v1, "--concurrency", "1", rows=2)
        assert code == 0, err
        assert dict(server.named) == {snapshot: 6}
    with TeacherServer(faults=Faults(answer_as=snapshot, switch_after=3), max_concurrent_requests=2) as server:
        code, err, _ = reflect(capsys, tmp_path / "b", server.v1, "--concurrency", "1", rows=6)
        assert code == 2 and "fixture/other-model-13b" in one_line_error(err), err


def test_credentials_in_a_teacher_url_are_sent_as_basic_auth_and_written_nowhere(tmp_path: Path, capsys, monkeypatch):
    """Item 11: masked in logs and the lock file; the answer store keeps the URL without them."""
    secret = "s3cret-pass-word"
    with TeacherServer(faults=Faults(burst_429=1)) as server:  # one retry: its warning line names the URL
        url = server.v1.replace("http://", f"http://alice:{secret}@")
        args = ["srecycle", "reflect", "rows.jsonl", "--teacher", url]
        monkeypatch.setattr(sys, "argv", args)
        code, err, out = reflect(capsys, tmp_path, url)
        authorizations = list(server.authorizations)
    assert code == 0, err
    assert "retrying in" in err and secret not in err and "alice" not in err
    expected = "Basic " + base64.b64encode(f"alice:{secret}".encode()).decode()
    assert authorizations and set(authorizations) == {expected}
    store = tmp_path / "store"
    for path in store.iterdir():
        assert secret.encode() not in path.read_bytes(), path
    lock = json.loads((store / ".srecycle.lock").read_text())
    assert secret not in lock["command"] and "***" in lock["command"]
    with sqlite3.connect(store / "answers.sqlite") as db:
        names = [name for (name,) in db.execute("SELECT name FROM meta WHERE name LIKE 'teacher:%'")]
    assert names and all(secret not in name and "alice" not in name for name in names)
    # A rerun with the same URL is served from the store, without a server.
    code, err, _ = reflect(capsys, tmp_path, url)
    assert code == 0, err


@pytest.mark.parametrize(
    "url",
    ["http://[::1", "http://127.0.0.1:99999/v1", "http://:8080/v1", "http://127.0.0.1:80a/v1", "http://exa mple/v1"],
)
def test_a_malformed_teacher_url_is_a_one_line_error(url: str, tmp_path: Path, capsys):
    """Item 14: a URL that cannot be a server's is refused before anything is asked or written."""
    code, err, out = reflect(capsys, tmp_path, url)
    line = one_line_error(err)
    assert code == 2 and "teacher URL" in line
    assert not out.exists()
