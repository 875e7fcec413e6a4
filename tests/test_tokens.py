"""The scorer and the trainer lay out a pair's tokens with one function, so the student trains on what it scored.

SmolLM2's real tokenizer (its chat template writes the BOS itself) and a tiny random Llama beside it.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recycled_datasets.chat import turns_of
from recycled_datasets.finetune import FinetuneConfig, build_trainer
from recycled_datasets.models import load_tokenizer, resolve_student
from recycled_datasets.records import Pair, Turn
from recycled_datasets.scoring.plan import Planner
from recycled_datasets.tokens import IGNORE_INDEX, Exchange, lay_out

KEY = "smollm2-135m"
MAX_LENGTH = 96
CONTEXT = (Turn("system", "Answer briefly."), Turn("user", "What is 2 + 2?"), Turn("assistant", "4."))
PAIRS = {
    "plain": Pair("Add 2 and 3.", "", "The sum is 5."),
    "input": Pair("Translate to English.", "Bonjour, ami.", "Hello, friend."),
    "chat": Pair("And times 3?", "", "That makes 12.", CONTEXT),
    "long": Pair("Describe the sea.", "", "The sea is wide and deep and blue. " * 20),
    "full": Pair("Repeat: " + "la " * 200, "", "ok"),  # the prompt alone is longer than MAX_LENGTH
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_student(KEY))


def _release(root: Path) -> Path:
    rows = [
        {
            "id": name,
            "instruction": p.instruction,
            "input": p.input,
            "output": p.output,
            "messages": turns_of(p.instruction, p.input, p.output, p.context),
        }
        for name, p in PAIRS.items()
    ]
    (root / KEY).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / KEY / "train-00000-of-00001.parquet")
    (root / "README.md").write_text(
        f"---\nlicense: cc-by-4.0\nconfigs:\n- config_name: {KEY}\n  data_files:\n"
        f"  - split: train\n    path: {KEY}/train-*.parquet\n---\n",
        encoding="utf-8",
    )
    return root


def _exchanges() -> list[Exchange]:
    return [Exchange(p.instruction, p.output, p.input, p.context) for p in PAIRS.values()]


def test_the_layout_opens_once_cuts_the_target_and_masks_the_prompt(tokenizer):
    plain, given, chat, long, full = lay_out(tokenizer, "chat", _exchanges(), max_length=MAX_LENGTH, stop=True)
    eos = tokenizer.eos_token_id
    # SmolLM2's chat template writes its BOS: the sequence starts with exactly one.
    assert plain.ids[0] == tokenizer.bos_token_id and plain.ids[1] != tokenizer.bos_token_id
    assert plain.start == plain.prompt_tokens
    assert tokenizer.decode(plain.ids[plain.start :]) == "The sum is 5." + tokenizer.eos_token
    assert plain.labels == [IGNORE_INDEX] * plain.start + [*plain.ids[plain.start :]]
    assert "Bonjour, ami." in given.prompt
    assert all(turn.content in chat.prompt for turn in CONTEXT)
    assert chat.prompt.index("What is 2 + 2?") < chat.prompt.index("And times 3?")
    # The long response is cut at MAX_LENGTH, its EOS with it; the prompt that fills MAX_LENGTH keeps no target.
    assert len(long.ids) == MAX_LENGTH and long.n < long.target_tokens and long.ids[-1] != eos
    assert full.n == 0 and full.start > MAX_LENGTH and full.mask == [0] * full.start
    # Without a cut or a stop token, the target is all of the response's tokens.
    whole = lay_out(tokenizer, "chat", _exchanges()[3:4])[0]
    assert (
        whole.n == whole.target_tokens == len(tokenizer(PAIRS["long"].output, add_special_tokens=False)["input_ids"])
    )


@pytest.mark.parametrize("template", ["chat", "vicuna"])
def test_the_trainer_trains_on_the_ids_the_scorer_scored(tmp_path, tiny_llama_dir, tokenizer, template):
    scored = lay_out(tokenizer, template, _exchanges(), max_length=MAX_LENGTH)
    trained = lay_out(tokenizer, template, _exchanges(), max_length=MAX_LENGTH, stop=True)

    # The scorer: each pair's conditional job is the layout, its loss on the layout's target tokens.
    planner = Planner(tokenizer, template, MAX_LENGTH)
    plans = planner.plan(list(PAIRS.values()))
    for name, plan, layout in zip(PAIRS, plans, scored, strict=True):
        if name == "full":
            assert plan.jobs[0] is None and "fills max_length" in plan.ifd_reason
            continue
        job = planner.jobs[plan.jobs[0]]
        assert (job.ids, job.start, job.n) == (layout.ids, layout.start, layout.n)
        assert plan.n_response == layout.n and plan.n_prompt == layout.prompt_tokens

    # The trainer: the rows TRL will feed the model, after its own preparation.
    job = build_trainer(
        FinetuneConfig(
            dataset=str(_release(tmp_path / "release")),
            config=KEY,
            base_model=str(tiny_llama_dir),
            output_dir=tmp_path / "out",
            template=template,
            max_length=MAX_LENGTH,
        )
    )
    seen = {row["id"]: row for row in job.trainer.train_dataset}
    assert sorted(seen) == sorted(name for name in PAIRS if name != "full")  # nothing left to train on
    eos = tokenizer.eos_token_id
    for name, score_layout, train_layout in zip(PAIRS, scored, trained, strict=True):
        if name == "full":
            continue
        assert seen[name]["input_ids"] == list(train_layout.ids)
        assert seen[name]["labels"] == train_layout.labels
        # What was scored, then the EOS where it still fits: the long row is cut where the scorer cut it.
        expected = [*score_layout.ids] if name == "long" else [*score_layout.ids, eos]
        assert seen[name]["input_ids"] == expected
