"""Reliability, round 3 (issue 21): nothing stale is published, nothing outside ours is touched, an interrupt says
so, no traceback. One test per item of the issue this branch covers (1 push half, 2-5, 7-10, 16, 17).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from test_reliability import STUDENT, cli, finished_workdir, one_line_error

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_workdir(tmp_path_factory.mktemp("round3") / "work")


@pytest.fixture
def wd(workdir_template: Path, tmp_path: Path) -> Path:
    """A private copy of a finished workdir that the test may damage."""
    return Path(shutil.copytree(workdir_template, tmp_path / "wd", symlinks=True))


def _results(a: str = "org/model-a", b: str = "org/model-b", judge: str = "org/judge") -> dict:
    stats = {
        "win": 3, "tie": 1, "loss": 1, "invalid": 0, "win_score": 1.4, "adjusted_win_rate": 0.7,
        "inconsistent": 0.2, "pairs": 5,
    }  # fmt: skip
    return {"a": a, "b": b, "judge": judge, "test_sets": {"vicuna": dict(stats)}, "all": dict(stats)}


def _judge_dir(folder: Path, **names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(_results(**names)), encoding="utf-8")
    return folder


# ---- 1. push refuses stale students --------------------------------------------------------------------------
def _rejudged(wd: Path) -> None:
    """The reflections change under a scored student (a re-judge with other gates, an import): its scores are
    now for other text."""
    from recycled_datasets.workdir import Workdir
    from recycled_datasets.workdir.tables import write_reflections

    meta = json.loads((wd / "reflections.json").read_text())
    frame = pl.read_parquet(wd / "reflections.parquet")
    frame = frame.with_columns(
        pl.when(pl.col("source_index") == 2)
        .then(pl.col("ori_output"))
        .otherwise(pl.col("ins_output"))
        .alias("ins_output")
    )
    write_reflections(Workdir(wd), frame, meta)


def _rescored(wd: Path) -> None:
    """The scores were made again (other numbers) but the subset was not selected again."""
    from recycled_datasets.workdir import Workdir
    from recycled_datasets.workdir.tables import write_scores

    files = Workdir(wd).student(STUDENT)
    meta = json.loads(files.scores_meta.read_text())
    scores = pl.read_parquet(files.scores).with_columns(pl.col("ifd") * 0.5)
    write_scores(Workdir(wd), STUDENT, scores, meta)


@pytest.mark.parametrize("change", [_rejudged, _rescored], ids=["reflections-changed", "scores-remade"])
def test_push_refuses_a_student_whose_files_no_longer_match(change, wd: Path, tmp_path: Path, capsys):
    change(wd)
    target = tmp_path / "release"
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", target)
    line = one_line_error(err)
    assert code == 2, err
    assert STUDENT in line and f"srecycle build --workdir {wd} --student {STUDENT}" in line
    assert not target.exists()


# ---- 2. finetune --output: the rules of every other output ---------------------------------------------------
@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_finetune import _rows, _write_release

    return _write_release(tmp_path_factory.mktemp("ft-release") / "rel", _rows())


def _finetune_args(release: Path, base: Path, output: Path, *extra: str) -> list[str | Path]:
    return [
        "finetune", "--dataset", release, "--config", STUDENT, "--base", base, "--output", output,
        "--per-device-batch-size", "4", "--global-batch-size", "4", "--save-steps", "100", "--quiet", *extra,
    ]  # fmt: skip


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", ["user-folder", "the-dataset"])
def test_finetune_output_never_writes_into_a_folder_it_did_not_make(
    target: str, release: Path, tiny_llama_dir: Path, tmp_path: Path, capsys, monkeypatch
):
    monkeypatch.setenv("SRECYCLE_QUIET", "")
    if target == "user-folder":
        output = tmp_path / "mine"
        output.mkdir()
        (output / "README.md").write_text("# my notes\n")
        (output / "config.json").write_text('{"mine": true}\n')
    else:
        output = Path(shutil.copytree(release, tmp_path / "rel"))
    before = _tree(output)
    code, _, err = cli(capsys, *_finetune_args(output if target == "the-dataset" else release, tiny_llama_dir,
                                                output, "--max-steps", "1"))  # fmt: skip
    line = one_line_error(err)
    assert code == 2 and str(output) in line
    assert _tree(output) == before


# ---- 3. a finished run is a no-op ----------------------------------------------------------------------------
def test_a_finished_finetune_rerun_changes_nothing(release: Path, tiny_llama_dir: Path, tmp_path: Path, capsys,
                                                    monkeypatch):  # fmt: skip
    monkeypatch.setenv("SRECYCLE_QUIET", "")
    output = tmp_path / "ckpt"
    args = _finetune_args(release, tiny_llama_dir, output, "--max-steps", "2", "--save-steps", "1")
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    weights = hashlib.sha256((output / "model.safetensors").read_bytes()).hexdigest()
    record = json.loads((output / "srecycle_finetune.json").read_text())
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    assert hashlib.sha256((output / "model.safetensors").read_bytes()).hexdigest() == weights
    assert json.loads((output / "srecycle_finetune.json").read_text())["global_step"] == record["global_step"] == 2
    assert not (output / "checkpoint-3").exists()
    # Another recipe in the same folder is not "the same run": refused, nothing trained.
    other = [*args[:-4], "--global-batch-size", "8", *args[-4:]]
    code, _, err = cli(capsys, *other)
    assert code == 2 and "global_batch_size" in err, err
    assert hashlib.sha256((output / "model.safetensors").read_bytes()).hexdigest() == weights


# ---- 4. an interrupt prints one line and exits 130 -----------------------------------------------------------
@pytest.mark.parametrize("command", ["reflect", "build", "push", "finetune"])
def test_an_interrupt_says_so_and_exits_130(command: str, wd: Path, tmp_path: Path, capsys, monkeypatch):
    import recycled_datasets.progress

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # Every command sets up logging first (cli/__init__.py's wrapper): the interrupt comes while it runs.
    monkeypatch.setattr(recycled_datasets.progress, "setup_logging", interrupted)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi."}) + "\n")
    args = {
        "reflect": ["reflect", rows, "--teacher", "http://127.0.0.1:9/v1", "--output", tmp_path / "r.parquet"],
        "build": ["build", "--workdir", wd, "--student", STUDENT],
        "push": ["push", "--repo", "org/x", "--workdir", wd, "--to-dir", tmp_path / "t"],
        "finetune": ["finetune", "--dataset", wd / "dataset", "--config", STUDENT, "--output", tmp_path / "o"],
    }[command]
    code, out, err = cli(capsys, *args)
    assert code == 130, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err


# ---- 5. a signal during push --to-dir leaves no staging folder; a later push removes its own leftovers ----------
_SLOW_PUSH = """
import sys, time
from pathlib import Path
import recycled_datasets.hub.plots as plots
real = plots.write_plots
def slow(**kwargs):
    Path(sys.argv[1]).write_text("staging")
    time.sleep(60)
    return real(**kwargs)
plots.write_plots = slow
from recycled_datasets.cli import main
main(sys.argv[2:])
"""


def _push_until_staging(wd: Path, target: Path, marker: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PUSH, str(marker), "push", "--repo", "org/x", "--workdir", str(wd),
         "--to-dir", str(target), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate(timeout=30)
    return process


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"])
def test_a_signal_during_push_to_dir_cleans_its_staging_folder(signum, code, wd: Path, tmp_path: Path):
    target = tmp_path / "out" / "rel"
    process = _push_until_staging(wd, target, tmp_path / "marker")
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert _leftovers(tmp_path / "out", "rel") == [] and not target.exists()


def test_a_later_push_removes_the_staging_folders_a_killed_push_left(wd: Path, tmp_path: Path, capsys):
    target = tmp_path / "out" / "rel"
    process = _push_until_staging(wd, target, tmp_path / "marker")
    process.kill()
    process.communicate(timeout=60)
    assert _leftovers(tmp_path / "out", "rel")  # SIGKILL cannot be caught: its staging folder stays
    mine = tmp_path / "out" / ".rel.srecycle-mine"  # a folder of the user's own, named like one of ours
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", target)
    assert code == 0, err
    assert _leftovers(tmp_path / "out", "rel") == [".rel.srecycle-mine"]
    assert (mine / "keep.txt").read_text() == "mine"


# ---- 7. symlinks: the lock file and the workdir's own files --------------------------------------------------
@pytest.mark.parametrize("planted", [".srecycle.lock", f"students/{STUDENT}/report.json", f"students/{STUDENT}"])
def test_a_symlink_among_the_workdirs_files_is_refused(planted: str, wd: Path, tmp_path: Path, capsys):
    victim = tmp_path / "victim"
    source = wd / planted
    if source.is_dir():
        shutil.copytree(source, victim)
        shutil.rmtree(source)
    elif source.exists():
        shutil.copyfile(source, victim)
        source.unlink()
    else:
        victim.write_text("precious\n")
    before = _tree(victim) if victim.is_dir() else victim.read_bytes()
    source.symlink_to(victim)
    code, _, err = cli(capsys, "select", "--workdir", wd, "--student", STUDENT, "--keep-unreflected")
    line = one_line_error(err)
    assert code == 2 and planted.split("/")[-1] in line and "link" in line
    assert (_tree(victim) if victim.is_dir() else victim.read_bytes()) == before


# ---- 8. push --eval through a planted symlink ----------------------------------------------------------------
@pytest.mark.parametrize("planted", ["eval/results.json", "eval"])
def test_push_eval_never_writes_through_a_planted_symlink(planted: str, wd: Path, tmp_path: Path, capsys):
    victim = tmp_path / "victim"
    student = wd / "students" / STUDENT
    if planted == "eval":
        victim.mkdir()
        (victim / "results.json").write_text("precious\n")
    else:
        (student / "eval").mkdir()
        victim.write_text("precious\n")
    (student / planted).symlink_to(victim)
    before = _tree(victim) if victim.is_dir() else victim.read_bytes()
    judged = _judge_dir(tmp_path / "judge")
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", tmp_path / "t",
                       "--eval", f"{STUDENT}={judged}")  # fmt: skip
    line = one_line_error(err)
    assert code == 2 and "link" in line
    assert (_tree(victim) if victim.is_dir() else victim.read_bytes()) == before


# ---- 9. push --eval KEY must pass the config-name rule -------------------------------------------------------
@pytest.mark.parametrize("key", ["../../t", "../students/" + STUDENT, "Upper"])
def test_push_eval_key_must_be_a_config_name(key: str, wd: Path, tmp_path: Path, capsys):
    outside = tmp_path / "t"
    outside.mkdir()
    (outside / "report.json").write_text("{}")
    judged = _judge_dir(tmp_path / "judge")
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", tmp_path / "rel",
                       "--eval", f"{key}={judged}")  # fmt: skip
    assert code == 2 and "config name" in one_line_error(err)
    assert not (outside / "eval").exists() and not (wd / "students" / STUDENT / "eval").exists()


# ---- 10. outside text is escaped or quoted in cards ----------------------------------------------------------
HOSTILE = "evil`model <script>alert(1)</script>\n---\n[click](http://attacker.example) | *x*"


def _body_is_safe(text: str) -> None:
    front, body = text.split("\n---\n", 1)[0], text.split("\n---\n", 1)[1]
    assert front.startswith("---\n")
    prose = "".join(body.split("```")[::2])  # a fenced code block shows text as it is: no link, no tag
    assert "<script>" not in body and "](http://attacker.example)" not in prose
    assert "\n---\n" not in body  # nothing outside ends a block or starts a new front matter
    assert "`model" not in body.replace("\\`model", "")  # no backtick left to break out of a code span


def test_outside_names_are_escaped_in_the_dataset_card(wd: Path, tmp_path: Path, capsys):
    from huggingface_hub import DatasetCard

    from recycled_datasets.workdir import Workdir
    from recycled_datasets.workdir.tables import write_reflections, write_subset

    files = Workdir(wd)
    meta = {**json.loads((wd / "reflections.json").read_text()), "teacher": HOSTILE, "teacher_revision": HOSTILE}
    write_reflections(files, pl.read_parquet(wd / "reflections.parquet"), meta)
    report = json.loads(files.student(STUDENT).report.read_text())
    report["student"] = {**report["student"], "model": HOSTILE, "revision": HOSTILE, "template": HOSTILE}
    report["teacher"] = HOSTILE
    write_subset(files, STUDENT, pl.read_parquet(files.student(STUDENT).subset), report)
    judged = _judge_dir(tmp_path / "judge", a=HOSTILE, b=HOSTILE, judge=HOSTILE)
    target = tmp_path / "rel"
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", target,
                       "--eval", f"{STUDENT}={judged}")  # fmt: skip
    assert code == 0, err
    text = (target / "README.md").read_text()
    _body_is_safe(text)
    card = DatasetCard.load(target / "README.md")
    assert [c["config_name"] for c in card.data.configs][0] == STUDENT


def test_outside_names_are_escaped_in_the_model_card(tmp_path: Path):
    from huggingface_hub import ModelCard

    from recycled_datasets.hub.model_card import FinetuneInfo, model_card_text

    info = FinetuneInfo(
        base_model=HOSTILE, dataset=HOSTILE, config=STUDENT, template=HOSTILE, license="cc-by-nc-4.0",
        student=STUDENT, dataset_revision=HOSTILE, hyperparameters={"learning_rate": HOSTILE},
    )  # fmt: skip
    text = model_card_text(info)
    _body_is_safe(text)
    (tmp_path / "README.md").write_text(text)
    assert ModelCard.load(tmp_path / "README.md").data.base_model == HOSTILE


# ---- 16. finetune where no row fits --max-length -------------------------------------------------------------
def test_finetune_where_no_row_fits_says_so(release: Path, tiny_llama_dir: Path, tmp_path: Path, capsys,
                                             monkeypatch):  # fmt: skip
    monkeypatch.setenv("SRECYCLE_QUIET", "")
    code, _, err = cli(capsys, *_finetune_args(release, tiny_llama_dir, tmp_path / "o", "--max-length", "8",
                                               "--max-steps", "1"))  # fmt: skip
    line = one_line_error(err)
    assert code == 2 and "--max-length" in line and "no row" in line


# ---- 17. the smaller ones ------------------------------------------------------------------------------------
def test_skip_invalid_skips_a_malformed_jsonl_line(tmp_path: Path):
    from recycled_datasets.sources import read_source

    rows = tmp_path / "rows.jsonl"
    good = json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi."})
    rows.write_text(f"{good}\n{{not json\n{good.replace('hi', 'yo')}\n")
    data = read_source(rows, skip_invalid=True)
    assert len(data.rows) == 2 and [bad.row for bad in data.invalid] == [2]


def test_a_pkg_reference_that_is_not_a_package_name_is_refused(tmp_path: Path):
    from recycled_datasets.errors import ConfigError
    from recycled_datasets.models import students_table

    table = tmp_path / "students.toml"
    table.write_text('[mine]\nmodel = "pkg:../.."\n')
    with pytest.raises(ConfigError) as info:
        students_table(table)
    assert "pkg:" in str(info.value) and "pip install" not in str(info.value) and str(table) in str(info.value)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_gate_threshold_must_be_a_finite_number(value: str):
    from recycled_datasets.errors import ConfigError
    from recycled_datasets.teacher.gates import GateConfig

    with pytest.raises(ConfigError, match="max_compression"):
        GateConfig.from_options([f"max_compression={value}"])


def test_a_down_server_is_waited_on_only_as_long_as_asked(tmp_path: Path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi."}) + "\n")
    started = time.monotonic()
    code, _, err = cli(capsys, "reflect", rows, "--teacher", f"http://127.0.0.1:{port}/v1", "--output",
                       tmp_path / "r.parquet", "--wait-ready", "1", "--quiet")  # fmt: skip
    assert code == 2 and "not ready after 1 s" in one_line_error(err)
    assert "does not answer yet" in err and "waiting up to 1 s" in err  # said even with --quiet
    assert time.monotonic() - started < 30


def test_a_students_file_that_is_a_folder_says_so(tmp_path: Path):
    from recycled_datasets.errors import ConfigError
    from recycled_datasets.models import students_table

    with pytest.raises(ConfigError, match="is a folder"):
        students_table(tmp_path)


def test_local_source_paths_are_not_published(wd: Path, tmp_path: Path, capsys):
    from recycled_datasets.workdir import Workdir
    from recycled_datasets.workdir.tables import write_reflections, write_subset

    private = "/home/alice/private-project/alpaca_mine.json"
    files = Workdir(wd)
    meta = {**json.loads((wd / "reflections.json").read_text()), "source": private}
    write_reflections(files, pl.read_parquet(wd / "reflections.parquet"), meta)
    report = {**json.loads(files.student(STUDENT).report.read_text()), "source": private}
    write_subset(files, STUDENT, pl.read_parquet(files.student(STUDENT).subset), report)
    target = tmp_path / "rel"
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", target)
    assert code == 0, err
    published = "".join(p.read_text() for p in target.rglob("*") if p.suffix in (".md", ".json"))
    assert "/home/alice" not in published and "alpaca_mine.json" in published
    assert os.path.isfile(target / STUDENT / "report.json")
