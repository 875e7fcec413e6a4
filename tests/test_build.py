"""``srecycle build`` / ``select`` / ``import-reflections`` end to end, with the embedded student.

The teacher of the fast tests is a small OpenAI-compatible server on 127.0.0.1 started by the tests: it
answers every reflection request in the markers' format and counts the requests it gets, so a test can
prove that a second student costs no teacher call. The embedded SmolLM2 teacher runs in the slow tests.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from recycled_datasets.cli import main
from recycled_datasets.locking import LOCK_NAME
from recycled_datasets.records import (
    CHAT_COLUMNS,
    REFLECTION_COLUMNS,
    RELEASE_SUBSET_COLUMNS,
    SUBSET_COLUMNS,
    VARIANTS,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "recycled_datasets" / "data" / "sample.jsonl"
FIXTURE = Path(__file__).parent / "fixtures" / "reference"
STUDENT = "smollm2-135m"
TEACHER_MODEL = "fixture/reflector"
UNREACHABLE = "http://127.0.0.1:9"


class _Handler(BaseHTTPRequestHandler):
    server: _TeacherServer

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        return

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.count(self.path)
        if self.path == "/health":
            self._json({})
        elif self.path == "/info":
            self._json({"model_id": TEACHER_MODEL, "max_concurrent_requests": 4})
        elif self.path == "/v1/models":
            self._json({"object": "list", "data": [{"id": TEACHER_MODEL, "object": "model"}]})
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        self.server.count(self.path)
        length = int(self.headers.get("content-length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        prompt = request["messages"][-1]["content"]
        self._json(
            {
                "id": "fixture",
                "object": "chat.completion",
                "created": 0,
                "model": TEACHER_MODEL,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": reply(prompt)}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": 40, "total_tokens": 0},
            }
        )


def reply(prompt: str) -> str:
    """A well-formed reflection whose text depends on the prompt only (so reruns get the same answers)."""
    tag = hashlib.sha256(prompt.encode()).hexdigest()[:6]
    if "[Better Answer]" in prompt:
        return (
            "The answer is too short and gives no reasons.\n[Better Answer]\nA fuller answer: state the result, "
            f"then explain each step that leads to it, and finish with a short example (note {tag}).\n[End]"
        )
    return (
        "The instruction is vague and the answer is thin.\n[New Instruction]\nExplain, step by step and with "
        f"one worked example, how to solve the task labelled {tag}.\n[End]\n[New Answer]\nFirst restate the "
        f"task {tag}. Then solve it in small steps, checking each one, and close with the worked example.\n[End]"
    )


class _TeacherServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}

    def count(self, path: str) -> None:
        with self.lock:
            self.requests[path] = self.requests.get(path, 0) + 1

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.requests.values())

    @property
    def completions(self) -> int:
        with self.lock:
            return sum(n for p, n in self.requests.items() if p.endswith("/chat/completions"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def teacher() -> Iterator[_TeacherServer]:
    server = _TeacherServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def srecycle(*args: str | Path) -> None:
    """Run the CLI in this process (the student model stays loaded between builds)."""
    main([str(a) for a in args])


def build(workdir: Path, *extra: str | Path, teacher: str | None = None, rows: int = 4) -> None:
    args: list[str | Path] = ["build", "--workdir", workdir, "--student", STUDENT, "--quiet"]
    args += ["--source", SAMPLE, "--limit", str(rows)] if rows else []
    args += ["--teacher", teacher] if teacher else []
    srecycle(*args, *extra)


def outputs(workdir: Path) -> dict[str, bytes]:
    """Every output file of a workdir (not the caches: teacher store, scoring checkpoints)."""
    return {
        p.relative_to(workdir).as_posix(): p.read_bytes()
        for p in sorted(workdir.rglob("*"))
        if p.is_file()
        and p.name != LOCK_NAME  # who holds the workdir, not an output
        and not {"teacher", "scores.parquet.parts"} & set(p.relative_to(workdir).parts)
    }


@pytest.fixture(scope="module")
def workdir(teacher: _TeacherServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workdir built for the embedded student from 4 sample rows with the fixture teacher.

    Built with --keep-unreflected so that the subset is never empty; paper mode is checked by re-selecting.
    """
    path = tmp_path_factory.mktemp("build") / "work"
    build(path, "--keep-unreflected", teacher=teacher.url)
    return path


class TeacherCalls:
    """Counts every way into the teacher stage: reflect, identity, client construction, HTTP start."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        import recycled_datasets.teacher as teacher_pkg
        from recycled_datasets.teacher import client, local, stage

        self.calls: list[str] = []
        for owner, name in (
            (teacher_pkg, "reflect_rows"),
            (teacher_pkg, "teacher_identity"),
            (stage, "reflect_rows"),
            (stage, "teacher_identity"),
            (stage, "make_teacher"),
            (client.HttpTeacher, "start"),
            (local.LocalTeacher, "__init__"),
        ):
            monkeypatch.setattr(owner, name, self._counted(f"{getattr(owner, '__name__', owner)}.{name}", owner, name))

    def _counted(self, label: str, owner: object, name: str):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            self.calls.append(label)
            return original(*args, **kwargs)

        return wrapper


def test_build_writes_reflections_scores_subset_and_report(workdir: Path, teacher: _TeacherServer):
    # 4 rows x 3 calls (ins, res, both), every reply usable: no retries
    assert teacher.completions == 12
    reflections = pl.read_parquet(workdir / "reflections.parquet")
    assert reflections.columns == list(REFLECTION_COLUMNS)
    assert reflections.height == 4
    assert set(reflections["ins_status"]) == {"ok"}
    assert reflections["ins_instruction"][0].startswith("Explain, step by step")
    meta = json.loads((workdir / "reflections.json").read_text())
    assert meta["teacher"] == TEACHER_MODEL and meta["rows"] == 4 and meta["prompt_version"]

    folder = workdir / "students" / STUDENT
    scores = pl.read_parquet(folder / "scores.parquet")
    assert scores.height == 16
    assert scores.select("id", "variant").rows() == [(i, v) for i in reflections["id"] for v in VARIANTS]
    subset = pl.read_parquet(folder / "subset.parquet")
    assert subset.columns == list(SUBSET_COLUMNS)
    report = json.loads((folder / "report.json").read_text())
    assert report["rows_in"] == 4 and report["rows_kept"] == subset.height
    assert sum(report["branches"].values()) == 4
    assert report["rows_kept"] + sum(report["drops"].values()) == 4
    assert report["student"]["key"] == STUDENT and report["teacher"] == TEACHER_MODEL
    assert report["mode"] == "keep-unreflected"
    assert (subset["student"] == STUDENT).all() and (subset["teacher"] == TEACHER_MODEL).all()


def test_load_dataset_on_the_release_tree_returns_the_subset(workdir: Path):
    import datasets

    subset = pl.read_parquet(workdir / "students" / STUDENT / "subset.parquet")
    assert subset.height > 0
    loaded = datasets.load_dataset(str(workdir / "dataset"), STUDENT, split="train")
    assert loaded.column_names == list(RELEASE_SUBSET_COLUMNS)
    assert loaded.remove_columns(list(CHAT_COLUMNS)).to_list() == subset.to_dicts()
    reflections = datasets.load_dataset(str(workdir / "dataset"), "reflections", split="train")
    assert reflections.num_rows == 16


def test_second_student_makes_zero_teacher_calls(workdir: Path, monkeypatch: pytest.MonkeyPatch):
    """Another student (another template) on 2 of the 4 rows, with nothing listening at the teacher URL."""
    import datasets

    reflections = (workdir / "reflections.parquet").read_bytes()
    calls = TeacherCalls(monkeypatch)
    build(workdir, "--name", "other", "--template", "alpaca", "--keep-unreflected", teacher=UNREACHABLE, rows=2)
    assert calls.calls == []
    # a smaller build keeps every reflection of the workdir for later students
    assert (workdir / "reflections.parquet").read_bytes() == reflections

    other = pl.read_parquet(workdir / "students" / "other" / "subset.parquet")
    report = json.loads((workdir / "students" / "other" / "report.json").read_text())
    assert report["student"]["template"] == "alpaca" and report["teacher"] == TEACHER_MODEL
    assert report["student"]["scoring"] == "reference"  # single-turn alpaca rows: the reference layout
    assert report["rows_in"] == 2 and other.height > 0
    # another template gives other scores for the same variants
    a = pl.read_parquet(workdir / "students" / STUDENT / "scores.parquet").head(8)
    b = pl.read_parquet(workdir / "students" / "other" / "scores.parquet")
    assert a.select("id", "variant").equals(b.select("id", "variant"))
    assert not a["ifd"].equals(b["ifd"])
    # the release tree now holds both students
    readme = (workdir / "dataset" / "README.md").read_text()
    assert "config_name: other" in readme and f"config_name: {STUDENT}" in readme
    loaded = datasets.load_dataset(str(workdir / "dataset"), "other", split="train")
    assert loaded.remove_columns(list(CHAT_COLUMNS)).to_list() == other.to_dicts()


def test_rebuild_reuses_scores_and_gives_the_same_files(
    workdir: Path, teacher: _TeacherServer, monkeypatch: pytest.MonkeyPatch
):
    import recycled_datasets.scoring as scoring

    before = outputs(workdir)
    requests = teacher.total

    def no_scoring(*args, **kwargs):
        raise AssertionError("the scores were cached; nothing should be scored again")

    monkeypatch.setattr(scoring, "score_pairs", no_scoring)
    calls = TeacherCalls(monkeypatch)
    # The teacher is up and reachable, and still gets no request, not even /health.
    build(workdir, "--keep-unreflected", teacher=teacher.url)
    assert calls.calls == []
    assert teacher.total == requests
    assert outputs(workdir) == before


def test_select_recuts_the_subset_from_cached_scores(workdir: Path, monkeypatch: pytest.MonkeyPatch):
    import recycled_datasets.scoring as scoring

    monkeypatch.setattr(scoring, "score_pairs", lambda *a, **k: pytest.fail("select must not score"))
    folder = workdir / "students" / STUDENT
    keep = json.loads((folder / "report.json").read_text())
    highest_ifd = pl.read_parquet(folder / "subset.parquet")["ifd"].max()
    srecycle("select", "--workdir", workdir, "--student", STUDENT, "--quiet")
    paper = json.loads((folder / "report.json").read_text())
    subset = pl.read_parquet(folder / "subset.parquet")
    assert paper["mode"] == "paper" and paper["branches"] == keep["branches"]
    assert set(subset["variant"]) <= {"both", "res"} and subset.height == paper["rows_kept"]
    paper_drops = paper["drops"].get("paper_mode_ins_final", 0) + paper["drops"].get("paper_mode_ori_final", 0)
    assert keep["rows_kept"] == paper["rows_kept"] + paper_drops
    srecycle("select", "--workdir", workdir, "--student", STUDENT, "--top-k", "1", "--keep-unreflected", "-q")
    top = json.loads((folder / "report.json").read_text())
    assert top["top"] == {"k": 1} and top["rows_kept"] == 1
    assert pl.read_parquet(folder / "subset.parquet")["ifd"].to_list() == [highest_ifd]
    srecycle("select", "--workdir", workdir, "--student", STUDENT, "--keep-unreflected", "--quiet")  # as built
    assert json.loads((folder / "report.json").read_text()) == keep


def test_a_change_of_scoring_convention_rescores_and_never_mixes_two(workdir: Path):
    """The alpaca student 'other' was scored with the reference layout (the default for single-turn alpaca rows);
    asking for split scores every pair again, and the table and its records name split alone."""
    folder = workdir / "students" / "other"
    before = pl.read_parquet(folder / "scores.parquet")
    assert json.loads((folder / "scores.json").read_text())["student"]["scoring"] == "reference"
    build(workdir, "--name", "other", "--template", "alpaca", "--scoring", "split", "--keep-unreflected",
          teacher=UNREACHABLE, rows=2)  # fmt: skip
    after = pl.read_parquet(folder / "scores.parquet")
    assert json.loads((folder / "scores.json").read_text())["student"]["scoring"] == "split"
    assert json.loads((folder / "report.json").read_text())["student"]["scoring"] == "split"
    assert after.select("id", "variant").equals(before.select("id", "variant"))
    # every pair was scored again: the split layout tokenizes prompt and target apart (and opens with BOS)
    assert all(a != b for a, b in zip(after["loss_response_cond"], before["loss_response_cond"], strict=True))


def test_a_reserved_config_name_is_refused_before_any_work(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        build(tmp_path / "w", "--name", "reflections", teacher=UNREACHABLE)
    assert exc.value.code == 2
    assert "--name KEY" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_two_builds_from_scratch_give_byte_identical_files(teacher: _TeacherServer, tmp_path: Path):
    first, second = tmp_path / "one", tmp_path / "two"
    build(first, teacher=teacher.url, rows=2)
    build(second, teacher=teacher.url, rows=2)
    a, b = outputs(first), outputs(second)
    assert sorted(a) == sorted(b)
    assert "students/smollm2-135m/subset.parquet" in a and "dataset/README.md" in a
    assert [name for name in a if a[name] != b[name]] == []


def test_import_reflections_yields_the_reference_variants(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    workdir = tmp_path / "ref"
    srecycle("import-reflections", FIXTURE, "--workdir", workdir, "--quiet")
    frame = pl.read_parquet(workdir / "reflections.parquet")
    meta = json.loads((workdir / "reflections.json").read_text())
    assert meta["teacher"] == f"reference:{FIXTURE}" and meta["prompt_version"] == "reference"
    assert meta["rows"] == 3
    splits = {"ori": "origin", "ins": "reflect_instruction", "res": "reflect_response", "both": "reflect_both"}
    for variant, split in splits.items():
        path = next(FIXTURE.glob(f"{split}.json*"))
        text = path.read_text()
        rows = [json.loads(line) for line in text.splitlines()] if path.suffix == ".jsonl" else json.loads(text)
        expected = [(r["data"]["instruction"], r["data"]["input"], r["data"]["output"]) for r in rows]
        got = frame.select(f"{variant}_instruction", f"{variant}_input", f"{variant}_output").rows()
        assert got == expected, variant

    # a student builds on the imported variants with no source and no teacher at all
    calls = TeacherCalls(monkeypatch)
    srecycle("build", "--workdir", workdir, "--student", STUDENT, "--keep-unreflected", "--quiet")
    assert calls.calls == []
    subset = pl.read_parquet(workdir / "students" / STUDENT / "subset.parquet")
    by_id = {r["id"]: r for r in frame.iter_rows(named=True)}
    for row in subset.iter_rows(named=True):
        source = by_id[row["id"]]
        assert row["output"] == source[f"{row['variant']}_output"]
        assert row["teacher"] == meta["teacher"]

    # rows the reference set lacks cannot be added by another teacher into the same workdir
    with pytest.raises(SystemExit) as exc:
        build(workdir, teacher=UNREACHABLE, rows=2)
    assert exc.value.code == 2
    assert "reference authors' reflections" in capsys.readouterr().err


def test_import_reflections_refuses_a_folder_without_all_four_splits(tmp_path: Path, capsys):
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "origin.json").write_text((FIXTURE / "origin.json").read_text())
    with pytest.raises(SystemExit) as exc:
        srecycle("import-reflections", folder, "--workdir", tmp_path / "w", "--quiet")
    assert exc.value.code == 2
    assert "reflect_instruction" in capsys.readouterr().err


def test_build_without_a_teacher_says_which_option_is_missing(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        build(tmp_path / "w")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "4 of 4 rows have no reflections" in err and "--teacher" in err


def test_public_source_without_network_points_to_a_local_file(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    import datasets.config
    import huggingface_hub.constants

    # no network in tests: make datasets fail at once, as it does on a machine without network
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    with pytest.raises(SystemExit) as exc:
        srecycle("build", "--workdir", tmp_path / "w", "--source", "alpaca", "--teacher", UNREACHABLE, "-q")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "tatsu-lab/alpaca" in err and "--source PATH" in err


@pytest.mark.slow
def test_build_with_the_embedded_teacher(embedded_build: tuple[Path, str]):
    """The local SmolLM2 teacher end to end on 3 sample rows (the shared build; slow: generation on CPU).

    With so small a budget the 135M teacher rarely closes its sections, so most variants fall back to the
    originals and paper mode would keep nothing: the build keeps the ori finals (--keep-unreflected).
    """
    import datasets

    workdir, _ = embedded_build
    meta = json.loads((workdir / "reflections.json").read_text())
    assert meta["teacher"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["rows"] == 3
    subset = pl.read_parquet(workdir / "students" / STUDENT / "subset.parquet")
    assert subset.height > 0
    loaded = datasets.load_dataset(str(workdir / "dataset"), STUDENT, split="train")
    assert loaded.remove_columns(list(CHAT_COLUMNS)).to_list() == subset.to_dicts()


@pytest.mark.slow
@pytest.mark.timeout(5400)
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (the real Alpaca rows) is not here")
def test_acceptance_30_real_alpaca_rows_with_the_embedded_teacher_and_student(tmp_path: Path):
    """Acceptance 1: 30 real Alpaca rows, embedded teacher and student; load_dataset returns the subset.

    About 15 minutes on 2 shared CPU cores. Built with --keep-unreflected (see the test above), then cut
    again in paper mode from the cached scores.
    """
    import subprocess
    import sys

    import datasets

    source = SHARED_DATA / "alpaca" / "alpaca_cherry_5pct.json"
    workdir = tmp_path / "alpaca30"
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "recycled_datasets", "build", "--source", str(source), "--limit", "30"]
        + ["--student", STUDENT, "--teacher", "local", "--max-new-tokens", "64", "--workdir", str(workdir)]
        + ["--keep-unreflected", "-q"],
        check=True,
    )
    print(f"acceptance build of 30 rows took {time.monotonic() - started:.0f} s")
    assert pl.read_parquet(workdir / "reflections.parquet").height == 30
    assert json.loads((workdir / "reflections.json").read_text())["rows"] == 30
    folder = workdir / "students" / STUDENT
    keep = json.loads((folder / "report.json").read_text())
    assert keep["rows_in"] == 30 and sum(keep["branches"].values()) == 30
    subset = pl.read_parquet(folder / "subset.parquet")
    assert subset.height == keep["rows_kept"] > 0
    loaded = datasets.load_dataset(str(workdir / "dataset"), STUDENT, split="train")
    assert loaded.remove_columns(list(CHAT_COLUMNS)).to_list() == subset.to_dicts()

    srecycle("select", "--workdir", workdir, "--student", STUDENT, "--quiet")
    paper = json.loads((folder / "report.json").read_text())
    assert paper["mode"] == "paper" and paper["branches"] == keep["branches"]
    dropped = paper["drops"].get("paper_mode_ins_final", 0) + paper["drops"].get("paper_mode_ori_final", 0)
    assert paper["rows_kept"] + dropped == keep["rows_kept"]


def test_build_takes_the_teacher_client_options_of_reflect(tmp_path: Path):
    """`srecycle build` sets the teacher client as `srecycle reflect` does: here one request in flight where the
    server's /info allows 8, and TGI's native route with the teacher's tokenizer applied here."""
    from teacher_server import Faults, TeacherServer

    client = ["--concurrency", "1", "--api", "generate", "--tokenizer", STUDENT, "--timeout", "30"]
    with TeacherServer(faults=Faults(latency=0.05)) as server:
        build(tmp_path / "w", *client, "--max-retries", "2", "--wait-ready", "20", teacher=server.url)
    assert server.max_concurrent_requests == 8 and server.max_inflight == 1
    assert len(server.bodies) == 12 and {route for route, _ in server.bodies} == {"/"}  # TGI's generate route
    assert all(body["inputs"].startswith("<|im_start|>") for _, body in server.bodies)  # the template, applied here
