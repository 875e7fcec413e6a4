"""Every source form reads into the same typed rows; bad input names file, row and field."""

import json

import polars as pl
import pytest

from recycled_datasets.errors import InputError
from recycled_datasets.sources import read_source

ROWS = [
    {"instruction": "Name a prime.", "input": "", "output": "7"},
    {"instruction": "Translate.", "input": "bonjour", "output": "hello"},
]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_alpaca_json_jsonl_parquet_and_reference_form_agree(tmp_path):
    json_path = write(tmp_path, "a.json", json.dumps(ROWS))
    jsonl_path = write(tmp_path, "a.jsonl", "\n".join(json.dumps(r) for r in ROWS) + "\n")
    parquet_path = tmp_path / "a.parquet"
    pl.DataFrame(ROWS).write_parquet(parquet_path)
    ref_path = write(tmp_path, "ref.jsonl", "\n".join(json.dumps({"data": r}) for r in ROWS))
    results = [read_source(p).rows for p in (json_path, jsonl_path, parquet_path, ref_path)]
    assert all(r == results[0] for r in results)
    first, second = results[0]
    assert (first.instruction, first.input, first.output, first.index) == ("Name a prime.", "", "7", 0)
    assert second.input == "bonjour"
    assert first.id != second.id and len(first.id) == 16


def test_json_lines_in_a_file_named_json_read_as_jsonl(tmp_path):
    # Test sets and sources share one file reader: a .json file that holds one object per line is JSONL.
    path = write(tmp_path, "lines.json", "\n".join(json.dumps(r) for r in ROWS) + "\n")
    assert [r.output for r in read_source(path).rows] == ["7", "hello"]


def test_wizardlm_form_has_no_input(tmp_path):
    path = write(tmp_path, "wiz.json", json.dumps([{"instruction": "Explain tides.", "output": "The moon pulls."}]))
    (row,) = read_source(path).rows
    assert row.input == "" and row.output == "The moon pulls."


def test_ids_are_stable_and_duplicates_stay_unique(tmp_path):
    path = write(tmp_path, "dup.json", json.dumps([ROWS[0], ROWS[0], ROWS[1]]))
    ids = [r.id for r in read_source(path).rows]
    assert ids == [r.id for r in read_source(path).rows]
    assert len(set(ids)) == 3 and ids[1] == f"{ids[0]}-2"


def test_hub_layout_folder(tmp_path):
    folder = tmp_path / "repo"
    (folder / "data").mkdir(parents=True)
    pl.DataFrame(ROWS).write_parquet(folder / "data" / "train-00000-of-00001.parquet")
    rows = read_source(folder).rows
    assert [r.output for r in rows] == ["7", "hello"]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", "empty"),
        ("   \n", "whitespace"),
        ('[{"instruction": "a", "output": "b"}, {"instruction": "c", "out', "truncated"),
        ("not json at all", "not valid JSON"),
        ('{"instruction": "a"}', "row 1, field 'output': is missing"),
        ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', "row 2, field 'output': is missing"),
        ('[{"instruction": "a", "output": 3}]', "row 1, field 'output': must be a string"),
        ('[{"instruction": "  ", "output": "b"}]', "row 1, field 'instruction': is empty"),
        ('[{"instruction": "a", "input": ["x"], "output": "b"}]', "row 1, field 'input': must be a string"),
    ],
)
def test_bad_input_names_file_row_and_field(tmp_path, text, pattern):
    path = write(tmp_path, "bad.json", text)
    with pytest.raises(InputError, match=pattern) as info:
        read_source(path)
    assert str(path) in str(info.value)


def test_bad_jsonl_line_is_named(tmp_path):
    path = write(tmp_path, "bad.jsonl", json.dumps(ROWS[0]) + "\n{oops\n")
    with pytest.raises(InputError, match=r"row 2: not valid JSON"):
        read_source(path)


def test_skip_invalid_drops_and_reports(tmp_path):
    path = write(tmp_path, "mixed.json", json.dumps([ROWS[0], {"instruction": "x"}, ROWS[1], {"output": "y"}]))
    data = read_source(path, skip_invalid=True)
    assert [r.output for r in data.rows] == ["7", "hello"]
    assert [(i.row, i.field) for i in data.invalid] == [(2, "output"), (4, "instruction")]
    assert [r.index for r in data.rows] == [0, 1]


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_source(tmp_path / "nope.json")


def test_real_alpaca_rows(alpaca_path):
    data = read_source(alpaca_path)
    assert len(data.rows) == 3111
    assert sum(1 for r in data.rows if r.input) == 579
    assert len({r.id for r in data.rows}) == 3111


def test_one_licence_table_names_each_known_source_and_fine_tuning_follows_it(tmp_path):
    """The builders, the build's reflections.json and a fine-tuned model's card take a source's licence from
    one table; a subset whose card declares none gets its source's, and rows of no known source ``other``."""
    from recycled_datasets.builders import SRecycledAlpaca, SRecycledSample, SRecycledWizardLM
    from recycled_datasets.finetune.data import _subset_license
    from recycled_datasets.sources import license_of
    from recycled_datasets.stages.source import load_source

    assert [license_of(s) for s in ("alpaca", "tatsu-lab/alpaca", "wizardlm", "sample", "my.json")] == [
        "cc-by-nc-4.0", "cc-by-nc-4.0", "mit", "apache-2.0", "other",
    ]  # fmt: skip
    made = [b(config_name="reflections", workdir=str(tmp_path / "w"), cache_dir=str(tmp_path / "c")) for b in (
        SRecycledAlpaca, SRecycledWizardLM, SRecycledSample)]  # fmt: skip
    assert [b.info.license for b in made] == [
        "cc-by-nc-4.0", "mit", "apache-2.0",
    ]  # fmt: skip
    assert load_source("sample").license == "apache-2.0"
    no_card = tmp_path / "README.md"
    assert _subset_license(no_card, {"source": "WizardLMTeam/WizardLM_evol_instruct_70k"}) == "mit"
    assert _subset_license(no_card, {"source": "rows.json"}) == "other"
    assert _subset_license(no_card, None) == "other"
    no_card.write_text("---\nlicense: apache-2.0\n---\n")
    assert _subset_license(no_card, {"source": "tatsu-lab/alpaca"}) == "apache-2.0"
