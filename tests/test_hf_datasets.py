"""Local folders read through ``datasets`` are never served another folder's cached rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recycled_datasets.hf_datasets import load_dataset
from recycled_datasets.sources import read_source

README = "---\nconfigs:\n- config_name: cfg\n  data_files:\n  - split: train\n    path: cfg/*.parquet\n---\n"


def _release(root: Path, instruction: str, **extra: str) -> Path:
    folder = root / "dataset"  # every release folder srecycle writes is called `dataset`
    (folder / "cfg").mkdir(parents=True)
    (folder / "README.md").write_text(README)
    row = {"instruction": instruction, "input": "", "output": "An answer.", **extra}
    pq.write_table(pa.Table.from_pylist([row]), folder / "cfg" / "train-00000-of-00001.parquet")
    return folder


def test_two_releases_with_the_same_name_and_config_load_their_own_rows(tmp_path: Path):
    first = _release(tmp_path / "a", "First instruction.")
    second = _release(tmp_path / "b", "Second instruction.")
    assert load_dataset(str(first), "cfg", split="train")["instruction"] == ["First instruction."]
    assert load_dataset(str(second), "cfg", split="train")["instruction"] == ["Second instruction."]
    # a release rebuilt in place is read again, not from the cache of its previous contents
    pq.write_table(
        pa.Table.from_pylist([{"instruction": "Rebuilt.", "input": "", "output": "An answer."}]),
        first / "cfg" / "train-00000-of-00001.parquet",
    )
    assert load_dataset(str(first), "cfg", split="train")["instruction"] == ["Rebuilt."]
    assert [r.instruction for r in read_source(f"{second}:train").rows] == ["Second instruction."]


def test_two_releases_with_the_same_name_and_config_but_other_columns_load_their_own_features(tmp_path: Path):
    """A cached dataset_info of one folder must not be applied to another folder's files (a cast error)."""
    first = _release(tmp_path / "a", "First instruction.", variant="res")
    second = _release(tmp_path / "b", "Second instruction.", id="row-2")
    assert load_dataset(str(first), "cfg", split="train").column_names == ["instruction", "input", "output", "variant"]
    loaded = load_dataset(str(second), "cfg", split="train")
    assert loaded.column_names == ["instruction", "input", "output", "id"] and loaded["id"] == ["row-2"]
