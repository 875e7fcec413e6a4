"""The ``datasets`` builders run the stages into a workdir and yield the release's tables.

The workdir is made by the project's own commands: the reference fixture's reflections (no teacher) and the
embedded student's scores and subset. The builders then reuse it: an unreachable teacher proves that no
teacher call is made, and unchanged stage files that no student was run again. Keys of the user's own use
the tiny random-weight student where only scores matter (milliseconds).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recycled_datasets.builders import SRecycled, SRecycledAlpaca, SRecycledSample, SRecycledWizardLM
from recycled_datasets.cli import main
from recycled_datasets.errors import ConfigError, InputError
from recycled_datasets.workdir import Workdir
from recycled_datasets.workdir.schema import (
    features,
    reflections_long_schema,
    release_scores_schema,
    release_subset_schema,
)
from recycled_datasets.workdir.views import release_reflections, release_scores, release_subset

FIXTURE = Path(__file__).parent / "fixtures" / "reference"
STUDENT = "smollm2-135m"
UNREACHABLE = "http://127.0.0.1:9"


def srecycle(*args: str | Path) -> None:
    main([str(a) for a in args])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir made by the CLI: the reference reflections (no teacher) and the embedded student's subset."""
    workdir = tmp_path_factory.mktemp("builders") / "work"
    srecycle("import-reflections", FIXTURE, "--workdir", workdir, "--quiet")
    srecycle("build", "--workdir", workdir, "--student", STUDENT, "--quiet")
    return workdir


def stage_files(workdir: Path) -> dict[str, int]:
    """The modification times of the stage files: unchanged means no stage wrote them again."""
    wd = Workdir(workdir)
    student = wd.student(STUDENT)
    return {p.name: p.stat().st_mtime_ns for p in (wd.reflections, student.scores, student.scores_meta)}


def prepare(builder: SRecycled):
    builder.download_and_prepare()
    return builder.as_dataset("train")


def view_rows(tables) -> list[dict]:
    return [row for table in tables for row in table.to_pylist()]


def released(workdir: Path, config: str) -> list[dict]:
    return pq.read_table(workdir / "dataset" / config / "train-00000-of-00001.parquet").to_pylist()


def test_a_student_config_reuses_the_workdir_and_equals_the_release(built: Path, tmp_path: Path):
    before = stage_files(built)
    builder = SRecycled(config_name=STUDENT, workdir=str(built), teacher=UNREACHABLE, cache_dir=str(tmp_path))
    ds = prepare(builder)
    assert stage_files(built) == before  # no teacher call (it is unreachable), no scoring
    assert ds.num_rows > 0
    assert ds.to_list() == released(built, STUDENT) == view_rows(release_subset(built, STUDENT))
    assert ds.features == builder.info.features == features(release_subset_schema())
    assert ds.data.table.schema == release_subset_schema()


def test_the_config_cuts_the_subset_again_from_the_stored_scores(built: Path, tmp_path: Path):
    workdir = tmp_path / "work"
    shutil.copytree(built, workdir)
    before = stage_files(workdir)
    ds = prepare(SRecycled(config_name=STUDENT, top_k=1, workdir=str(workdir), cache_dir=str(tmp_path)))
    assert stage_files(workdir) == before
    assert ds["id"] == [max(released(built, STUDENT), key=lambda row: row["ifd"])["id"]]


def test_reflections_and_scores_configs_equal_the_release_views(built: Path, tmp_path: Path):
    before = stage_files(built)
    kwargs = {"workdir": str(built), "teacher": UNREACHABLE, "cache_dir": str(tmp_path)}
    reflections = SRecycled(config_name="reflections", **kwargs)
    ds = prepare(reflections)
    assert ds.num_rows == 3 * 4
    assert ds.to_list() == released(built, "reflections") == view_rows(release_reflections(built))
    assert reflections.info.features == features(reflections_long_schema())
    scores = SRecycled(config_name="scores", **kwargs)  # default: the embedded student
    ds = prepare(scores)
    assert set(ds["student"]) == {STUDENT} and ds.num_rows == 3 * 4
    assert ds.to_list() == view_rows(release_scores(built, [STUDENT]))
    assert ds.data.table.schema == release_scores_schema()
    assert scores.info.features == features(release_scores_schema())
    assert stage_files(built) == before


def test_a_key_of_the_users_own_is_a_config(built: Path, tiny_llama_dir: Path, tmp_path: Path):
    """Keys in no shipped table: one from a students file, one naming the model given as ``student``; the
    ``scores`` config scores the students it lists (and selects nothing)."""
    from recycled_datasets.models import students_table

    workdir = tmp_path / "work"
    shutil.copytree(built, workdir)
    students = tmp_path / "students.toml"
    students.write_text(f'[my-smol]\nmodel = "{students_table()[STUDENT].model}"\ntemplate = "alpaca"\n')
    common = {"workdir": str(workdir), "cache_dir": str(tmp_path / "cache"), "teacher": UNREACHABLE}
    ds = prepare(SRecycled(config_name="my-smol", students_file=str(students), **common))
    assert ds.unique("student") == ["my-smol"]
    assert ds.to_list() == view_rows(release_subset(workdir, "my-smol"))
    scores = SRecycled(config_name="scores", students=("my-smol", STUDENT), students_file=str(students), **common)
    ds = prepare(scores)
    assert ds.unique("student") == ["my-smol", STUDENT]
    assert ds.to_list() == view_rows(release_scores(workdir, ["my-smol", STUDENT]))
    tiny = {"student": str(tiny_llama_dir), "template": "alpaca", "dtype": "float32"}
    ds = prepare(SRecycled(config_name="scores", **tiny, **common))  # no name given: the folder names the key
    assert ds.unique("student") == [tiny_llama_dir.name]
    assert Workdir(workdir).student_keys() == sorted(["my-smol", STUDENT, tiny_llama_dir.name])
    assert not Workdir(workdir).student(tiny_llama_dir.name).subset.exists()  # scored, not selected


def test_a_subset_left_empty_by_the_selection_is_a_clear_error(built: Path, tiny_llama_dir: Path, tmp_path: Path):
    """8 tokens hold no response, so no row has a score and none is kept."""
    workdir = tmp_path / "work"
    shutil.copytree(built, workdir)
    tiny = {"student": str(tiny_llama_dir), "template": "alpaca", "max_length": 8}
    builder = SRecycled(config_name="tiny", workdir=str(workdir), cache_dir=str(tmp_path), **tiny)
    message = "'tiny' (paper mode) kept 0 of 3 rows (dropped: 3 final_score_missing)"
    with pytest.raises(ConfigError, match=re.escape(message)):
        builder.download_and_prepare()
    assert Workdir(workdir).student("tiny").scores.is_file()


def test_a_changed_workdir_is_not_served_from_the_cache(tmp_path: Path):
    workdir = tmp_path / "work"
    srecycle("import-reflections", FIXTURE, "--workdir", workdir, "--quiet")
    kwargs = {"config_name": "reflections", "workdir": str(workdir), "cache_dir": str(tmp_path / "cache")}
    first = prepare(SRecycled(**kwargs))
    changed = tmp_path / "changed"
    shutil.copytree(FIXTURE, changed)
    path = changed / "reflect_instruction.json"
    path.write_text(path.read_text().replace("colour", "color"))
    srecycle("import-reflections", changed, "--workdir", workdir, "--quiet", "--force")
    second = prepare(SRecycled(**kwargs))
    assert first.to_list() != second.to_list()
    assert second.to_list() == view_rows(release_reflections(workdir))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"config_name": "Not A Key"}, "'Not A Key' is not a config of an sRecycled builder"),
        ({"config_name": "plots"}, "'plots' is not a config"),
        ({}, "name the config: config_name=STUDENT_KEY"),
        ({"config_name": "smollm2-135m", "workdir": None}, "needs workdir=DIR"),
        ({"config_name": "smollm2-135m", "students": ("a",)}, "students= lists the students of the 'scores'"),
        ({"config_name": "smollm2-135m", "mode": "best"}, "selection mode must be one of"),
        ({"config_name": "smollm2-135m", "limit": 0}, "limit must be at least 1"),
        ({"config_name": "scores", "top_k": 2, "top_p": 50.0}, "not both"),
    ],
)
def test_a_wrong_config_is_one_clear_error_before_any_work(kwargs: dict, message: str, tmp_path: Path):
    kwargs = {"workdir": str(tmp_path / "work"), **kwargs}
    with pytest.raises(ConfigError, match=re.escape(message)):
        SRecycledSample(cache_dir=str(tmp_path / "cache"), **kwargs)
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("builder", "hub_id", "license"),
    [
        (SRecycledAlpaca, "tatsu-lab/alpaca", "cc-by-nc-4.0"),
        (SRecycledWizardLM, "WizardLMTeam/WizardLM_evol_instruct_70k", "mit"),
    ],
)
def test_each_builder_reads_its_own_source(builder: type[SRecycled], hub_id: str, license: str, tmp_path: Path):
    """Offline, the public set cannot be loaded: the error names the builder's own source."""
    made = builder(config_name="reflections", workdir=str(tmp_path / "work"), cache_dir=str(tmp_path / "c"))
    assert made.info.license == license and hub_id in made.info.homepage
    with pytest.raises(InputError, match=hub_id):
        made.download_and_prepare()


def test_the_sample_builder_asks_its_teacher_for_the_sample_rows(tmp_path: Path):
    made = SRecycledSample(config_name="reflections", limit=2, workdir=str(tmp_path / "w"), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="2 of 2 rows have no reflections .* pass --teacher"):
        made.download_and_prepare()
