"""The in-process teacher (``local``, SmolLM2 through transformers): batched, greedy, cached like a server."""

from __future__ import annotations

import pytest

from recycled_datasets.records import REFLECTION_COLUMNS, STATUS_FAILED, assign_ids
from recycled_datasets.teacher import AnswerStore, ReflectConfig, plan_rows, reflect_rows

ROWS = assign_ids([("Name two primary colors.", "", "Red and blue.")])


@pytest.mark.slow  # generation with a real model: seconds on a free CPU, minutes on a busy one
def test_local_teacher_writes_four_variants_and_reruns_from_the_store(tmp_path):
    config = ReflectConfig(teacher="local", store_dir=tmp_path / "store", max_new_tokens=12, progress=False)
    first = reflect_rows(ROWS, config)
    row = first.table.row(0, named=True)
    assert first.table.columns == list(REFLECTION_COLUMNS)
    assert first.teacher_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    for variant in ("ins", "res", "both"):
        # 12 tokens cannot hold a critique and the sections: the variant either parsed or fell back with a
        # reason, and the server never refused it.
        assert row[f"{variant}_status"] != STATUS_FAILED
        assert (row[f"{variant}_detail"] is None) == (row[f"{variant}_status"] == "ok")
        assert row[f"{variant}_output"]
    assert first.stats.sent >= 3 and first.stats.completion_tokens > 0
    with AnswerStore.open(tmp_path / "store") as store:
        stored = list(store.requests())
    assert stored and all(req["api"] == "local" and req["max_new_tokens"] == 12 for _, req in stored)
    assert all(req["inputs"].startswith("<|im_start|>") for _, req in stored)  # the model's chat template

    again = reflect_rows(ROWS, config)
    assert again.stats.sent == 0 and again.table.equals(first.table)


def test_local_dry_run_counts_calls_without_loading_the_weights(tmp_path):
    config = ReflectConfig(teacher="local", store_dir=tmp_path / "store", progress=False)
    plan = plan_rows(ROWS, config)
    assert (plan.rows, plan.calls, plan.cached, plan.cache_checked) == (1, 3, 0, True)
    assert plan.max_output_tokens == 3 * 256  # the local teacher's default budget
    assert plan.teacher_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
