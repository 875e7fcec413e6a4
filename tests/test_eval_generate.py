"""Test sets as the paper's files spell them, answers from a server through the teacher's client, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import SHARED_DATA
from teacher_server import Faults, TeacherServer, one_line_cli_error

from recycled_datasets.cli import main
from recycled_datasets.evaluation.generate import ANSWER_COLUMNS
from recycled_datasets.evaluation.testsets import read_questions, set_name
from recycled_datasets.templates import render_prompt

EVAL = SHARED_DATA / "eval"
PAPER_SIZES = {"vicuna": 80, "koala": 180, "wizardlm": 218, "sinstruct": 252, "lima": 300}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_each_files_question_field_and_name(tmp_path):
    folder = tmp_path / "sets"
    folder.mkdir()
    _jsonl(folder / "vicuna_test_set.jsonl", [{"question_id": 7, "text": "Vicuna question?", "category": "x"}])
    _jsonl(folder / "koala_test_set.jsonl", [{"id": "koala_0", "prompt": "Koala question?"}])
    _jsonl(folder / "wizardlm_test_set.jsonl", [{"idx": 1, "Skill": "Math", "Instruction": "WizardLM question?"}])
    _jsonl(folder / "sinstruct_test_set.jsonl", [{"id": "u_0", "instruction": "Self-Instruct question?"}])
    _jsonl(folder / "lima_test_set.jsonl", [{"conversations": "LIMA question?"}])
    turns = [{"from": "human", "value": "A chat question?"}, {"from": "gpt", "value": "An answer."}]
    (folder / "chat.json").write_text(json.dumps([{"conversations": turns}]), encoding="utf-8")
    (folder / "notes.txt").write_text("not a test set")
    questions = read_questions([folder])
    assert [(q.test_set, q.id, q.instruction) for q in questions] == [
        ("chat", "1", "A chat question?"),
        ("koala", "koala_0", "Koala question?"),
        ("lima", "1", "LIMA question?"),
        ("sinstruct", "u_0", "Self-Instruct question?"),
        ("vicuna", "7", "Vicuna question?"),
        ("wizardlm", "1", "WizardLM question?"),
    ]
    assert set_name(Path("x/my_questions.parquet")) == "my_questions"


def test_the_papers_five_files(tmp_path):
    if not EVAL.is_dir():
        pytest.skip(f"{EVAL} not found (../shared is absent)")
    questions = read_questions([EVAL])
    sizes = {name: sum(q.test_set == name for q in questions) for name in PAPER_SIZES}
    assert sizes == PAPER_SIZES
    assert all(q.instruction.strip() for q in questions)
    assert len(read_questions([EVAL], limit=5)) == 25


def test_answers_from_a_server_in_the_models_own_format_then_none_again(tmp_path, capsys):
    tests = _jsonl(tmp_path / "mini_test_set.jsonl", [{"text": f"Question number {i}?"} for i in range(4)])
    out = tmp_path / "answers.parquet"
    echo = Faults(burst_429=2, reply=lambda text, temperature: f"ECHO {text}")  # the server shows what it got
    with TeacherServer(model="fixture/student-7b", faults=echo) as srv:
        args = ["generate", "--server", srv.url, "--api", "generate", "--template", "vicuna"]
        args += ["--test-sets", str(tests), "--output", str(out), "--max-new-tokens", "200", "-q"]
        main(args)
        table = pl.read_parquet(out)
        assert table.columns == list(ANSWER_COLUMNS) and table.height == 4
        assert table["test_set"].unique().to_list() == ["mini"]
        assert table["model"].unique().to_list() == ["fixture/student-7b"]
        assert table["template"].unique().to_list() == ["vicuna"]
        assert all(table["output"].str.len_chars() > 0) and table["n_output_tokens"].null_count() == 0
        # TGI's route got the exact vicuna prompt, no chat template around it; the 429s were retried.
        prompts = [f"ECHO {render_prompt('vicuna', f'Question number {i}?')}" for i in range(4)]
        assert table["output"].to_list() == prompts
        assert srv.outcomes() == {"ok": 4, "429": 2}
        assert {e.route for e in srv.events} <= {"/", "/generate"}  # TGI's native route, not the chat one

        srv.reset_log()
        main(args[:-1])
        assert srv.generation_requests() == 0
        assert "generated / from the store │ 0 / 4" in capsys.readouterr().out
        assert pl.read_parquet(out).equals(table)


def test_bad_generate_input_is_a_one_line_error(tmp_path, capsys):
    out = ["--output", str(tmp_path / "a.parquet")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no .json, .jsonl or .parquet" in one_line_cli_error(
        capsys, ["generate", "smollm2-135m", "--test-sets", str(empty), *out]
    )

    bad = _jsonl(tmp_path / "bad_test_set.jsonl", [{"text": "ok?"}, {"question": ""}, {"answer": "no question"}])
    assert "bad_test_set.jsonl, row 2, field 'question'" in one_line_cli_error(
        capsys, ["generate", "smollm2-135m", "--test-sets", str(bad), *out]
    )
    good = _jsonl(tmp_path / "good.jsonl", [{"text": "ok?"}])
    err = one_line_cli_error(
        capsys,
        ["generate", "--server", "http://127.0.0.1:9/v1", "--template", "alpaca", "--test-sets", str(good), *out],
    )
    assert "--api generate" in err
    # TGI's route sends the exact prompt text, so it needs a plain template (the chat one needs the tokenizer).
    server = ["generate", "--server", "http://127.0.0.1:9", "--api", "generate", "--test-sets", str(good), *out]
    assert "give --template" in one_line_cli_error(capsys, server)
    assert "give --template" in one_line_cli_error(capsys, [*server, "--template", "chat"])
    assert not (tmp_path / "a.parquet").exists()
    assert "must end in .parquet" in one_line_cli_error(
        capsys, ["generate", "smollm2-135m", "--test-sets", str(good), "--output", str(tmp_path / "a.csv")]
    )


def test_evaluate_answers_both_models_then_judges_and_a_rerun_asks_nothing(tmp_path, capsys):
    tests = _jsonl(tmp_path / "mini_test_set.jsonl", [{"text": f"Question number {i}?"} for i in range(3)])

    def verdict(text: str, temperature: float) -> str:  # the judge prefers the tuned model's answer
        first = text.split("Assistant 1's Answer]\n", 1)[1]
        return "9 3\nbetter" if first.startswith("TUNED") else "3 9\nworse"

    tuned = Faults(reply=lambda text, temperature: f"TUNED answer to {text}")
    base = Faults(reply=lambda text, temperature: f"BASE answer to {text}")
    with (
        TeacherServer(model="srv/tuned", faults=tuned) as a,
        TeacherServer(model="srv/base", faults=base) as b,
        TeacherServer(model="srv/judge", faults=Faults(reply=verdict)) as judge,
    ):
        args = ["evaluate", "--model", "tuned-7b", "--model-server", a.v1, "--baseline", "base-7b"]
        args += ["--baseline-server", b.v1, "--test-sets", str(tests), "--judge", judge.v1]
        args += ["--output", str(tmp_path / "eval"), "--max-new-tokens", "64"]
        main(args)
        printed = capsys.readouterr().out
        results = json.loads((tmp_path / "eval" / "results.json").read_text())
        assert (results["a"], results["b"], results["judge"]) == ("tuned-7b", "base-7b", "srv/judge")
        assert {k: results["all"][k] for k in ("win", "tie", "loss", "invalid")} == {
            "win": 3,
            "tie": 0,
            "loss": 0,
            "invalid": 0,
        }
        assert results["all"]["win_score"] == 2.0 and "2.000" in printed
        answers = pl.read_parquet(tmp_path / "eval" / "answers" / "model.parquet")
        assert answers["output"].to_list() == [f"TUNED answer to Question number {i}?" for i in range(3)]

        for server in (a, b, judge):
            server.reset_log()
        main([*args, "-q"])
        assert [s.generation_requests() for s in (a, b, judge)] == [0, 0, 0]


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir: Path) -> Path:
    return tiny_llama_dir


def test_batched_left_padded_answers_equal_one_at_a_time(tmp_path, tiny_model):
    lengths = [1, 9, 3, 20, 5]  # different prompt lengths: every batch needs padding
    rows = [{"text": " ".join(["Tell me more about this"] * n) + "?"} for n in lengths]
    tests = _jsonl(tmp_path / "mixed_test_set.jsonl", rows)
    tables = []
    for batch in ("1", "4"):
        out = tmp_path / f"b{batch}.parquet"
        args = ["generate", str(tiny_model), "--test-sets", str(tests), "--max-new-tokens", "6"]
        main([*args, "--batch-size", batch, "--output", str(out), "-q"])
        tables.append(pl.read_parquet(out))
    assert tables[0]["instruction"].to_list() == [r["text"] for r in rows]  # the file's order, not the batches'
    assert tables[0]["n_output_tokens"].min() > 0  # real tokens were generated, not empty answers
    assert tables[0].equals(tables[1])
    assert set(tables[0]["template"]) == {"chat"}  # a plain folder: the tokenizer's own chat template


def test_a_checkpoint_trained_further_in_its_folder_is_answered_again(tmp_path, tiny_model, capsys):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_model, folder)
    tests = _jsonl(tmp_path / "two_test_set.jsonl", [{"text": "One?"}, {"text": "Two?"}])
    args = ["generate", str(folder), "--test-sets", str(tests), "--max-new-tokens", "4", "--output"]
    main([*args, str(tmp_path / "a.parquet")])
    main([*args, str(tmp_path / "a.parquet")])
    assert "generated / from the store │ 0 / 2" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # "more training": new weights in the same folder
    model.save_pretrained(folder)
    main([*args, str(tmp_path / "a.parquet")])
    assert "generated / from the store │ 2 / 0" in capsys.readouterr().out


def test_a_prompt_that_leaves_no_room_for_the_answer_is_a_one_line_error(tmp_path, tiny_model, capsys):
    tests = _jsonl(tmp_path / "long_test_set.jsonl", [{"text": "Short?"}, {"id": "q2", "text": "word " * 300}])
    args = ["generate", str(tiny_model), "--test-sets", str(tests), "--max-new-tokens", "1900"]
    err = one_line_cli_error(capsys, [*args, "--output", str(tmp_path / "a.parquet")])
    assert "long question q2" in err and "2048-token context" in err
