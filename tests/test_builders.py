"""The ``datasets`` builders read a workdir's stage files: subsets per student, reflections and scores.

The workdir is written by the pipeline's own writers from hand-made reflections and scores, so these tests
need no model and run in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from builders import SRecycledAlpaca, SRecycledGeneric, SRecycledWizardLM  # repo root on pytest's pythonpath
from recycled_datasets.errors import ConfigError, StoreError
from recycled_datasets.pipeline import (
    materialize,
    reflections_path,
    reflections_schema,
    scores_schema,
    select_and_write,
    write_json,
    write_parquet,
)
from recycled_datasets.records import (
    CHAT_COLUMNS,
    REFLECTION_COLUMNS,
    RELEASE_SUBSET_COLUMNS,
    SCORE_COLUMNS,
    VARIANTS,
)
from recycled_datasets.selection import SelectionConfig

IDS = ["r0", "r1", "r2"]
# (IFD, r-IFD) per row and variant, chosen so that r0 -> both, r1 -> res, r2 -> ori (see test_selection)
SCORES = {
    "r0": {"ori": (0.6, 0.5), "ins": (0.8, 0.5), "res": (0.1, 0.1), "both": (0.7, 0.3)},
    "r1": {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (0.9, 0.4), "both": (0.1, 0.1)},
    "r2": {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (0.2, 0.7), "both": (0.1, 0.1)},
}
STUDENT = {"key": "", "model": "m", "revision": "", "template": "alpaca", "dtype": "float32", "base_model": "m"}


def write_workdir(workdir: Path, *, students: dict[str, SelectionConfig], source: str = "rows.json") -> None:
    """Reflections for three rows and, per student, hand-made scores selected with the given config."""
    columns: dict[str, list] = {"id": IDS, "source_index": [0, 1, 2]}
    for v in VARIANTS:
        columns[f"{v}_instruction"] = [f"{v} instruction {i}" for i in IDS]
        columns[f"{v}_input"] = ["" if v in ("ins", "both") else f"input {i}" for i in IDS]
        columns[f"{v}_output"] = [f"{v} output {i}" for i in IDS]
        if v != "ori":
            columns[f"{v}_status"] = ["ok", "fell_back", "ok"]
            columns[f"{v}_detail"] = [None, f"{v} fell back: no section", None]
    reflections = pl.DataFrame(columns).select(REFLECTION_COLUMNS)
    write_parquet(reflections, reflections_path(workdir), reflections_schema())
    meta = {
        "teacher": "t/teacher",
        "teacher_revision": "",
        "prompt_version": "v1",
        "source": source,
        "rows": 3,
        "license": "apache-2.0",
    }
    write_json(workdir / "reflections.json", meta)
    for key, config in students.items():
        rows = []
        for rid in IDS:
            for v in VARIANTS:
                ifd, rifd = SCORES[rid][v]
                rows.append({"id": rid, "variant": v, "ifd": ifd, "rifd": rifd, "loss_response_cond": 1.0})
        scores = pl.DataFrame(rows).with_columns(
            *(pl.lit(None, dtype=pl.Float64).alias(c) for c in SCORE_COLUMNS[3:6]),
            *(pl.lit(7, dtype=pl.Int64).alias(c) for c in SCORE_COLUMNS if c.startswith("n_")),
            pl.lit("ok").alias("status"),
            pl.lit(None, dtype=pl.String).alias("reason"),
        )
        write_parquet(scores, workdir / "students" / key / "scores.parquet", scores_schema())
        select_and_write(
            pl.read_parquet(workdir / "students" / key / "scores.parquet"),
            reflections,
            meta,
            {**STUDENT, "key": key},
            config,
            workdir=workdir,
        )


def prepare(builder_class, workdir: Path, config: str, cache: Path):
    builder = builder_class(config_name=config, data_dir=str(workdir), cache_dir=str(cache))
    builder.download_and_prepare()
    return builder, builder.as_dataset("train")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    write_workdir(path, students={"llama2-7b": SelectionConfig(), "my-student": SelectionConfig("keep-unreflected")})
    return path


def test_a_student_config_is_its_subset(workdir: Path, tmp_path: Path):
    import datasets

    builder, ds = prepare(SRecycledGeneric, workdir, "llama2-7b", tmp_path / "cache")
    subset = pl.read_parquet(workdir / "students" / "llama2-7b" / "subset.parquet")
    assert list(builder.info.features) == list(RELEASE_SUBSET_COLUMNS)
    assert builder.info.features["ifd"].dtype == "float64"
    assert ds.remove_columns(list(CHAT_COLUMNS)).to_list() == subset.to_dicts()
    assert ds[0]["messages"] == [
        {"role": "user", "content": ds[0]["instruction"]},
        {"role": "assistant", "content": ds[0]["output"]},
    ]
    # the same rows as the release tree's config
    materialize(workdir)
    assert datasets.load_dataset(str(workdir / "dataset"), "llama2-7b", split="train").to_list() == ds.to_list()
    # paper mode: r0 -> both, r1 -> res; r2 (ori) dropped
    assert [(r["id"], r["variant"], r["output"]) for r in ds] == [
        ("r0", "both", "both output r0"),
        ("r1", "res", "res output r1"),
    ]


def test_a_users_own_student_key_is_a_config(workdir: Path, tmp_path: Path):
    _, ds = prepare(SRecycledGeneric, workdir, "my-student", tmp_path / "cache")
    assert ds["variant"] == ["both", "res", "ori"]  # keep-unreflected keeps the ori final too


def test_reflections_config_has_four_variants_per_row(workdir: Path, tmp_path: Path):
    import datasets

    builder, ds = prepare(SRecycledGeneric, workdir, "reflections", tmp_path / "cache")
    assert ds.num_rows == 12
    assert [(r["id"], r["variant"]) for r in ds] == [(i, v) for i in IDS for v in VARIANTS]
    row = ds[5]  # r1, ins
    assert (row["instruction"], row["input"], row["status"]) == ("ins instruction r1", "", "fell_back")
    assert row["detail"] == "ins fell back: no section"
    assert ds[4]["status"] == "ok" and ds[4]["detail"] is None  # ori is the source itself
    # the same rows as the release tree's reflections config
    materialize(workdir)
    released = datasets.load_dataset(str(workdir / "dataset"), "reflections", split="train")
    assert released.to_list() == ds.to_list()


def test_scores_config_holds_every_variant_of_every_student(workdir: Path, tmp_path: Path):
    _, ds = prepare(SRecycledGeneric, workdir, "scores", tmp_path / "cache")
    assert ds.num_rows == 2 * 12
    assert sorted(set(ds["student"])) == ["llama2-7b", "my-student"]
    first = ds[0]
    assert (first["student"], first["id"], first["variant"], first["ifd"], first["rifd"]) == (
        "llama2-7b",
        "r0",
        "ori",
        0.6,
        0.5,
    )
    assert first["instruction"] == "ori instruction r0" and first["n_response_tokens"] == 7


def test_same_workdir_gives_the_same_examples_in_the_same_order(workdir: Path, tmp_path: Path):
    _, a = prepare(SRecycledGeneric, workdir, "scores", tmp_path / "one")
    _, b = prepare(SRecycledGeneric, workdir, "scores", tmp_path / "two")
    assert a.to_list() == b.to_list()


def test_a_rebuilt_workdir_is_not_served_from_a_stale_cache(workdir: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    _, before = prepare(SRecycledGeneric, workdir, "llama2-7b", cache)
    write_workdir(workdir, students={"llama2-7b": SelectionConfig("keep-unreflected")})
    _, after = prepare(SRecycledGeneric, workdir, "llama2-7b", cache)
    assert (before.num_rows, after.num_rows) == (2, 3)


def test_licenses_follow_the_source(workdir: Path, tmp_path: Path):
    assert SRecycledGeneric(config_name="reflections", data_dir=str(workdir)).info.license == "apache-2.0"
    assert SRecycledAlpaca(config_name="reflections", data_dir=str(workdir)).info.license == "cc-by-nc-4.0"
    assert SRecycledWizardLM(config_name="reflections", data_dir=str(workdir)).info.license == "apache-2.0"


def test_shipped_student_keys_and_stage_configs_are_listed():
    names = set(SRecycledAlpaca.builder_configs)
    assert {"reflections", "scores", "llama2-7b", "llama2-13b", "mistral-7b", "smollm2-135m"} <= names


def test_user_errors_say_what_to_run(workdir: Path, tmp_path: Path):
    with pytest.raises(StoreError, match=r"no subset for the student 'mistral-7b' .*llama2-7b.*srecycle build"):
        prepare(SRecycledGeneric, workdir, "mistral-7b", tmp_path / "cache")
    with pytest.raises(ConfigError, match="not a config name"):
        SRecycledGeneric(config_name="Not A Key", data_dir=str(workdir))
    with pytest.raises(ConfigError, match="data_dir"):
        SRecycledGeneric(config_name="reflections", cache_dir=str(tmp_path / "c")).download_and_prepare()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreError, match="srecycle build"):
        prepare(SRecycledGeneric, empty, "reflections", tmp_path / "cache")


def test_report_in_the_workdir_matches_the_subset(workdir: Path):
    report = json.loads((workdir / "students" / "llama2-7b" / "report.json").read_text())
    assert report["branches"] == {"both": 1, "ins": 0, "res": 1, "ori": 1}
    assert report["drops"] == {"paper_mode_ori_final": 1}
    assert report["student"]["key"] == "llama2-7b"
