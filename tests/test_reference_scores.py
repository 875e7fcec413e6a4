"""The ``reference`` scoring convention equals the reference authors' scoring script, loss for loss.

The reference computation is written out here from its definition (tianyi-lab/Reflection_Tuning,
``selection_code/data_analysis.py``): each pass tokenizes one string with ``tokenizer.encode`` (special tokens as
the tokenizer adds them, truncated at a length), and the model's own ``labels=`` loss is taken over the tokens
after the first ``len(encode(text[:text.rfind(span)]))``, or after the first token for the unconditioned passes.
Nothing of the scorer is imported for it; only the model and tokenizer are loaded the project's way.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import polars as pl
import pytest

from recycled_datasets.cli import main

MAX_LENGTH = 2048
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ALPACA_HEAD = "Below is an instruction that describes a task"
# (with input, without input), written out from the reference script's prompt dictionaries
FORMATS = {
    "alpaca": (
        ALPACA_HEAD + ", paired with an input that provides further context. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:",
        ALPACA_HEAD + ". Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:",
    ),
    "vicuna": (
        SYSTEM + " USER: {instruction}\nInput:\n{input} ASSISTANT:",
        SYSTEM + " USER: {instruction} ASSISTANT:",
    ),
    "wizardlm": ("{instruction}\n{input}\n\n### Response:", "{instruction}\n\n### Response:"),
}
GUESS = (
    "Below is the response to an instruction, please guess the corresponding instruction for the given response.\n"
    "{}\nGenerate the instruction for the above response."
)
LOSSES = ("loss_instruction_direct", "loss_response_direct", "loss_instruction_cond", "loss_response_cond")


def _loss(model, tokenizer, text: str, limit: int, span: str | None = None) -> float:  # noqa: ANN001
    """The model's own ``labels=`` loss; NaN where no token is left to score (what the reference then records)."""
    import torch

    ids = tokenizer.encode(text, return_tensors="pt", truncation=True, max_length=limit)
    labels = ids.clone()
    if span is not None:
        labels[0, : len(tokenizer.encode(text[: text.rfind(span)]))] = -100
    if int((labels[0, 1:] != -100).sum()) == 0:
        return math.nan
    with torch.no_grad():
        return float(model(ids, labels=labels).loss)


def reference_losses(  # noqa: ANN201
    model,
    tokenizer,
    fmt: str,
    row: dict,
    max_length: int = MAX_LENGTH,  # noqa: ANN001
):
    """(instruction alone, response alone, instruction given the guess prompt, response given the prompt)."""
    with_input, no_input = FORMATS[fmt]
    x, i, y = row["instruction"], row.get("input", ""), row["output"]
    prompt = with_input.format(instruction=x, input=i) if i else no_input.format(instruction=x)
    guess = no_input.format(instruction=GUESS.format(y))
    prompt_len = len(tokenizer.encode(prompt, truncation=True, max_length=max_length))
    guess_len = len(tokenizer.encode(guess, truncation=True, max_length=max_length))
    return (
        _loss(model, tokenizer, x + i, max_length - guess_len + 1),
        _loss(model, tokenizer, y, max_length - prompt_len + 1),
        _loss(model, tokenizer, guess + x + i, max_length, span=x),
        _loss(model, tokenizer, prompt + y, max_length, span=y),
    )


def forty_rows(alpaca: Path) -> list[dict]:
    rows = json.loads(alpaca.read_text(encoding="utf-8"))
    with_input = [r for r in rows if r["input"]][:20]
    without = [r for r in rows if not r["input"]][:20]
    return [r for pair in zip(with_input, without, strict=True) for r in pair]


def score_cli(
    rows_file: Path, student: str, template: str, output: Path, max_length: int = MAX_LENGTH
) -> pl.DataFrame:
    main(
        ["score", str(rows_file), "--student", student, "--template", template, "--scoring", "reference"]
        + ["--dtype", "float32", "--max-length", str(max_length), "--output", str(output), "--quiet"]
    )
    return pl.read_parquet(output)


def assert_equal_to_the_reference(  # noqa: ANN201
    scored: pl.DataFrame,
    model,
    tokenizer,
    template: str,
    rows: list[dict],
    max_length: int = MAX_LENGTH,  # noqa: ANN001
):
    assert scored.height == len(rows)
    if max_length == MAX_LENGTH:
        assert set(scored["status"]) == {"ok"}
    for number, (row, got) in enumerate(zip(rows, scored.iter_rows(named=True), strict=True)):
        expected = reference_losses(model, tokenizer, template, row, max_length)
        for name, want in zip(LOSSES, expected, strict=True):
            if math.isnan(want):  # nothing left to score: the reference's NaN is a missing score here
                assert got[name] is None and got["status"] == "missing", (template, number, name, got["reason"])
            else:
                assert got[name] == pytest.approx(want, rel=1e-5), (template, number, name)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # about a minute per format on an idle 2-core CPU, far more on a busy one
@pytest.mark.parametrize("template", ["vicuna", "alpaca", "wizardlm"])
def test_reference_scores_equal_the_reference_computation_with_the_embedded_student(
    alpaca_path: Path, tmp_path: Path, template: str
):
    from recycled_datasets.models import load_model, load_tokenizer, resolve_student

    rows = forty_rows(alpaca_path)
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(rows), encoding="utf-8")
    scored = score_cli(rows_file, "smollm2-135m", template, tmp_path / "scores.parquet")
    spec = resolve_student("smollm2-135m")
    model = load_model(spec, dtype="float32", device="cpu").eval()
    assert_equal_to_the_reference(scored, model, load_tokenizer(spec), template, rows)


@pytest.fixture(scope="module")
def sentencepiece_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SentencePiece BPE tokenizer trained on real rows (it adds a BOS, as Llama-2's does) and a tiny Llama."""
    import sentencepiece as spm
    from conftest import ALPACA, tiny_llama
    from transformers import AutoTokenizer

    if not ALPACA.is_file():
        pytest.skip(f"real Alpaca rows not found at {ALPACA} (../shared/data is absent)")
    folder = tmp_path_factory.mktemp("sp-student")
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))[:400]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=800,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    os.remove(folder / "tokenizer.vocab")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
            }
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.encode("Add 2 and 3.")[0] == tokenizer.bos_token_id  # it adds a BOS
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("template", "n", "max_length"),
    [
        ("vicuna", 6, MAX_LENGTH),  # the fast lane's checks: whole rows, and rows cut short
        ("vicuna", 12, 160),
        pytest.param("vicuna", 40, MAX_LENGTH, marks=pytest.mark.slow),
        pytest.param("alpaca", 40, MAX_LENGTH, marks=pytest.mark.slow),
        pytest.param("wizardlm", 40, MAX_LENGTH, marks=pytest.mark.slow),
        pytest.param("alpaca", 40, 200, marks=pytest.mark.slow),
    ],
)
def test_reference_scores_equal_the_reference_computation_with_a_sentencepiece_tokenizer(
    sentencepiece_student: Path, alpaca_path: Path, tmp_path: Path, template: str, n: int, max_length: int
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = forty_rows(alpaca_path)[:n]
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(rows), encoding="utf-8")
    scored = score_cli(rows_file, str(sentencepiece_student), template, tmp_path / "scores.parquet", max_length)
    model = AutoModelForCausalLM.from_pretrained(sentencepiece_student, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(sentencepiece_student)
    assert_equal_to_the_reference(scored, model, tokenizer, template, rows, max_length)
    if max_length < MAX_LENGTH:  # the cut is exercised: some rows are truncated, some lose a score entirely
        lengths = [
            len(
                tokenizer.encode(
                    FORMATS[template][0].format(instruction=r["instruction"], input=r["input"]) + r["output"]
                )
            )
            for r in rows
        ]
        assert any(n > max_length for n in lengths)


def test_the_paper_students_prefer_reference_but_chat_rows_score_split():
    """The students table's `scoring` is a default: it gives way to split where reference has no form; a request
    for reference there is an error."""
    from recycled_datasets.errors import ConfigError
    from recycled_datasets.models import resolve_student
    from recycled_datasets.records import Pair, Turn
    from recycled_datasets.scoring import ScoreConfig, scoring_of

    llama = resolve_student("llama2-7b")
    single, chat = [Pair("Add 2 and 3.", "", "5.")], [Pair("And 4?", "", "9.", (Turn("system", "Be brief."),))]
    assert llama.scoring == "reference" and scoring_of(ScoreConfig(), llama, "vicuna", single) == "reference"
    assert scoring_of(ScoreConfig(), llama, "vicuna", chat) == "split"
    assert scoring_of(ScoreConfig(), llama, "chat", single) == "split"
    assert scoring_of(ScoreConfig(scoring="split"), llama, "vicuna", single) == "split"
    with pytest.raises(ConfigError, match="use --scoring split"):
        scoring_of(ScoreConfig(scoring="reference"), llama, "chat", single)
    with pytest.raises(ConfigError, match="earlier turns"):
        scoring_of(ScoreConfig(scoring="reference"), llama, "vicuna", chat)
