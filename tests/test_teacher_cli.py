"""``srecycle reflect`` end to end against the fixture server, including a kill -9 in the middle of a run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from teacher_server import Faults, TeacherServer, kill_once_stored, payload_content_key

from recycled_datasets.cli import main
from recycled_datasets.records import REFLECTION_COLUMNS, STATUS_OK
from recycled_datasets.teacher import AnswerStore

CLI = [sys.executable, "-c", "from recycled_datasets.cli import main; main()"]


def write_source(path: Path, n: int) -> Path:
    rows = [
        {
            "instruction": f"Write a short note about city number {i}.",
            "input": "" if i % 3 else f"City {i}",
            "output": f"Note {i}.",
        }
        for i in range(n)
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def reflect_args(src: Path, url: str, out: Path, store: Path, *extra: str) -> list[str]:
    return ["reflect", str(src), "--teacher", url, "--output", str(out), "--store", str(store), "--quiet", *extra]


def test_cli_writes_the_table_and_reports_retries(tmp_path, capsys):
    src = write_source(tmp_path / "src.json", 4)
    out = tmp_path / "work" / "reflections.parquet"
    with TeacherServer(faults=Faults(burst_429=3)) as srv:
        main(reflect_args(src, srv.url, out, tmp_path / "store", "--max-new-tokens", "256"))
        printed = capsys.readouterr().out
        table = pl.read_parquet(out)
        assert table.columns == list(REFLECTION_COLUMNS) and table.height == 4
        assert set(table["both_status"]) == {STATUS_OK}
        assert re.search(r"requests sent\W+15 \(3 retries: http_429 3\)", printed)  # 12 calls + 3 retries
        sidecar = json.loads(out.with_suffix(".json").read_text())
        assert sidecar["teacher"] == "fixture/teacher-7b" and sidecar["prompt_version"] == "srecycle-v1"
        assert sidecar["rows"] == 4

        main(reflect_args(src, srv.url, out, tmp_path / "store", "--max-new-tokens", "256", "--dry-run"))
        printed = capsys.readouterr().out
        assert re.search(r"calls to send\W+0\b", printed) and re.search(r"answers already stored\W+12\b", printed)
        assert srv.generation_requests() == 15  # the dry run sent nothing


def test_cli_refuses_bad_options_with_one_line(tmp_path, capsys):
    src = write_source(tmp_path / "src.json", 1)
    with pytest.raises(SystemExit) as exit_info:
        main(["reflect", str(src), "--teacher", "ftp://nowhere", "--output", str(tmp_path / "o.parquet")])
    assert exit_info.value.code == 2
    assert "must start with http:// or https://" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reflect", str(src), "--output", str(tmp_path / "o.csv")])
    assert "must end in .parquet" in capsys.readouterr().err


def test_kill_9_mid_run_then_rerun_gives_the_same_table_and_repeats_no_stored_request(tmp_path):
    src = write_source(tmp_path / "src.json", 12)
    env = {**os.environ, "SRECYCLE_QUIET": "1"}
    with TeacherServer(max_concurrent_requests=4, faults=Faults(latency=0.4)) as srv:
        # The reference: one uninterrupted run.
        reference = tmp_path / "reference.parquet"
        done = subprocess.run(
            CLI + reflect_args(src, srv.url, reference, tmp_path / "store-ref"),
            env=env,
            timeout=180,
            capture_output=True,
        )
        assert done.returncode == 0, done.stderr.decode()

        # The same run, killed with SIGKILL once some answers are stored and others are in flight.
        srv.reset_log()
        store, out = tmp_path / "store", tmp_path / "out.parquet"
        kill_once_stored(CLI + reflect_args(src, srv.url, out, store), store, 8, env=env)
        assert not out.exists()
        with AnswerStore.open(store) as answers:
            stored_before = {payload_content_key(request) for _, request in answers.requests()}
        assert 8 <= len(stored_before) < 36

        srv.reset_log()
        done = subprocess.run(CLI + reflect_args(src, srv.url, out, store), env=env, timeout=180, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()
        resent = [e.key for e in srv.events if e.key in stored_before]
        assert resent == []  # nothing stored was paid for again
        assert 0 < len(srv.events) <= 36 - len(stored_before) + 4  # the rest, plus at most the 4 in flight

    assert pl.read_parquet(out).equals(pl.read_parquet(reference))
