"""import-scores: the reference authors' published analysis sets (scores of every variant) become a student's
scores, and select then cuts the subset the reference selection code keeps from the same numbers.

The fixture files follow the published schema: four splits, one record per source row in source order, a struct
column ``data`` holding the reference scoring script's ``loss`` and ``ppl`` lists (instruction alone, response
alone, instruction given the guess prompt, response given the prompt). The expected subset is computed here
from those lists the way the reference selection code computes it (``ifd_ppl = ppl[3] / ppl[1]``,
``rifd_ppl = ppl[2] / ppl[0]``, then its four branches; paper mode keeps the both and res finals).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recycled_datasets.cli import main

SPLITS = ("origin", "reflect_instruction", "reflect_response", "reflect_both")
N = 40
STUDENT = "llama2-7b"


def _variants(i: int) -> dict[str, dict]:
    x, y = f"Name {i} prime numbers.", f"Here are {i} primes."
    x1, y1 = f"List the first {i} primes and explain why each is prime.", f"The first {i} primes are ... each prime."
    return {
        "origin": {"instruction": x, "input": "under 100" if i % 3 == 0 else "", "output": y},
        "reflect_instruction": {"instruction": x1, "input": "", "output": y1},
        "reflect_response": {"instruction": x, "input": "under 100" if i % 3 == 0 else "", "output": y + " (better)"},
        "reflect_both": {"instruction": x1, "input": "", "output": y1 + " (better)"},
    }


def _analysis(rng: random.Random) -> dict[str, list[dict | None]]:
    """Per split, one data record per row: losses drawn so that every branch of the rule occurs."""
    out: dict[str, list[dict | None]] = {s: [] for s in SPLITS}
    for i in range(N):
        for split in SPLITS:
            if split == "origin" and i == 7:
                out[split].append({"loss": None, "ppl": None})  # the script's {} for an empty response
                continue
            loss = [rng.uniform(0.5, 3.0) for _ in range(4)]
            # ratios around 1: conditioned losses near the direct ones
            loss[2] = loss[0] + rng.uniform(-0.4, 0.2)
            loss[3] = loss[1] + rng.uniform(-0.4, 0.2)
            if split == "reflect_instruction" and i == ZERO_ROW:
                loss[3] = loss[1] - 1.0  # IFD(ins) 0.37, below IFD(ori): the rule takes the res/ori branch
            if split == "reflect_response" and i == ZERO_ROW:
                out[split].append({"loss": [0.0, 0.0, 0.0, 0.0], "ppl": [0.0, 0.0, 0.0, 0.0]})  # its failure value
                continue
            out[split].append({"loss": loss, "ppl": [math.exp(v) for v in loss]})
    return out


ZERO_ROW = 11  # its reflect_response record holds the scoring script's failure value (zeros)


def _reference_keep(analysis: dict[str, list[dict | None]]) -> list[tuple[int, str]]:
    """(row, variant) the reference selection keeps in paper mode, from the lists alone, as its code does."""

    def ratios(record):  # noqa: ANN001, ANN202
        ppl = record["ppl"]
        if ppl is None:  # an empty record: the reference's NaN
            return math.nan, math.nan
        try:
            return ppl[3] / ppl[1], ppl[2] / ppl[0]
        except ZeroDivisionError:  # the reference writes 0 for both, which its selection then keeps
            return 0.0, 0.0

    kept = []
    for i in range(N):
        ori, q, a, qa = (ratios(analysis[s][i]) for s in SPLITS)
        if q[0] > ori[0]:
            if qa[1] < q[1] and qa[1] < 1 and qa[0] < 1:
                kept.append((i, "both"))
        elif a[1] < ori[1] and a[1] < 1 and a[0] < 1:
            kept.append((i, "res"))
    return kept


def _write_splits(folder: Path, records: dict[str, list[dict]]) -> Path:
    folder.mkdir(parents=True)
    for split, rows in records.items():
        pq.write_table(pa.table({"data": pa.array(rows)}), folder / f"{split}.parquet")
    return folder


@pytest.fixture
def workdir_with_reflections(tmp_path: Path) -> Path:
    rows = [_variants(i) for i in range(N)]
    source = tmp_path / "reflect_all"
    source.mkdir()
    for split in SPLITS:
        (source / f"{split}.json").write_text(json.dumps([r[split] for r in rows]), encoding="utf-8")
    workdir = tmp_path / "w"
    main(["import-reflections", str(source), "--workdir", str(workdir), "--quiet"])
    return workdir


def test_import_scores_then_select_keeps_what_the_reference_selection_keeps(workdir_with_reflections, tmp_path):
    analysis = _analysis(random.Random(3))
    folder = _write_splits(tmp_path / "analysis", analysis)
    main(["import-scores", str(folder), "--workdir", str(workdir_with_reflections), "--student", STUDENT, "-q"])
    main(["select", "--workdir", str(workdir_with_reflections), "--student", STUDENT, "--quiet"])

    reference = _reference_keep(analysis)
    # The one documented difference (docs/method.md, section 9): the script's zeros are a failure here, so the row
    # whose res record is zeros is not kept as a perfect res; every other row is cut exactly as the reference cuts it.
    assert (ZERO_ROW, "res") in reference
    expected = [k for k in reference if k != (ZERO_ROW, "res")]
    assert {v for _, v in expected} == {"both", "res"} and len(expected) >= 4  # the fixture exercises both
    reflections = pl.read_parquet(workdir_with_reflections / "reflections.parquet")
    ids = reflections["id"].to_list()
    subset = pl.read_parquet(workdir_with_reflections / "students" / STUDENT / "subset.parquet")
    assert list(zip(subset["id"], subset["variant"], strict=True)) == [(ids[i], v) for i, v in expected]
    # the kept text is the kept variant's, with the reference's own ratios as its scores
    for (i, variant), row in zip(expected, subset.iter_rows(named=True), strict=True):
        split = "reflect_both" if variant == "both" else "reflect_response"
        assert row["output"] == _variants(i)[split]["output"]
        ppl = analysis[split][i]["ppl"]
        assert row["ifd"] == pytest.approx(ppl[3] / ppl[1], rel=1e-12)
        assert row["rifd"] == pytest.approx(ppl[2] / ppl[0], rel=1e-12)
    scores = pl.read_parquet(workdir_with_reflections / "students" / STUDENT / "scores.parquet")
    missing = scores.filter(pl.col("status") == "missing")
    assert missing.height == 2 and missing["ifd"].null_count() == 2  # the empty record and the zeros, never 0
    report = json.loads((workdir_with_reflections / "students" / STUDENT / "report.json").read_text())
    assert report["student"]["scoring"] == "reference"
    assert report["student"]["imported_from"] == "local:analysis"
    # A stale imported student is remade by importing again, not by scoring with the 7B model.
    from recycled_datasets.hub.stale import rebuild_command
    from recycled_datasets.workdir import Workdir

    hint = rebuild_command(Workdir(workdir_with_reflections), STUDENT)
    assert hint.startswith("srecycle import-scores DIR --student llama2-7b") and "the folder analysis" in hint
    card = (workdir_with_reflections / "dataset" / "README.md").read_text(encoding="utf-8")
    assert "`reference` token layout" in card and "imported from `local:analysis`" in card


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop_row", "matched to the reflections by position"),
        ("short_list", "'loss' must be a list of 4 numbers"),
        ("no_lists", "expected an object with 'loss' and 'ppl' lists"),
    ],
)
def test_a_mismatched_or_unknown_analysis_file_is_one_line(
    workdir_with_reflections, tmp_path, capsys, change, message
):
    analysis = _analysis(random.Random(5))
    if change == "drop_row":
        analysis["reflect_both"] = analysis["reflect_both"][:-1]
        folder = _write_splits(tmp_path / "analysis", analysis)
    else:
        folder = tmp_path / "analysis"
        folder.mkdir()
        for split, rows in analysis.items():
            rows = [{"loss": [1.0, 2.0], "ppl": [1.0, 2.0]} for _ in rows] if change == "short_list" else ["x"] * N
            (folder / f"{split}.json").write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["import-scores", str(folder), "--workdir", str(workdir_with_reflections), "--student", STUDENT])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (workdir_with_reflections / "students" / STUDENT / "scores.parquet").exists()
