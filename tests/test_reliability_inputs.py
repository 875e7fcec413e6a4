"""Inputs and workdirs that used to end in a traceback: files that are not UTF-8 or nest JSON thousands deep,
import files that are not what they claim, an output that is a folder, a name too long for a folder, a full
disk, a workdir copied without its dot-files, a garbled checkpoint and a judge report of the wrong types.
Each is one line, exit 2, naming the file and what to do; or, where nothing is really wrong, just works.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_reliability import ROW, STUDENT, cli, finished_workdir, one_line_error

NOT_UTF8 = b"\xff\xfe not UTF-8 \xfa\n"
DEEP = "[" * 200_000 + "]" * 200_000


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_workdir(tmp_path_factory.mktemp("inputs") / "work")


@pytest.fixture
def wd(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "wd"))


def _rows(tmp_path: Path) -> Path:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(ROW) + "\n")
    return rows


# ---- item 14: inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["students_file", "prompt_file"])
def test_a_config_file_that_is_not_utf8_is_one_line(which: str, tmp_path: Path, capsys):
    bad = tmp_path / ("students.toml" if which == "students_file" else "prompt.txt")
    bad.write_bytes(NOT_UTF8)
    rows = _rows(tmp_path)
    if which == "students_file":
        args: tuple = ("score", rows, "--student", "x", "--students-file", bad, "--output", tmp_path / "s.parquet")
    else:
        args = ("reflect", rows, "--output", tmp_path / "o.parquet", "--dry-run", "--prompt-instruction", bad)
    code, _, err = cli(capsys, *args)
    line = one_line_error(err)
    assert code == 2 and str(bad) in line and "UTF-8" in line


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_deeply_nested_json_in_a_source_is_one_line(suffix: str, tmp_path: Path, capsys):
    source = tmp_path / f"deep{suffix}"
    source.write_text(DEEP + "\n")
    code, _, err = cli(capsys, "reflect", source, "--output", tmp_path / "o.parquet", "--dry-run")
    line = one_line_error(err)
    assert code == 2 and str(source) in line and "nested too deeply" in line


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("origin.json", NOT_UTF8, "not UTF-8"),
        ("origin.json", b'[{"instruction": "a", "output": ', "not valid JSON"),
        ("origin.jsonl", b'{"instruction": "a"\n', "not valid JSON"),
        ("origin.json", DEEP.encode(), "nested too deeply"),
        ("origin.parquet", b"PAR1 this is not parquet PAR1", "parquet"),
    ],
)
def test_import_files_that_are_not_rows_are_one_line(name: str, content: bytes, expected: str, tmp_path: Path, capsys):
    folder = tmp_path / "ref"
    folder.mkdir()
    row = {"instruction": "Name a colour.", "input": "", "output": "Red."}
    for split in ("reflect_instruction", "reflect_response", "reflect_both"):
        (folder / f"{split}.json").write_text(json.dumps([row]))
    (folder / name).write_bytes(content)
    code, _, err = cli(capsys, "import-reflections", folder, "--workdir", tmp_path / "w")
    line = one_line_error(err)
    assert code == 2 and str(folder / name) in line and expected in line, line
    assert not (tmp_path / "w" / "reflections.parquet").exists()


def test_score_refuses_an_output_folder_before_scoring(tmp_path: Path, capsys, monkeypatch):
    import recycled_datasets.scoring as scoring

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("scored before the output was checked")

    monkeypatch.setattr(scoring, "score_pairs", never)
    (tmp_path / "out").mkdir()
    code, _, err = cli(capsys, "score", _rows(tmp_path), "--student", STUDENT, "--output", tmp_path / "out")
    line = one_line_error(err)
    assert code == 2 and "is a folder" in line and str(tmp_path / "out") in line


def test_a_name_too_long_for_a_folder_is_refused_as_an_option(wd: Path, capsys):
    name = "a" * 300
    code, _, err = cli(capsys, "build", "--workdir", wd, "--student", STUDENT, "--name", name)
    line = one_line_error(err)
    assert code == 2 and "--name" in line and "300 characters" in line and name not in line
    assert not (wd / "students" / name[:200]).exists()


def _full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_that_blames_the_disk_not_the_store(wd: Path, tmp_path: Path, capsys, monkeypatch):
    import recycled_datasets.workdir.files as files

    monkeypatch.setattr(files, "_parquet_writer", _full)
    code, _, err = cli(capsys, "select", "--workdir", wd, "--student", STUDENT)
    line = one_line_error(err)
    assert code == 2 and "No space left on device" in line and "subset.parquet" in line
    assert "damaged" not in line and "store" not in line and "free some space" in line
    assert not [p for p in (wd / "students" / STUDENT).iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_while_drawing_the_plots_is_one_line(wd: Path, tmp_path: Path, capsys, monkeypatch):
    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _full)
    code, _, err = cli(capsys, "push", "--repo", "org/x", "--workdir", wd, "--to-dir", tmp_path / "out")
    line = one_line_error(err)
    assert code == 2 and "No space left on device" in line and ".png" in line and "store" not in line


# ---- item 15: workdirs -----------------------------------------------------------------------------------
def test_a_workdir_copied_without_its_digests_selects_and_stays_consistent(template: Path, tmp_path: Path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    subprocess.run(f"cp -r {template}/* {copy}/", shell=True, check=True)  # cp dir/* drops every dot-file
    assert not (copy / ".reflections.parquet.sha256").exists() and (copy / "reflections.parquet").exists()
    code, _, err = cli(capsys, "select", "--workdir", copy, "--student", STUDENT)
    assert code == 0, err
    from recycled_datasets.selection import SelectionConfig
    from recycled_datasets.stages import SelectStage
    from recycled_datasets.workdir import Workdir

    assert SelectStage(Workdir(copy), STUDENT, SelectionConfig(mode="paper")).done()  # subset.json is current


def test_select_writes_nothing_when_it_fails(wd: Path, capsys, monkeypatch):
    import recycled_datasets.stages.select as select

    def broken(path: Path) -> str:
        raise OSError(errno.EIO, "Input/output error")

    before = {p: p.read_bytes() for p in (wd / "students" / STUDENT).iterdir() if p.is_file()}
    monkeypatch.setattr(select, "recorded_digest", broken)
    with pytest.raises(OSError):
        from recycled_datasets.selection import SelectionConfig
        from recycled_datasets.workdir import Workdir

        select.SelectStage(Workdir(wd), STUDENT, SelectionConfig(mode="paper")).select()
    assert {p: p.read_bytes() for p in (wd / "students" / STUDENT).iterdir() if p.is_file()} == before


@pytest.mark.parametrize("garbage", [b"{not json", NOT_UTF8, b"[" * 100_000])
def test_a_garbled_score_checkpoint_setup_is_one_error_naming_it(garbage: bytes, tmp_path: Path):
    from recycled_datasets.errors import StoreError
    from recycled_datasets.scoring.shards import ChunkStore

    parts = tmp_path / ".out.parquet.parts"
    parts.mkdir()
    (parts / "setup.json").write_bytes(garbage)
    with pytest.raises(StoreError, match="setup.json is unreadable"):
        ChunkStore(parts, {"model": "m"})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.update(a=["x"]), "a"),
        (lambda r: r.update(test_sets=["vicuna"]), "test_sets"),
        (lambda r: r["all"].update(win="3"), "win"),
        (lambda r: r["all"].update(win_score="high"), "win_score"),
        (lambda r: r["all"].update(pairs=None), "pairs"),
    ],
)
def test_a_judge_report_of_the_wrong_types_is_one_error_naming_it(change, field: str, tmp_path: Path):
    from recycled_datasets.errors import InputError
    from recycled_datasets.evaluation.card import read_results

    stats = {
        "win": 1,
        "tie": 0,
        "loss": 0,
        "invalid": 0,
        "win_score": 2.0,
        "adjusted_win_rate": 1.0,
        "inconsistent": 0.0,
        "pairs": 1,
    }
    results = {"a": "m1", "b": "m2", "judge": "j", "test_sets": {"vicuna": dict(stats)}, "all": dict(stats)}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    read_results(path)  # the unchanged report reads
    change(results)
    path.write_text(json.dumps(results))
    with pytest.raises(InputError, match=field) as info:
        read_results(path)
    assert str(path) in str(info.value)
