"""The evaluation end to end on CPU: a 2-step fine-tune of the embedded SmolLM2 and SmolLM2 itself answer five
test questions, SmolLM2 judges them, and the checkpoint's card carries the results.

The questions are the first five of ../shared/data/eval/vicuna_test_set.jsonl, or, where ../shared is absent,
of the project's own sample test set. SmolLM2-135M is far too small to be a usable judge: most of its verdicts
are unreadable, which the report must count as invalid. The test checks the machinery, not the verdicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA
from huggingface_hub import ModelCard

from recycled_datasets.cli import main
from recycled_datasets.evaluation.card import EVAL_FOLDER
from recycled_datasets.evaluation.generate import ANSWER_COLUMNS
from recycled_datasets.evaluation.judge import OUTCOMES, outcome
from recycled_datasets.evaluation.report import PAIRS_FILE, PLOT_FILE, RESULTS_FILE
from recycled_datasets.sources import read_source

KEY = "smollm2-135m"
ROOT = Path(__file__).resolve().parents[1]
VICUNA = SHARED_DATA / "eval" / "vicuna_test_set.jsonl"
SAMPLE_TEST_SET = ROOT / "recycled_datasets" / "data" / "sample_test_set.jsonl"
N = 5


@pytest.fixture(params=["vicuna", "sample"])
def test_file(request) -> Path:
    if request.param == "vicuna":
        if not VICUNA.is_file():
            pytest.skip(f"{VICUNA} not found (../shared is absent): the sample test set runs instead")
        return VICUNA
    if VICUNA.is_file():
        pytest.skip("../shared/data/eval is present: the Vicuna questions run instead of the sample")
    return SAMPLE_TEST_SET


def _release(root: Path) -> Path:
    """The demo's bundled sample rows as a one-config release in Hub layout, as `srecycle finetune` reads it."""
    rows = read_source(ROOT / "recycled_datasets" / "data" / "sample.jsonl").rows
    table = pa.Table.from_pylist(
        [
            {"instruction": r.instruction, "input": r.input, "output": r.output, "id": r.id, "variant": "ori"}
            for r in rows
        ]
    )
    (root / KEY).mkdir(parents=True)
    pq.write_table(table, root / KEY / "train-00000-of-00001.parquet")
    (root / "README.md").write_text(
        f"---\nlicense: cc-by-4.0\nconfigs:\n- config_name: {KEY}\n  data_files:\n"
        f"  - split: train\n    path: {KEY}/train-*.parquet\n---\n# The demo sample\n",
        encoding="utf-8",
    )
    return root


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_generate_judge_and_card_on_cpu(tmp_path, test_file, capsys, monkeypatch):
    monkeypatch.setenv("SRECYCLE_QUIET", "")
    ckpt = tmp_path / "ckpt"
    main(
        [
            "finetune", "--dataset", str(_release(tmp_path / "release")), "--config", KEY, "--output", str(ckpt),
            "--max-steps", "2", "--per-device-batch-size", "2", "--global-batch-size", "2", "--max-length", "256",
            "--save-steps", "2", "-q",
        ]
    )  # fmt: skip
    assert json.loads((ckpt / "srecycle_finetune.json").read_text())["template"] == "chat"

    answers = {}
    for name, model in (("tuned", str(ckpt)), ("base", KEY)):
        out = tmp_path / "answers" / f"{name}.parquet"
        args = ["generate", model, "--test-sets", str(test_file), "--limit", str(N), "--max-new-tokens", "16"]
        main([*args, "--output", str(out), "-q"])
        table = pl.read_parquet(out)
        assert table.columns == list(ANSWER_COLUMNS) and table.height == N
        assert table["template"].to_list() == ["chat"] * N  # the checkpoint's own, read from its record
        assert all(table["output"].str.len_chars() > 0) and all(table["n_output_tokens"] <= 16)
        answers[name] = out
        # A rerun generates nothing: every answer is in the store.
        main([*args, "--output", str(out)])
        assert "generated / from the store │ 0 / 5" in capsys.readouterr().out
    tuned, base = pl.read_parquet(answers["tuned"]), pl.read_parquet(answers["base"])
    assert tuned["model"].to_list() == ["ckpt"] * N and base["model"].to_list() == [KEY] * N

    report = tmp_path / "eval"
    main(["judge", str(answers["tuned"]), str(answers["base"]), "--judge", "local", "--output", str(report)])
    printed = capsys.readouterr().out
    results = json.loads((report / RESULTS_FILE).read_text())
    pairs = pl.read_parquet(report / PAIRS_FILE)
    assert (report / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # results.json, pairs.parquet and the printed table agree.
    assert pairs.height == N and results["all"]["pairs"] == N
    counts = dict(pairs["outcome"].value_counts().iter_rows())
    assert {o: results["all"][o] for o in OUTCOMES} == {o: counts.get(o, 0) for o in OUTCOMES}
    (name,) = results["test_sets"]
    assert results["test_sets"][name] == results["all"]
    for row in pairs.iter_rows(named=True):
        scores = [row[c] for c in ("score_a_first_a", "score_a_first_b", "score_b_first_a", "score_b_first_b")]
        expected = "invalid" if None in scores else outcome(tuple(scores[:2]), tuple(scores[2:]))
        assert row["outcome"] == expected
    pooled = results["all"]
    for label in (name, "all"):
        cells = [str(pooled[o]) for o in OUTCOMES]
        assert any(line.split("│")[1:6] and [c.strip() for c in line.split("│")[1:6]] == [label, *cells]
                   for line in printed.splitlines()), printed  # fmt: skip
    print(printed)  # the table of this run, for the record (pytest -s shows it)

    # The card: an Evaluation section and model-index results that huggingface_hub reads back.
    site = tmp_path / "site"
    main(["push-model", str(ckpt), "--repo", "me/smollm2-srecycled", "--to-dir", str(site), "--eval", str(report)])
    card = ModelCard.load(site / "README.md")
    evals = card.data.eval_results
    assert evals, card.content[:2000]
    invalid = [e for e in evals if e.metric_type == "invalid_pairs" and e.dataset_type == "all"]
    assert [e.metric_value for e in invalid] == [pooled["invalid"]]
    if pooled["win_score"] is not None:
        (score,) = [e for e in evals if e.metric_type == "win_score" and e.dataset_type == "all"]
        assert score.metric_value == pytest.approx(pooled["win_score"], abs=1e-4)
    assert "## Evaluation" in card.text and f"`{KEY}` (B)" in card.text
    assert f"![wins, ties and losses per test set]({EVAL_FOLDER}/{PLOT_FILE})" in card.text
    assert (site / EVAL_FOLDER / PLOT_FILE).is_file() and (site / EVAL_FOLDER / RESULTS_FILE).is_file()
