"""Chat-format data: sources in ``messages`` / ShareGPT form, multi-turn rows through every stage, and
releases that TRL's ``SFTTrainer`` trains on as they are.

The build here uses a fixture teacher on 127.0.0.1 that records every prompt (so a test can see what the
teacher was shown) and the embedded SmolLM2 student; the embedded teacher runs in the slow test.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_llama
from teacher_server import Faults, TeacherServer, realistic_reply

from recycled_datasets.chat import context_of, message_type, user_turn
from recycled_datasets.cli import main
from recycled_datasets.errors import InputError
from recycled_datasets.models import load_tokenizer, resolve_student
from recycled_datasets.records import Pair, Turn, content_id
from recycled_datasets.scoring import ScoreConfig, score_pairs
from recycled_datasets.scoring.plan import Planner
from recycled_datasets.sources import read_source
from recycled_datasets.teacher.prompts import default_prompts
from recycled_datasets.templates import VICUNA_SYSTEM, render_prompt
from recycled_datasets.workdir.files import write_table
from recycled_datasets.workdir.tables import read_reflections_table

ROOT = Path(__file__).resolve().parents[1]
CHAT_SAMPLE = ROOT / "recycled_datasets" / "data" / "chat_sample.jsonl"
STUDENT = "smollm2-135m"


def sample_records() -> list[dict]:
    return [json.loads(line) for line in CHAT_SAMPLE.read_text(encoding="utf-8").splitlines()]


def sharegpt(record: dict) -> dict:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[t["role"]], "value": t["content"]} for t in record["messages"]]}


def key(data) -> list[tuple]:
    return [(r.id, r.instruction, r.input, r.output, r.context) for r in data.rows]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_student(STUDENT))


# ---- sources ------------------------------------------------------------------------------------------------
def test_chat_sample_rows_have_their_earlier_turns_as_context():
    data = read_source(CHAT_SAMPLE)
    assert len(data.rows) == 8
    first = data.rows[0]
    assert (first.instruction, first.input) == ("Is 21 prime?", "")
    assert first.output.startswith("No. 21 = 3 x 7")
    assert [t.role for t in first.context] == ["system", "user", "assistant"]
    assert first.context[0] == Turn("system", "You are a patient maths tutor. Keep answers short.")
    assert data.rows[1].context == ()  # a single-turn chat has no context
    assert [t.role for t in data.rows[2].context] == ["system"]


def test_a_single_turn_chat_row_is_the_alpaca_row(tmp_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(
        json.dumps([{"instruction": "Give me a name for a grey cat.", "input": "", "output": "Pebble."}])
    )
    chat_row = read_source(CHAT_SAMPLE).rows[1]
    alpaca_row = read_source(alpaca).rows[0]
    assert (chat_row.id, chat_row.instruction, chat_row.input, chat_row.output, chat_row.context) == (
        alpaca_row.id,
        alpaca_row.instruction,
        alpaca_row.input,
        alpaca_row.output,
        alpaca_row.context,
    )


def test_alpaca_rows_keep_their_ids_and_score_digests():
    """Workdirs built before chat rows existed stay valid: same row ids, same digest of the pairs to score."""
    import hashlib

    from recycled_datasets.workdir.pairs import pairs_digest as _pairs_digest

    row = ("Add 2 and 3.", "Answer briefly.", "5")
    assert content_id(*row) == hashlib.sha256("\x1f".join(row).encode()).hexdigest()[:16]
    old = hashlib.sha256(("\x1f".join(row)).encode() + b"\x1e").hexdigest()
    assert _pairs_digest([Pair(*row)]) == old
    assert _pairs_digest([Pair(*row, context=CONTEXT)]) != old
    assert content_id(*row, CONTEXT) != content_id(*row)


def test_sharegpt_parquet_save_to_disk_and_split_ids_read_the_same_rows(tmp_path, monkeypatch):
    import datasets

    records = sample_records()
    expected = key(read_source(CHAT_SAMPLE))
    parquet = tmp_path / "sharegpt.parquet"
    pq.write_table(pa.Table.from_pylist([sharegpt(r) for r in records]), parquet)
    assert key(read_source(parquet)) == expected

    saved = tmp_path / "saved"
    datasets.Dataset.from_list(records).save_to_disk(str(saved))
    assert key(read_source(saved)) == expected
    saved_dict = tmp_path / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(str(saved_dict))
    assert key(read_source(saved_dict)) == expected

    # ORG/NAME:SPLIT picks a split; a local folder of that name stands in for the Hub here.
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "org" / "chats" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(records[:3]), folder / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(records[3:]), folder / "test-00000-of-00001.parquet")
    assert key(read_source("org/chats:test")) == expected[3:]
    assert key(read_source("org/chats")) == expected[:3]  # no split named: train
    with pytest.raises(InputError, match="org/chats:nope: could not load it with datasets"):
        read_source("org/chats:nope")


BAD_TURNS = [
    ([{"role": "user", "content": "Hi"}], "has no assistant turn"),
    (
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "?"},
        ],
        "ends with a user turn",
    ),
    (
        [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"}],
        "turn 1 is a assistant turn where a user turn belongs",
    ),
    (
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
        "turn 2 is a user turn where a assistant turn belongs .roles out of order",
    ),
    (
        [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "assistant", "content": "c"}],
        "only the first turn may be a system turn",
    ),
    (
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}],
        r"turn 2 \(assistant\): its content is empty",
    ),
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "turn 2 has the role 'tool'"),
    ([], "must be a non-empty list of turns"),
    ("hello", "must be a non-empty list of turns, found str"),
]


@pytest.mark.parametrize(("turns", "message"), BAD_TURNS)
def test_a_bad_chat_row_names_file_row_and_what_is_wrong(tmp_path, turns, message):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    path.write_text(good + "\n" + json.dumps({"messages": turns}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"bad.jsonl, row 2, field 'messages': .*{message}") as e:
        read_source(path)
    assert "\n" not in str(e.value)
    data = read_source(path, skip_invalid=True)
    assert len(data.rows) == 1 and [(i.row, i.field) for i in data.invalid] == [(2, "messages")]


def test_a_bad_sharegpt_row_names_its_column(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"conversations": [{"from": "human", "value": "Hi"}]}]), path)
    with pytest.raises(InputError, match=r"bad.parquet, row 1, field 'conversations': has no assistant turn"):
        read_source(path)


def test_cli_bad_chat_row_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["build", "--source", str(path), "--student", STUDENT, "--workdir", str(tmp_path / "w"), "-q"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "row 1, field 'messages'" in err and "has no assistant turn" in err


# ---- formats and prompts ------------------------------------------------------------------------------------
CONTEXT = (Turn("system", "Be brief."), Turn("user", "Hi"), Turn("assistant", "Hello."))


def test_templates_put_the_context_before_the_last_exchange(tokenizer):
    assert (
        render_prompt("vicuna", "2+2?", context=CONTEXT)
        == "Be brief. USER: Hi ASSISTANT: Hello.</s>USER: 2+2? ASSISTANT:"
    )
    assert render_prompt("vicuna", "2+2?", context=CONTEXT[1:]) == (
        f"{VICUNA_SYSTEM} USER: Hi ASSISTANT: Hello.</s>USER: 2+2? ASSISTANT:"
    )
    transcript = "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\n"
    assert render_prompt("wizardlm", "2+2?", context=CONTEXT) == transcript + "2+2?\n\n### Response:"
    assert render_prompt("none", "2+2?", context=CONTEXT) == transcript + "2+2?\n"
    assert render_prompt("alpaca", "2+2?", context=CONTEXT) == transcript + render_prompt("alpaca", "2+2?")
    turns = [{"role": t.role, "content": t.content} for t in CONTEXT] + [{"role": "user", "content": "2+2?"}]
    assert render_prompt("chat", "2+2?", tokenizer=tokenizer, context=CONTEXT) == tokenizer.apply_chat_template(
        turns, tokenize=False, add_generation_prompt=True
    )


def test_the_teacher_sees_the_earlier_turns_before_the_example():
    prompts = default_prompts()
    plain = prompts.render_response("2+2?", "", "4")
    with_context = prompts.render_response("2+2?", "", "4", CONTEXT)
    assert with_context.endswith(plain) and with_context != plain
    head = with_context[: -len(plain)]
    assert head.index("System: Be brief.") < head.index("User: Hi") < head.index("Assistant: Hello.")
    assert prompts.render_instruction("2+2?", "", "4", CONTEXT).endswith(prompts.render_instruction("2+2?", "", "4"))


# ---- scores -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_single_turn_chat_and_alpaca_rows_score_the_same(tmp_path, template):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(
        json.dumps([{"instruction": "Give me a name for a grey cat.", "input": "", "output": "Pebble."}])
    )
    chat = read_source(CHAT_SAMPLE).rows[1]
    row = read_source(alpaca).rows[0]
    pairs = [Pair(r.instruction, r.input, r.output, r.context) for r in (chat, row)]
    frame = score_pairs(pairs, resolve_student(STUDENT), ScoreConfig(template=template, dtype="float32"))
    chat_scores, alpaca_scores = frame.to_dicts()
    assert chat_scores["status"] == "ok" and math.isfinite(chat_scores["ifd"]) and math.isfinite(chat_scores["rifd"])
    assert chat_scores == alpaca_scores


def test_the_conditioned_passes_include_the_context(tokenizer):
    row = read_source(CHAT_SAMPLE).rows[0]
    with_context, alone = Planner(tokenizer, "chat", 2048).plan(
        [Pair(row.instruction, "", row.output, row.context), Pair(row.instruction, "", row.output)]
    )
    # the direct passes are the same sequences; the conditional ones are longer by the earlier turns
    assert with_context.jobs[1] == alone.jobs[1] and with_context.jobs[3] == alone.jobs[3]
    assert with_context.n_prompt > alone.n_prompt and with_context.n_reverse_prompt > alone.n_reverse_prompt
    earlier = len(tokenizer(CONTEXT[0].content, add_special_tokens=False)["input_ids"])
    assert with_context.n_prompt - alone.n_prompt > earlier


# ---- a build from chat rows ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recording_teacher():
    prompts: list[str] = []

    def reply(user_text: str, temperature: float) -> str:
        prompts.append(user_text)
        return realistic_reply(user_text, temperature)

    with TeacherServer(faults=Faults(reply=reply)) as server:
        server.prompts = prompts
        yield server


@pytest.fixture(scope="module")
def chat_build(recording_teacher, tmp_path_factory) -> tuple[Path, str]:
    """The first 4 sample rows (multi-turn with and without a system turn, single-turn) with 2 bad rows mixed in."""
    folder = tmp_path_factory.mktemp("chat")
    lines = CHAT_SAMPLE.read_text(encoding="utf-8").splitlines()
    bad = [json.dumps({"messages": [{"role": "user", "content": "unanswered"}]}), json.dumps({"messages": []})]
    source = folder / "chats.jsonl"
    source.write_text("\n".join([lines[0], bad[0], lines[1], lines[2], bad[1], lines[3]]) + "\n", encoding="utf-8")
    workdir = folder / "work"
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()
    with redirect_stdout(out):
        main(
            ["build", "--source", str(source), "--student", STUDENT, "--teacher", recording_teacher.url]
            + ["--workdir", str(workdir), "--skip-invalid", "--keep-unreflected", "--limit", "4", "-q"]
        )
    return workdir, out.getvalue()


def test_build_counts_skipped_chat_rows_and_keeps_every_context(chat_build):
    workdir, printed = chat_build
    assert "4 (2 invalid skipped)" in printed
    reflections = pl.read_parquet(workdir / "reflections.parquet")
    assert reflections.height == 4
    contexts = [c or [] for c in reflections["context"].to_list()]
    assert [[t["role"] for t in c] for c in contexts] == [
        ["system", "user", "assistant"],
        [],
        ["system"],
        ["user", "assistant"],
    ]


def test_the_teacher_was_shown_the_earlier_turns(chat_build, recording_teacher):
    prompts = recording_teacher.prompts
    about_primes = [p for p in prompts if "Is 21 prime?" in p]
    assert about_primes and all("[Earlier turns]" in p and "What is a prime number?" in p for p in about_primes)
    about_cats = [p for p in prompts if "grey cat" in p]
    assert about_cats and not any("[Earlier turns]" in p for p in about_cats)
    # both reflects ins's new instruction, still after the same earlier turns
    assert any("[Earlier turns]" in p and "Explain in depth" in p and "Is 21 prime?" in p for p in about_primes)


def test_reflect_writes_the_context_beside_the_variants(recording_teacher, tmp_path):
    out = tmp_path / "reflections.parquet"
    main(
        ["reflect", str(CHAT_SAMPLE), "--teacher", recording_teacher.url, "--output", str(out)]
        + ["--store", str(tmp_path / "store"), "--limit", "2", "--quiet"]
    )
    table = pl.read_parquet(out)
    rows = read_source(CHAT_SAMPLE, limit=2).rows
    assert table["id"].to_list() == [r.id for r in rows]
    assert [context_of(c) for c in table["context"].to_list()] == [r.context for r in rows]
    # the earlier turns are typed like ``messages``, not JSON text to decode
    assert pq.read_schema(out).field("context").type == message_type()


def test_a_workdir_whose_context_is_json_text_reads_as_turns(chat_build, tmp_path):
    """Workdirs written before the context column was typed held JSON text; they read the same turns."""
    workdir, _ = chat_build
    table = read_reflections_table(workdir)
    turns = table.column("context").to_pylist()
    text = pa.array([None if t is None else json.dumps(t) for t in turns], type=pa.string())
    old = tmp_path / "old"
    shutil.copytree(workdir, old)
    write_table(table.set_column(table.column_names.index("context"), "context", text), old / "reflections.parquet")
    again = read_reflections_table(old)
    assert again.schema.field("context").type == message_type()
    assert again.column("context").to_pylist() == turns and any(turns)


def test_release_configs_carry_messages_with_the_context(chat_build):
    import datasets

    workdir, _ = chat_build
    contexts = {r.id: r.context for r in read_source(CHAT_SAMPLE, limit=4).rows}
    subset = datasets.load_dataset(str(workdir / "dataset"), STUDENT, split="train")
    assert {"messages", "prompt", "completion", "instruction", "input", "output"} <= set(subset.column_names)
    assert len(subset) > 0
    for row in subset:
        context = [{"role": t.role, "content": t.content} for t in contexts[row["id"]]]
        last = [{"role": "user", "content": user_turn(row["instruction"], row["input"])}]
        assert row["messages"] == context + last + [{"role": "assistant", "content": row["output"]}]
        assert row["prompt"] == context + last and row["completion"] == row["messages"][-1:]
    # A release read back as a source keeps the earlier turns: the turns win over the Alpaca fields.
    again = read_source(workdir / "dataset" / STUDENT / "train-00000-of-00001.parquet").rows
    assert [r.context for r in again] == [contexts[row["id"]] for row in subset]
    reflections = datasets.load_dataset(str(workdir / "dataset"), "reflections", split="train")
    first_ins = next(r for r in reflections if r["variant"] == "ins" and contexts[r["id"]])
    assert first_ins["instruction"].startswith("Explain in depth")  # the new instruction replaced the last user turn
    assert [t["content"] for t in first_ins["messages"][:-2]] == [t.content for t in contexts[first_ins["id"]]]
    assert first_ins["messages"][-2] == {"role": "user", "content": first_ins["instruction"]}


def test_scores_of_multi_turn_rows_condition_on_the_context(chat_build, tokenizer):
    workdir, _ = chat_build
    scores = pl.read_parquet(workdir / "students" / STUDENT / "scores.parquet").filter(pl.col("variant") == "ori")
    rows = read_source(CHAT_SAMPLE, limit=4).rows
    plans = Planner(tokenizer, "chat", 2048).plan([Pair(r.instruction, r.input, r.output, r.context) for r in rows])
    assert scores["n_prompt_tokens"].to_list() == [p.n_prompt for p in plans]
    assert (scores["status"] == "ok").all()


def test_sft_trainer_trains_on_a_released_config_as_is_with_loss_on_the_last_assistant_turn(
    chat_build, tokenizer, tmp_path
):
    import datasets
    from trl import SFTConfig, SFTTrainer

    workdir, _ = chat_build
    train = datasets.load_dataset(str(workdir / "dataset"), STUDENT, split="train")
    model = tiny_llama(tokenizer, hidden_size=32, layers=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    end_of_turn = "<|im_end|>\n"
    multi_turn = 0
    for row, example in zip(train, trainer.train_dataset, strict=True):
        ids, labels = example["input_ids"], example["labels"]
        trained = [i for i, label in zip(ids, labels, strict=True) if label != -100]
        assert tokenizer.decode(trained) == row["output"] + end_of_turn
        # the trained tokens are the tail of the sequence: no earlier turn carries loss
        assert labels[len(ids) - len(trained) :] == ids[len(ids) - len(trained) :]
        whole = tokenizer.decode(ids)
        for turn in row["messages"][:-1]:
            assert turn["content"] in whole
        multi_turn += len(row["messages"]) > 2
    assert multi_turn > 0
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_finetune_examples_keep_the_context_in_the_prompt_and_train_on_the_last_turn(chat_build, tokenizer):
    import datasets

    from recycled_datasets.finetune import training_examples

    workdir, _ = chat_build
    rows = datasets.load_dataset(str(workdir / "dataset"), STUDENT, split="train")
    examples = training_examples(rows, tokenizer, "chat", source="release")
    for row, example in zip(rows, examples, strict=True):
        context = [Turn(t["role"], t["content"]) for t in row["messages"][:-2]]
        assert example["prompt"] == render_prompt(
            "chat", row["instruction"], row["input"], tokenizer=tokenizer, context=context
        )
        trained = [i for i, m in zip(example["input_ids"], example["completion_mask"], strict=True) if m]
        assert tokenizer.decode(trained) == row["output"] + tokenizer.eos_token


def test_finetune_refuses_messages_that_disagree_with_the_training_fields(chat_build, tokenizer):
    import datasets

    from recycled_datasets.finetune import training_examples

    workdir, _ = chat_build
    rows = datasets.load_dataset(str(workdir / "dataset"), STUDENT, split="train")
    edited = rows.map(lambda r: {"output": r["output"] + " (edited)"})
    with pytest.raises(InputError, match="release, row 1, field 'messages': the last two turns"):
        training_examples(edited, tokenizer, "chat", source="release")


@pytest.mark.slow
def test_build_of_the_chat_sample_with_the_embedded_teacher_and_student(tmp_path):
    """Acceptance: multi-turn rows through srecycle build with the local SmolLM2 teacher (slow on CPU)."""
    import datasets

    workdir = tmp_path / "chat"
    main(
        ["build", "--source", str(CHAT_SAMPLE), "--limit", "2", "--student", STUDENT, "--teacher", "local"]
        + ["--max-new-tokens", "24", "--keep-unreflected", "--workdir", str(workdir), "-q"]
    )
    subset = datasets.load_dataset(str(workdir / "dataset"), STUDENT)["train"]
    assert "messages" in subset.column_names and len(subset) > 0
    reflections = datasets.load_dataset(str(workdir / "dataset"), "reflections")["train"]
    contexts = {r.id: r.context for r in read_source(CHAT_SAMPLE, limit=2).rows}
    for row in [*subset, *reflections]:
        assert [t["content"] for t in row["messages"][:-2]] == [t.content for t in contexts[row["id"]]]
        assert row["messages"][-1] == {"role": "assistant", "content": row["output"]}
    # the first sample row: system turn, one earlier exchange, then the last exchange
    assert [len(r["messages"]) for r in reflections] == [5] * 4 + [2] * 4
