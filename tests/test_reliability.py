"""What srecycle may delete, how it locks, what it verifies and what it refuses, as a user would notice it.

Every test starts from a way a user lost data or got a traceback: release folders that held the user's own
files, an output path equal to the input, two writers on one workdir, damaged stage files, invalid Unicode,
a finished run that still wanted its server, an empty subset, and options or teacher faults that were
accepted, retried in silence or echoed secrets.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
from hub_server import make_workdir
from teacher_server import Faults, TeacherServer, realistic_reply

from recycled_datasets.cli import main

ROOT = Path(__file__).resolve().parents[1]
STUDENT = "smollm2-135m"
ROW = {"instruction": "Name a primary colour.", "input": "", "output": "Red is a primary colour."}


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("srecycle: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def finished_workdir(root: Path, *, empty: bool = False) -> Path:
    """A workdir as build leaves it (every stage file written by the project's own writers), no model needed."""
    from recycled_datasets.models import resolve_student
    from recycled_datasets.scoring import ScoreConfig
    from recycled_datasets.stages import ReleaseStage, SelectStage
    from recycled_datasets.stages.score import student_record
    from recycled_datasets.workdir import Workdir
    from recycled_datasets.workdir.pairs import pairs_digest, pairs_of
    from recycled_datasets.workdir.tables import write_reflections, write_scores

    make_workdir(root, students=(STUDENT,), rows=30, empty=(STUDENT,) if empty else ())
    meta = json.loads((root / "reflections.json").read_text())
    reflections = pl.read_parquet(root / "reflections.parquet")
    wd = Workdir(root)
    write_reflections(wd, reflections, meta)
    settings = ScoreConfig()
    _, _, pairs = pairs_of(reflections)
    record = student_record(resolve_student(STUDENT), settings)
    scores = pl.read_parquet(wd.student(STUDENT).scores)
    write_scores(
        wd,
        STUDENT,
        scores,
        {"student": record, "max_length": 2048, "pairs": len(pairs), "pairs_sha256": pairs_digest(pairs)},
    )
    from recycled_datasets.selection import SelectionConfig

    SelectStage(wd, STUDENT, SelectionConfig(mode="paper" if empty else "keep-unreflected")).run()
    ReleaseStage(wd).run()
    return root


@pytest.fixture(scope="module")
def workdir_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_workdir(tmp_path_factory.mktemp("reliab") / "work")


@pytest.fixture
def wd(workdir_template: Path, tmp_path: Path) -> Path:
    """A private copy of a finished workdir that the test may damage."""
    return Path(shutil.copytree(workdir_template, tmp_path / "wd"))


# ---- 1. release folders: only what the project wrote ----------------------------------------------------
def test_push_to_dir_never_deletes_the_users_files(wd: Path, tmp_path: Path, capsys, monkeypatch):
    mine = tmp_path / "mine"
    (mine / "results").mkdir(parents=True)
    (mine / "README.md").write_text("# my project\n")
    (mine / "results" / "report.json").write_text('{"acc": 0.9}\n')
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", mine)
    assert code == 2 and "--force" in one_line_error(err)
    assert (mine / "README.md").read_text() == "# my project\n"
    assert (mine / "results" / "report.json").read_text() == '{"acc": 0.9}\n'

    # A sibling folder named like an old temporary folder is the user's: untouched.
    partial = tmp_path / "td" / ".rel.partial"
    partial.mkdir(parents=True)
    (partial / "keep.txt").write_text("mine")
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", tmp_path / "td" / "rel")
    assert code == 0, err
    assert (partial / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "td").iterdir()) == [".rel.partial", "rel"]  # no temporary left
    # Its own release is replaced on a rerun; a file the user added to it is not deleted.
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", tmp_path / "td" / "rel")
    assert code == 0, err
    (tmp_path / "td" / "rel" / "notes.txt").write_text("mine too")
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", tmp_path / "td" / "rel")
    assert code == 2 and "notes.txt" in one_line_error(err)
    assert (tmp_path / "td" / "rel" / "notes.txt").read_text() == "mine too"

    # A folder of empty folders is not empty.
    (tmp_path / "skeleton" / "a" / "b").mkdir(parents=True)
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", tmp_path / "skeleton")
    assert code == 2 and one_line_error(err)
    assert (tmp_path / "skeleton" / "a" / "b").is_dir()

    # The filesystem root and the home folder are never targets, not even with --force.
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for target in ("/", home):
        code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", target, "--force")
        assert code == 2 and "root or your home" in one_line_error(err)
    assert (home / "docs").is_dir()

    # --force is the one way past the check.
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", mine, "--force")
    assert code == 0, err
    assert not (mine / "results").exists() and (mine / STUDENT / "report.json").is_file()


# ---- 2. an output path equal to an input path ----------------------------------------------------------
def test_score_and_reflect_refuse_to_write_over_their_input(tmp_path: Path, capsys):
    rows = tmp_path / "rows.parquet"
    pl.DataFrame([ROW]).write_parquet(rows)
    before = rows.read_bytes()
    code, _, err = cli(capsys, "score", rows, "--output", rows, "--template", "alpaca")
    assert code == 2 and "input file itself" in one_line_error(err)
    with TeacherServer() as server:
        code, _, err = cli(capsys, "reflect", rows, "--teacher", server.url, "--output", rows, "--quiet")
        assert server.generation_requests() == 0
    assert code == 2 and "input file itself" in one_line_error(err)
    assert rows.read_bytes() == before


# ---- 3. one writer per workdir ---------------------------------------------------------------------------
def _state(workdir: Path) -> dict[str, bytes]:
    folder = workdir / "students" / STUDENT
    files = [folder / "subset.parquet", folder / "report.json"]
    files += sorted(p for p in (workdir / "dataset").rglob("*") if p.is_file())
    return {p.relative_to(workdir).as_posix(): p.read_bytes() for p in files}


def _spawn(*args: str | Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "recycled_datasets", *map(str, args), "--quiet"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_writers_on_one_workdir_never_mix(wd: Path):
    """select/select and build/select, 10 rounds each: the workdir always holds one whole run's output."""
    keep = ("select", "--workdir", wd, "--student", STUDENT, "--keep-unreflected")
    paper = ("select", "--workdir", wd, "--student", STUDENT)
    build_paper = ("build", "--workdir", wd, "--student", STUDENT)
    expected = []
    for args in (keep, paper):
        proc = _spawn(*args)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
        expected.append(_state(wd))
    assert expected[0] != expected[1]
    for first, second in [(keep, paper)] * 10 + [(build_paper, keep)] * 10:
        procs = [_spawn(*first), _spawn(*second)]
        codes = [p.wait(timeout=300) for p in procs]
        errors = [p.stderr.read() for p in procs]
        assert 0 in codes and set(codes) <= {0, 2}, errors
        for code, err in zip(codes, errors, strict=True):
            if code == 2:
                assert "in use by pid" in one_line_error(err), err
        assert _state(wd) in expected


def test_a_held_lock_names_its_holder_and_a_dead_holders_lock_is_taken_over(wd: Path, capsys):
    from recycled_datasets.locking import LOCK_NAME, locked

    with locked(wd, what="workdir"):
        code, _, err = cli(capsys, "select", "--workdir", wd, "--student", STUDENT)
        line = one_line_error(err)
        assert code == 2 and f"pid {os.getpid()}" in line and "since" in line
    # A killed holder leaves its lock file behind; the lock itself went with the process.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from recycled_datasets.locking import locked\n"
            f"with locked(__import__('pathlib').Path({str(wd)!r}), what='workdir'):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=30)
    assert (wd / LOCK_NAME).is_file()
    code, _, err = cli(capsys, "select", "--workdir", wd, "--student", STUDENT, "--quiet")
    assert code == 0, err


# ---- 4. damaged stage files ------------------------------------------------------------------------------
STAGE_FILES = {
    "reflections.parquet": "select",
    "reflections.json": "select",
    f"students/{STUDENT}/scores.parquet": "select",
    f"students/{STUDENT}/scores.json": "select",
    f"students/{STUDENT}/subset.parquet": "push",
    f"students/{STUDENT}/report.json": "push",
}


def _flip_middle(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - n // 2)
    for i in range(start, min(len(data), start + n)):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _read_with(command: str, wd: Path, tmp_path: Path) -> tuple[str, ...]:
    if command == "select":
        return ("select", "--workdir", wd, "--student", STUDENT, "--quiet")
    return ("push", "--repo", "org/x", "--workdir", wd, "--to-dir", tmp_path / "out", "--quiet")


@pytest.mark.parametrize("name", sorted(STAGE_FILES))
def test_flipped_bytes_in_a_stage_file_are_a_one_line_error_naming_it(name: str, wd: Path, tmp_path: Path, capsys):
    _flip_middle(wd / name)
    code, _, err = cli(capsys, *_read_with(STAGE_FILES[name], wd, tmp_path))
    line = one_line_error(err)
    assert code == 2 and str(wd / name) in line and "rerun `srecycle" in line


def test_truncated_or_replaced_stage_files_stop_select_and_build(workdir_template: Path, tmp_path: Path, capsys):
    wd = Path(shutil.copytree(workdir_template, tmp_path / "truncated"))
    reflections = wd / "reflections.parquet"
    with open(reflections, "r+b") as f:
        f.truncate(reflections.stat().st_size // 2)
    for args in (
        ("select", "--workdir", wd, "--student", STUDENT),
        ("build", "--workdir", wd, "--student", STUDENT),
    ):
        code, _, err = cli(capsys, *args)
        assert code == 2 and str(reflections) in one_line_error(err)
    wd = Path(shutil.copytree(workdir_template, tmp_path / "hello"))
    scores = wd / "students" / STUDENT / "scores.parquet"
    scores.write_bytes(b"hello")
    for args in (
        ("select", "--workdir", wd, "--student", STUDENT),
        ("build", "--workdir", wd, "--student", STUDENT),
    ):
        code, _, err = cli(capsys, *args)
        assert code == 2 and str(scores) in one_line_error(err)


def test_a_file_without_a_digest_is_still_checked_for_page_damage(wd: Path, capsys):
    scores = wd / "students" / STUDENT / "scores.parquet"
    # Written by an older version, say: no digest beside it, so only the parquet checks remain.
    (scores.parent / f".{scores.name}.sha256").unlink(missing_ok=True)
    with open(scores, "r+b") as f:
        f.truncate(scores.stat().st_size - 40)
    code, _, err = cli(capsys, "select", "--workdir", wd, "--student", STUDENT)
    assert code == 2 and str(scores) in one_line_error(err)


# ---- 5. invalid Unicode at the edge ----------------------------------------------------------------------
def test_a_lone_surrogate_is_a_row_error_and_skip_invalid_skips_it(tmp_path: Path, capsys):
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"instruction":"ab","output":"x\\ud800y"}\n')
    for args in (
        ("reflect", bad, "--output", tmp_path / "r.parquet", "--dry-run"),
        ("score", bad, "--output", tmp_path / "s.parquet"),
        ("build", "--source", bad, "--workdir", tmp_path / "w", "--teacher", "local"),
    ):
        code, _, err = cli(capsys, *args)
        line = one_line_error(err)
        assert code == 2 and "row 1" in line and "field 'output'" in line and "Unicode" in line
    mixed = tmp_path / "m.jsonl"
    mixed.write_text(json.dumps(ROW) + "\n" + '{"instruction":"ab\\udfff","output":"x"}\n')
    from recycled_datasets.sources import read_source

    data = read_source(mixed, skip_invalid=True)
    assert len(data.rows) == 1 and [(r.row, r.field) for r in data.invalid] == [(2, "instruction")]
    code, out, err = cli(capsys, "reflect", mixed, "--output", tmp_path / "r.parquet", "--dry-run", "--skip-invalid")
    assert code == 0, err


# ---- 6. a finished reflect needs no server ---------------------------------------------------------------
def test_a_rerun_whose_answers_are_all_stored_needs_no_server(tmp_path: Path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({**ROW, "instruction": f"{ROW['instruction']} ({i})"}) + "\n" for i in range(3))
    )
    out = tmp_path / "r.parquet"
    with TeacherServer() as server:
        code, _, err = cli(capsys, "reflect", rows, "--teacher", server.url, "--output", out, "--quiet")
        assert code == 0, err
        url = server.url
    first = pl.read_parquet(out)
    started = time.monotonic()
    code, _, err = cli(capsys, "reflect", rows, "--teacher", url, "--output", out, "--quiet")
    assert code == 0, err
    assert time.monotonic() - started < 60  # no wait for a health check that cannot succeed
    assert pl.read_parquet(out).equals(first)
    # One more row must be sent: now the server is needed (waited for, here 1 s), and its absence says so.
    from recycled_datasets.errors import TeacherError
    from recycled_datasets.records import assign_ids
    from recycled_datasets.teacher import ReflectConfig, reflect_rows

    config = ReflectConfig(teacher=url, store_dir=tmp_path / "teacher", client={"health_timeout": 1.0}, progress=False)
    with pytest.raises(TeacherError, match="not ready after"):
        reflect_rows(assign_ids([("A new row.", "", "Its answer.")]), config)


# ---- 7. an empty subset ----------------------------------------------------------------------------------
def test_an_empty_subset_says_it_is_empty_and_why(tmp_path: Path, capsys):
    wd = finished_workdir(tmp_path / "empty", empty=True)
    report = json.loads((wd / "students" / STUDENT / "report.json").read_text())
    assert report["rows_kept"] == 0
    code, _, err = cli(
        capsys, "finetune", "--dataset", wd / "dataset", "--config", STUDENT, "--output", tmp_path / "ckpt"
    )
    line = one_line_error(err)
    assert code == 2 and "is empty" in line and f"kept 0 of {report['rows_in']}" in line
    assert "dropped:" in line and not (tmp_path / "ckpt").exists()


# ---- 8. options and teacher faults ------------------------------------------------------------------------
def test_a_missing_local_looking_path_is_a_missing_file_at_once(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a request would only retry
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    started = time.monotonic()
    code, _, err = cli(capsys, "reflect", "in/nonexistent.jsonl", "--output", "o.parquet", "--dry-run")
    line = one_line_error(err)
    assert code == 2 and "no such file" in line and "load_dataset" not in line
    assert time.monotonic() - started < 10
    from recycled_datasets.sources import looks_like_hub_id

    assert looks_like_hub_id("tatsu-lab/alpaca")
    assert not looks_like_hub_id("in/nonexistent.jsonl") and not looks_like_hub_id("in/rows")
    assert not looks_like_hub_id("../x") and not looks_like_hub_id("a/b/c")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not looks_like_hub_id("tatsu-lab/alpaca")


def test_teacher_retries_are_visible_and_bounded(tmp_path: Path, capsys):
    from recycled_datasets.teacher import ReflectConfig
    from recycled_datasets.teacher.transport import RetryPolicy

    assert ReflectConfig().client.timeout == 300 and RetryPolicy().max_seconds == 1800
    readme = (ROOT / "README.md").read_text()
    assert "300 s" in readme and "30 minutes" in readme
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(ROW) + "\n")
    for faults, expected in (
        (Faults(p_malformed=1.0), "unusable answer body"),
        (Faults(p503=1.0), "HTTP 503"),
        (Faults(p_hang=1.0, hang=3.0), "no answer within 1 s"),
    ):
        with TeacherServer(faults=faults) as server:
            code, _, err = cli(
                capsys,
                "reflect",
                rows,
                "--teacher",
                server.url,
                "--output",
                tmp_path / "o.parquet",
                "--max-retries",
                "1",
                "--timeout",
                "1",
                "--store",
                tmp_path / f"store-{expected[:4]}",
            )
        assert code == 2 and "after 2 attempts" in one_line_error(err)
        # One line per retry, at the default verbosity: ins and res are sent at once (both waits for ins).
        retries = [line for line in err.splitlines() if "attempt 1 of 2, retrying in" in line]
        assert len(retries) == 2 and all(expected in line and line.startswith("WARNING") for line in retries), err


def test_a_reply_longer_than_its_budget_is_a_failure_with_a_reason(tmp_path: Path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(ROW) + "\n")
    # One 2 MB "word" first: the fixture server counts words as tokens, so it sends all of it as 1 token.
    huge = Faults(reply=lambda text, t: "x" * 2_000_000 + " " + realistic_reply(text, t))
    out = tmp_path / "o.parquet"
    with TeacherServer(faults=huge) as server:
        code, _, err = cli(
            capsys, "reflect", rows, "--teacher", server.url, "--output", out, "--max-new-tokens", "16", "--quiet"
        )
    assert code == 0, err
    table = pl.read_parquet(out)
    for variant in ("ins", "res"):
        assert table[f"{variant}_status"][0] == "failed"
        assert "characters, more than 16 tokens can hold" in table[f"{variant}_detail"][0]


class _EchoHandler(BaseHTTPRequestHandler):
    """A teacher that is healthy but answers every generation with an error body echoing the request's token."""

    def log_message(self, format: str, *args: object) -> None:
        return

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "fixture/echo", "object": "model"}]})
        else:
            self._send(200 if self.path == "/health" else 404, {})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._send(500, {"error": f"internal error for {self.headers.get('authorization')}"})


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up is no server error
            super().handle_error(request, client_address)


def test_secrets_are_masked_whatever_the_server_echoes(tmp_path: Path, capsys, monkeypatch):
    secret = "sk-teacher-0123456789"
    monkeypatch.setenv("SRECYCLE_TEACHER_TOKEN", secret)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(ROW) + "\n")
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        code, out, err = cli(
            capsys, "reflect", rows, "--teacher", url, "--output", tmp_path / "o.parquet", "--max-retries", "0"
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    line = one_line_error(err)
    assert code == 2 and "HTTP 500" in line and "Bearer ***" in line
    assert secret not in out + err


def test_options_are_validated_before_anything_is_written(wd: Path, tmp_path: Path, capsys):
    subset = wd / "students" / STUDENT / "subset.parquet"
    before = subset.read_bytes()
    code, _, err = cli(capsys, "build", "--workdir", wd, "--student", STUDENT, "--name", "")
    assert code == 2 and "not a valid config name" in one_line_error(err)
    assert subset.read_bytes() == before
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", tmp_path / "t", "--tag", "../x")
    assert code == 2 and "--tag" in one_line_error(err) and not (tmp_path / "t").exists()
    notamodel = tmp_path / "etc"
    (notamodel / "sub").mkdir(parents=True)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(ROW) + "\n")
    code, _, err = cli(capsys, "score", rows, "--output", tmp_path / "s.parquet", "--student", notamodel)
    assert code == 2 and "no config.json" in one_line_error(err)


def test_finetune_base_takes_a_students_table_key(workdir_template: Path, tmp_path: Path):
    pytest.importorskip("trl")
    from recycled_datasets.finetune import FinetuneConfig, build_trainer
    from recycled_datasets.models import resolve_student

    config = FinetuneConfig(
        dataset=str(workdir_template / "dataset"),
        config=STUDENT,
        output_dir=tmp_path / "ckpt",
        base_model=STUDENT,
        max_steps=1,
    )
    job = build_trainer(config)
    assert job.base_model == resolve_student(STUDENT).hub_id


# ---- generated malformed rows ----------------------------------------------------------------------------
def _value(rng: random.Random, depth: int = 0) -> object:
    """A field value as a careless export might hold it."""
    kind = rng.randrange(12)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([0, -7, 2**70, 3.5, float("1e308"), True, False])
    if kind == 2:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(3))] if depth < 3 else []
    if kind == 3:
        return {"instruction": _value(rng, depth + 1), "k": _value(rng, depth + 1)} if depth < 3 else {}
    if kind == 4:  # control characters
        return "".join(chr(rng.randrange(32)) for _ in range(rng.randrange(1, 20))) + "text"
    if kind == 5:  # a lone surrogate, high or low
        return f"before {chr(rng.choice([0xD800, 0xDBFF, 0xDC00, 0xDFFF]))} after"
    if kind == 6:  # a huge field
        return "word " * rng.randrange(5_000, 20_000)
    if kind == 7:
        return rng.choice(["", "   ", "\n\t", "N/A"])
    if kind == 8:
        return "emoji 🎉, combining e\u0301, RTL \u202e, NUL \x00, BOM \ufeff"
    return rng.choice(["Name a colour.", "Explain recursion briefly.", "Sum 2 and 3.", "It is five."])


def _record(rng: random.Random) -> object:
    kind = rng.randrange(10)
    if kind == 0:
        return rng.choice([42, "a string row", None, [1, 2], True])
    fields = {name: _value(rng) for name in ("instruction", "input", "output", "extra") if rng.random() < 0.8}
    if kind == 1:
        return {"data": fields}  # the reference authors' wrapped form
    if kind == 2:
        return {"instruction": "Say hello.", "output": "Hello."}  # a valid row now and then
    return fields


def test_generated_malformed_rows_never_end_in_a_traceback(tmp_path: Path, capsys):
    """220 generated rows in 11 files through reflect --dry-run (with and without --skip-invalid) and score."""
    rng = random.Random(20240211)
    files = []
    for n in range(11):
        lines = [json.dumps(_record(rng)) for _ in range(20)]
        if n == 10:
            lines[5] = '{"instruction": "cut off'  # a line that is not JSON at all
        path = tmp_path / f"rows{n}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
    codes = []
    for path in files:
        out = tmp_path / f"{path.stem}.parquet"
        for args in (
            ("reflect", path, "--output", out, "--dry-run", "--quiet"),
            ("reflect", path, "--output", out, "--dry-run", "--quiet", "--skip-invalid"),
            ("score", path, "--output", out, "--skip-invalid", "--max-length", "32", "--quiet"),
        ):
            code, _, err = cli(capsys, *args)
            assert code in (0, 2) and "Traceback" not in err, (args, err)
            if code == 2:
                one_line_error(err)
            elif args[0] == "score":
                assert pl.read_parquet(out).height > 0
            codes.append(code)
    assert 0 in codes and 2 in codes  # both outcomes were exercised
