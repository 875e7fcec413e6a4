"""Fine-tuning a student on its subset, on the token ids it was scored on.

A tiny random-weight Llama that carries SmolLM2's real tokenizer stands in for the student, so the token ids,
the chat template and the EOS are the real ones while a step takes a fraction of a second on CPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recycled_datasets.chat import turns_of
from recycled_datasets.cli import main
from recycled_datasets.finetune import FINETUNE_FILE, FinetuneConfig, build_trainer, finetune
from recycled_datasets.models import load_tokenizer, resolve_student
from recycled_datasets.records import Pair, Turn
from recycled_datasets.scoring.plan import Planner
from recycled_datasets.templates import render_prompt
from recycled_datasets.tokens import IGNORE_INDEX, Exchange, lay_out

KEY = "smollm2-135m"
DATASET_LICENSE = "cc-by-4.0"  # differs from the fallback, so the test sees it was read from the card


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_student(KEY))


@pytest.fixture(scope="module")
def base_dir(tiny_llama_dir: Path) -> Path:
    return tiny_llama_dir


def _rows() -> list[dict]:
    rows = []
    for i in range(32):
        a, b = i % 7 + 1, i % 5 + 2
        rows.append(
            {
                "instruction": f"Add {a} and {b}.",
                "input": "" if i % 2 else "Answer with one sentence.",
                "output": f"The sum of {a} and {b} is {a + b}.",
                "id": f"row{i:02d}",
                "variant": "both" if i % 2 else "res",
                "ifd": 0.8,
                "rifd": 0.5,
                "student": KEY,
                "teacher": "test-teacher",
            }
        )
    return rows


def _write_release(root: Path, rows: list[dict]) -> Path:
    """A released dataset in Hub layout with one config, as load_dataset reads it from a folder."""
    (root / KEY).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / KEY / "train-00000-of-00001.parquet")
    (root / "README.md").write_text(
        f"---\nlicense: {DATASET_LICENSE}\nconfigs:\n- config_name: {KEY}\n  data_files:\n"
        f"  - split: train\n    path: {KEY}/train-*.parquet\n---\n# A test release\n",
        encoding="utf-8",
    )
    return root


@pytest.fixture(scope="module")
def subset_dir(tmp_path_factory) -> Path:
    return _write_release(tmp_path_factory.mktemp("release"), _rows())


def _complete_checkpoints(output: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1]) for p in output.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
    )


def test_cli_trains_a_checkpoint_that_reloads_generates_and_cites_its_data(
    tmp_path, base_dir, subset_dir, tokenizer, monkeypatch
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("SRECYCLE_QUIET", "")  # restored afterwards; the command sets it for --quiet
    output = tmp_path / "out"
    main(
        [
            "finetune",
            "--dataset", str(subset_dir),
            "--config", KEY,
            "--base", str(base_dir),
            "--output", str(output),
            "--max-steps", "8",
            "--per-device-batch-size", "8",
            "--global-batch-size", "8",
            "--learning-rate", "3e-3",
            "--logging-steps", "1",
            "--save-steps", "8",
            "--quiet",
        ]
    )  # fmt: skip

    # The loss goes down.
    state = json.loads((output / "checkpoint-8" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.5, losses

    # Every parameter moved away from the base.
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32)
    unchanged = [name for name, value in trained.state_dict().items() if torch.equal(value, base[name])]
    assert unchanged == []

    # The checkpoint reloads with its tokenizer and generates.
    tok = AutoTokenizer.from_pretrained(output)
    prompt = render_prompt("chat", "Add 2 and 3.", tokenizer=tok)
    encoded = tok(prompt, add_special_tokens=False, return_tensors="pt")
    generated = trained.generate(**encoded, max_new_tokens=5, do_sample=False)
    assert 1 <= generated.shape[1] - encoded["input_ids"].shape[1] <= 5

    # The record names the data, the template it was scored with, and the recipe actually used.
    record = json.loads((output / FINETUNE_FILE).read_text())
    assert record["dataset"] == str(subset_dir)
    assert record["config"] == KEY and record["student"] == KEY
    assert record["template"] == "chat"
    assert record["dataset_revision"] is None
    assert record["license"] == DATASET_LICENSE
    assert record["base_model"] == str(base_dir)
    assert record["hyperparameters"]["global_batch_size"] == 8
    assert record["hyperparameters"]["gradient_accumulation_steps"] == 1
    assert record["hyperparameters"]["learning_rate"] == pytest.approx(3e-3)
    assert record["train_loss"] == pytest.approx(sum(losses) / len(losses))

    # The README is the project's card, naming the dataset config, not TRL's default card.
    card = (output / "README.md").read_text()
    assert KEY in card and str(subset_dir) in card
    assert "huggingface/trl" not in card
    assert not (output / "checkpoint-8" / "README.md").exists()


# Rows for the layout test: with and without input, with a chat context, a response cut at MAX_LENGTH, and a
# prompt longer than MAX_LENGTH on its own.
MAX_LENGTH = 96
CONTEXT = (Turn("system", "Answer briefly."), Turn("user", "What is 2 + 2?"), Turn("assistant", "4."))
PAIRS = {
    "plain": Pair("Add 2 and 3.", "", "The sum is 5."),
    "input": Pair("Translate to English.", "Bonjour, ami.", "Hello, friend."),
    "chat": Pair("And times 3?", "", "That makes 12.", CONTEXT),
    "long": Pair("Describe the sea.", "", "The sea is wide and deep and blue. " * 20),
    "full": Pair("Repeat: " + "la " * 200, "", "ok"),
}


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
def test_the_trainer_trains_on_the_ids_the_scorer_scored(tmp_path, base_dir, tokenizer, template):
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

    # The trainer: the rows TRL feeds the model, after its own preparation.
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
    release = _write_release(tmp_path / "release", rows)
    config = FinetuneConfig(
        dataset=str(release),
        config=KEY,
        base_model=str(base_dir),
        output_dir=tmp_path / "out",
        template=template,
        max_length=MAX_LENGTH,
    )
    seen = {row["id"]: row for row in build_trainer(config).trainer.train_dataset}
    assert sorted(seen) == sorted(name for name in PAIRS if name != "full")  # nothing left to train on
    eos = tokenizer.eos_token_id
    for name, score_layout, train_layout in zip(PAIRS, scored, trained, strict=True):
        if name == "full":
            continue
        example, pair = seen[name], PAIRS[name]
        assert example["input_ids"] == list(train_layout.ids)
        assert example["labels"] == train_layout.labels
        # What was scored, then the EOS where it still fits: the long row is cut where the scorer cut it.
        assert example["input_ids"] == ([*score_layout.ids] if name == "long" else [*score_layout.ids, eos])
        # The strings: the scored prompt, and the raw response followed by EOS.
        prompt = render_prompt(template, pair.instruction, pair.input, tokenizer=tokenizer, context=pair.context)
        assert example["prompt"] == prompt
        assert example["completion"] == pair.output + tokenizer.eos_token
        if name != "long":  # read back: the start token (unless the template writes it), prompt and completion
            start = "" if prompt.startswith(tokenizer.bos_token) else tokenizer.bos_token
            assert tokenizer.decode(example["input_ids"]) == start + prompt + example["completion"]


@pytest.mark.parametrize("template", ["vicuna", "alpaca", "wizardlm"])
def test_fine_tuning_on_a_reference_scored_subset_trains_on_the_scored_ids(tmp_path, base_dir, tokenizer, template):
    """The subset's report says it was scored with the reference layout: the trainer lays it out the same way."""
    single = {name: pair for name, pair in PAIRS.items() if not pair.context}
    planner = Planner(tokenizer, template, MAX_LENGTH, "reference")
    plans = planner.plan(list(single.values()))
    rows = [
        {
            "id": name,
            "instruction": p.instruction,
            "input": p.input,
            "output": p.output,
            "messages": turns_of(p.instruction, p.input, p.output, ()),
        }
        for name, p in single.items()
    ]
    release = _write_release(tmp_path / "release", rows)
    (release / KEY / "report.json").write_text(json.dumps({"student": {"key": KEY, "scoring": "reference"}}))
    config = FinetuneConfig(
        dataset=str(release),
        config=KEY,
        base_model=str(base_dir),
        output_dir=tmp_path / "out",
        template=template,
        max_length=MAX_LENGTH,
        max_steps=2,
        per_device_batch_size=2,
        global_batch_size=2,
        logging_steps=1,
    )
    job = build_trainer(config)
    assert job.scoring == "reference"
    seen = {row["id"]: row for row in job.trainer.train_dataset}
    eos = tokenizer.eos_token_id
    for name, plan in zip(single, plans, strict=True):
        if name == "full":  # the prompt fills max_length: nothing was scored, nothing is trained
            assert plan.jobs[0] is None and name not in seen
            continue
        scored = planner.jobs[plan.jobs[0]]
        example = seen[name]
        # What the scorer scored (prompt + response as one string), then the EOS where it still fits.
        expected = [*scored.ids] if len(scored.ids) == MAX_LENGTH else [*scored.ids, eos]
        assert example["input_ids"] == expected
        assert example["labels"][: scored.start] == [IGNORE_INDEX] * scored.start
        assert example["labels"][scored.start : scored.start + scored.n] == list(scored.ids[scored.start :])
    job.trainer.train()
    losses = [e["loss"] for e in job.trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_a_release_from_before_the_two_conventions_trains_in_the_split_layout(tmp_path):
    """Its report names no convention: it was scored split, whatever today's default for its template."""
    from recycled_datasets.finetune.data import load_subset

    release = _write_release(tmp_path / "release", _rows())
    assert load_subset(str(release), KEY).scoring is None  # no report: not a release of ours, the default applies
    (release / KEY / "report.json").write_text(json.dumps({"student": {"key": KEY, "template": "vicuna"}}))
    assert load_subset(str(release), KEY).scoring == "split"
    (release / KEY / "report.json").write_text(json.dumps({"student": {"key": KEY, "scoring": "reference"}}))
    assert load_subset(str(release), KEY).scoring == "reference"


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, base_dir, subset_dir):
    output = tmp_path / "out"
    args = [
        "finetune",
        "--dataset", str(subset_dir),
        "--config", KEY,
        "--base", str(base_dir),
        "--output", str(output),
        "--per-device-batch-size", "4",
        "--global-batch-size", "4",
        "--learning-rate", "1e-3",
        "--logging-steps", "1",
        "--save-steps", "2",
        "--quiet",
    ]  # fmt: skip
    log = tmp_path / "killed.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", "from recycled_datasets.cli import main; main()", *args, "--max-steps", "1000"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SRECYCLE_QUIET": "1"},
        )
        try:
            deadline = time.monotonic() + 300
            while not _complete_checkpoints(output) and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            process.kill()
            process.wait(timeout=60)
    steps = _complete_checkpoints(output)
    assert steps, f"no checkpoint was written before the kill; the run said:\n{log.read_text()[-3000:]}"
    assert not (output / FINETUNE_FILE).exists()  # the killed run never finished
    resumed = steps[-1]
    before = json.loads((output / f"checkpoint-{resumed}" / "trainer_state.json").read_text())["log_history"]

    result = finetune(
        FinetuneConfig(
            dataset=str(subset_dir),
            config=KEY,
            base_model=str(base_dir),
            output_dir=output,
            per_device_batch_size=4,
            global_batch_size=4,
            learning_rate=1e-3,
            logging_steps=1,
            save_steps=2,
            max_steps=resumed + 2,
        )
    )
    assert result.resumed_from == output / f"checkpoint-{resumed}"
    assert result.first_step == resumed
    assert [step for step, _ in result.losses] == [resumed + 1, resumed + 2]
    assert result.global_step == resumed + 2
    after = json.loads((output / f"checkpoint-{resumed + 2}" / "trainer_state.json").read_text())
    assert after["global_step"] == resumed + 2
    assert after["log_history"][: len(before)] == before  # the killed run's history carries on
    assert json.loads((output / FINETUNE_FILE).read_text())["global_step"] == resumed + 2


def test_resume_skips_a_checkpoint_left_half_written(tmp_path):
    from recycled_datasets.finetune import last_checkpoint

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10").mkdir()  # killed while saving: weights maybe, trainer state not yet
    (tmp_path / "checkpoint-10" / "model.safetensors").write_bytes(b"")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert last_checkpoint(tmp_path / "absent") is None


def test_user_errors_stop_before_training_with_one_line(tmp_path, base_dir, subset_dir, capsys, monkeypatch):
    monkeypatch.setenv("SRECYCLE_QUIET", "")
    common = ["finetune", "--config", KEY, "--base", str(base_dir), "--output", str(tmp_path / "out"), "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main([*common, "--dataset", str(subset_dir), "--push", "no-org"])
    assert exit_info.value.code == 2
    assert "ORG/NAME" in capsys.readouterr().err

    rows = _rows()
    rows[5]["output"] = "  "  # the sixth row, numbered from 1 as in every error message
    broken = _write_release(tmp_path / "broken", rows)
    with pytest.raises(SystemExit) as exit_info:
        main([*common, "--dataset", str(broken)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert str(broken) in err and "row 6" in err and "'output'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
