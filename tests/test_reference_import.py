"""``srecycle import-reflections`` on the files the reference authors' reflection scripts write.

The fixtures (tests/fixtures/reference_scripts, see its README) are shaped like the outputs of
tianyi-lab/Reflection_Tuning's ``reflection_code/*_postprocess.py``: the instruction reflection's post file (the
new rows) and mid file (old pair + ``new_instruct``/``new_answer``), the response reflection's mid file (old
pair + ``better_answer``) and its post file, which that script leaves empty.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from recycled_datasets.cli import main
from recycled_datasets.locking import LOCK_NAME
from recycled_datasets.records import STATUS_FELL_BACK, STATUS_OK

SCRIPTS = Path(__file__).parent / "fixtures" / "reference_scripts"
HUB_LAYOUT = Path(__file__).parent / "fixtures" / "reference"


def load(name: str) -> list:
    return json.loads((SCRIPTS / name).read_text())


def srecycle(*args: str | Path) -> None:
    main([str(a) for a in args])


def import_files(workdir: Path, *extra: str | Path, **files: str) -> None:
    chosen = {
        "origin": "alpaca_data.json",
        "reflect_instruction": "alpaca_data_ins_post.json",
        "reflect_response": "alpaca_data_res_mid.json",
        "reflect_both": "alpaca_data_ins_post_res_mid.json",
        **files,
    }
    options = [a for split, name in chosen.items() for a in (f"--{split.replace('_', '-')}", SCRIPTS / name)]
    srecycle("import-reflections", *options, "--workdir", workdir, "--quiet", *extra)


def error_of(capsys: pytest.CaptureFixture, call) -> str:
    with pytest.raises(SystemExit) as exc:
        call()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err


@pytest.mark.parametrize("ins_file", ["alpaca_data_ins_post.json", "alpaca_data_ins_mid.json"])
def test_the_reference_scripts_outputs_become_the_four_variants(tmp_path: Path, ins_file: str):
    workdir = tmp_path / "w"
    import_files(workdir, reflect_instruction=ins_file)
    frame = pl.read_parquet(workdir / "reflections.parquet")
    origin, post = load("alpaca_data.json"), load("alpaca_data_ins_post.json")
    res_mid, both_mid = load("alpaca_data_res_mid.json"), load("alpaca_data_ins_post_res_mid.json")

    def variant(v: str) -> list[tuple]:
        return frame.select(f"{v}_instruction", f"{v}_input", f"{v}_output").rows()

    assert variant("ori") == [(r["instruction"], r["input"], r["output"]) for r in origin]
    assert variant("ins") == [(r["instruction"], "", r["output"]) for r in post]
    # res: the new answer is better_answer, never the mid file's output (the old answer) ...
    assert [r[2] for r in variant("res")[:2]] == [r["better_answer"] for r in res_mid[:2]]
    assert [r[2] for r in variant("res")[:2]] != [r["output"] for r in res_mid[:2]]
    # ... except where the reference found none: the old answer, recorded as a fallback
    assert variant("res")[2] == (origin[2]["instruction"], "", origin[2]["output"])
    assert frame["res_status"].to_list() == [STATUS_OK, STATUS_OK, STATUS_FELL_BACK]
    assert "better_answer" in frame["res_detail"][2]
    assert variant("both") == [(r["instruction"], "", r["better_answer"]) for r in both_mid]
    assert frame["both_status"].to_list() == [STATUS_OK] * 3
    meta = json.loads((workdir / "reflections.json").read_text())
    assert meta["prompt_version"] == "reference" and meta["rows"] == 3


def test_the_same_shapes_in_a_folder_named_by_split(tmp_path: Path):
    folder = tmp_path / "ref"
    folder.mkdir()
    for split, name in (
        ("origin", "alpaca_data.json"),
        ("reflect_instruction", "alpaca_data_ins_mid.json"),
        ("reflect_response", "alpaca_data_res_mid.json"),
        ("reflect_both", "alpaca_data_ins_post_res_mid.json"),
    ):
        shutil.copy(SCRIPTS / name, folder / f"{split}.json")
    srecycle("import-reflections", folder, "--workdir", tmp_path / "w", "--quiet")
    frame = pl.read_parquet(tmp_path / "w" / "reflections.parquet")
    assert frame["res_output"][0] == load("alpaca_data_res_mid.json")[0]["better_answer"]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # the response reflection's post file: the reference script writes an empty list there
        ({"reflect_response": "alpaca_data_res_post.json"}, "empty list"),
        # the teacher's raw replies, before post-processing
        ({"reflect_instruction": "alpaca_data_instruction.json"}, "raw replies"),
        # an instruction-reflection mid file where a response reflection belongs
        ({"reflect_response": "alpaca_data_ins_mid.json"}, "new_instruct"),
        # a response-reflection mid file where the instruction reflection belongs
        ({"reflect_instruction": "alpaca_data_res_mid.json"}, "better_answer"),
        # a mid file of other rows than the origin's (both reflects the ins rows, not the origin rows)
        ({"reflect_response": "alpaca_data_ins_post_res_mid.json"}, "not row 1 of origin"),
    ],
)
def test_a_file_of_a_shape_it_does_not_expect_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, files: dict[str, str], expected: str
):
    err = error_of(capsys, lambda: import_files(tmp_path / "w", **files))
    assert expected in err
    name = next(iter(files.values()))
    assert name in err
    assert not (tmp_path / "w" / "reflections.parquet").exists()


def test_unknown_keys_name_the_shapes_it_expected(tmp_path: Path, capsys: pytest.CaptureFixture):
    odd = tmp_path / "odd.json"
    rows = load("alpaca_data_res_mid.json")
    for row in rows:
        row["improved_output"] = row.pop("better_answer")
    odd.write_text(json.dumps(rows))
    err = error_of(capsys, lambda: import_files(tmp_path / "w", reflect_response=str(odd)))
    assert "odd.json, row 1" in err and "improved_output" in err and "better_answer" in err


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[{]", b"[" * 5000 + b"]" * 5000])
def test_an_unreadable_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    err = error_of(capsys, lambda: import_files(tmp_path / "w", origin=str(bad)))
    assert "bad.json" in err


def test_files_and_a_source_folder_do_not_mix(tmp_path: Path, capsys: pytest.CaptureFixture):
    err = error_of(
        capsys,
        lambda: srecycle(
            "import-reflections", HUB_LAYOUT, "--origin", SCRIPTS / "alpaca_data.json", "--workdir", tmp_path / "w"
        ),
    )
    assert "--origin" in err
    err = error_of(
        capsys,
        lambda: srecycle("import-reflections", "--origin", SCRIPTS / "alpaca_data.json", "--workdir", tmp_path / "w"),
    )
    assert "--reflect-instruction" in err


# ---- a workdir that already has reflections ---------------------------------------------------------------


def test_an_import_over_existing_reflections_is_refused_without_force(tmp_path: Path, capsys: pytest.CaptureFixture):
    workdir = tmp_path / "w"
    srecycle("import-reflections", HUB_LAYOUT, "--workdir", workdir, "--quiet")
    before = (workdir / "reflections.parquet").read_bytes()
    other = tmp_path / "other"
    shutil.copytree(HUB_LAYOUT, other)
    path = other / "reflect_instruction.json"
    path.write_text(path.read_text().replace("colour", "color"))
    err = error_of(capsys, lambda: srecycle("import-reflections", other, "--workdir", workdir, "--quiet"))
    assert "already holds reflections" in err and "--force" in err
    assert (workdir / "reflections.parquet").read_bytes() == before

    srecycle("import-reflections", other, "--workdir", workdir, "--quiet", "--force")
    after = pl.read_parquet(workdir / "reflections.parquet")
    assert "color" in after["ins_instruction"][0] + after["ins_output"][0]


def test_the_same_import_again_changes_nothing(tmp_path: Path):
    workdir = tmp_path / "w"
    import_files(workdir)

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file() and p.name != LOCK_NAME}

    before = files()
    import_files(workdir)  # the same rows: nothing to replace, so no --force needed
    assert files() == before
