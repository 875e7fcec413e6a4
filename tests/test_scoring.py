"""The scorer: exact against the naive per-pair loop, missing scores with reasons, dedup, resume."""

from __future__ import annotations

import math

import polars as pl
import pytest

from recycled_datasets.errors import StoreError
from recycled_datasets.models import load_model, load_tokenizer, resolve_student
from recycled_datasets.records import Pair
from recycled_datasets.scoring import ScoreConfig, score_pairs
from recycled_datasets.scoring import engine as engine_module
from recycled_datasets.scoring.naive import naive_losses
from recycled_datasets.scoring.plan import Planner
from recycled_datasets.sources import read_source

PAIRS = [
    Pair("Name the largest planet in the solar system.", "", "Jupiter is the largest planet in the solar system."),
    Pair("Translate the sentence into French.", "The cat sleeps.", "Le chat dort."),
    Pair("Give three tips for staying healthy.", "", "Eat vegetables, sleep well, and walk every day."),
    Pair("Summarize the text.", "Rain fell all day, so the match was postponed.", "The match was delayed by rain."),
    Pair("Name the largest planet in the solar system.", "", "It is Jupiter."),
]


@pytest.fixture(scope="module")
def student():
    return resolve_student("smollm2-135m")


def naive_scores(student, pairs, template, max_length, scoring="split"):
    planner = Planner(load_tokenizer(student), template, max_length, scoring)
    plans = planner.plan(pairs)
    losses = naive_losses(load_model(student, dtype="float32"), list(planner.jobs.values()))
    out = []
    for plan in plans:
        rc, rd, ic, id_ = (losses[k] for k in plan.jobs)
        out.append((math.exp(rc - rd), math.exp(ic - id_)))
    return out


@pytest.mark.parametrize("scoring", ["split", "reference"])
def test_float32_equals_the_naive_loop(student, scoring):
    config = ScoreConfig(template="alpaca", dtype="float32", max_length=512, scoring=scoring)
    frame = score_pairs(PAIRS, student, config)
    assert frame.columns[:2] == ["ifd", "rifd"] and frame.height == len(PAIRS)
    naive = naive_scores(student, PAIRS, "alpaca", 512, scoring)
    for (ifd, rifd), row in zip(naive, frame.iter_rows(named=True)):
        assert row["status"] == "ok" and row["reason"] is None
        assert row["ifd"] == pytest.approx(ifd, rel=1e-4)
        assert row["rifd"] == pytest.approx(rifd, rel=1e-4)
        assert row["ifd"] == pytest.approx(math.exp(row["loss_response_cond"] - row["loss_response_direct"]))
        assert row["n_response_tokens"] > 0 and row["n_instruction_tokens"] > 0


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_float32_equals_naive_on_100_real_rows(student, alpaca_path):
    """Acceptance: with --dtype float32, IFD and r-IFD equal the naive loop's to 1e-4 relative on 100 real rows."""
    rows = read_source(alpaca_path, limit=100).rows
    pairs = [Pair(r.instruction, r.input, r.output) for r in rows]
    frame = score_pairs(pairs, student, ScoreConfig(template="alpaca", dtype="float32", scoring="split"))
    expected = naive_scores(student, pairs, "alpaca", 2048)
    assert (frame["status"] == "ok").all()
    ifd_err = max(abs(a - b) / b for a, (b, _) in zip(frame["ifd"], expected))
    rifd_err = max(abs(a - b) / b for a, (_, b) in zip(frame["rifd"], expected))
    assert ifd_err < 1e-4 and rifd_err < 1e-4, (ifd_err, rifd_err)


def test_bfloat16_is_close_to_float32(student):
    exact = score_pairs(PAIRS, student, ScoreConfig(template="alpaca", dtype="float32", max_length=512))
    fast = score_pairs(PAIRS, student, ScoreConfig(template="alpaca", dtype="bfloat16", max_length=512))
    # bf16 rounding in the transformer body moves short pairs' losses by up to ~0.1 nat; the head and the
    # reduction are fp32, so the scores stay close (scripts/bench_score.py measures agreement on real rows).
    for a, b in zip(fast["ifd"], exact["ifd"]):
        assert a == pytest.approx(b, rel=0.1)
    for name in ("loss_response_cond", "loss_response_direct", "loss_instruction_cond", "loss_instruction_direct"):
        for a, b in zip(fast[name], exact[name]):
            assert a == pytest.approx(b, abs=0.2)
    assert fast["ifd"].to_list() != exact["ifd"].to_list()  # it did run in bf16


@pytest.mark.parametrize(("scoring", "empty_reason"), [("split", "empty target"), ("reference", "empty response")])
def test_missing_scores_are_null_with_a_reason_never_zero(student, scoring, empty_reason):
    long_instruction = "Explain this word by word. " + "word " * 600
    pairs = [PAIRS[0], Pair(long_instruction, "", "Fine."), Pair("Say something.", "", "")]
    config = ScoreConfig(template="alpaca", dtype="float32", max_length=128, scoring=scoring)
    frame = score_pairs(pairs, student, config)
    ok, too_long, empty = frame.iter_rows(named=True)
    assert ok["status"] == "ok"
    assert too_long["status"] == "missing" and too_long["ifd"] is None
    assert "prompt fills max_length" in too_long["reason"] and too_long["n_response_tokens"] == 0
    assert too_long["loss_response_cond"] is None
    assert empty["ifd"] is None and empty_reason in empty["reason"]


def test_each_distinct_sequence_is_scored_once(student, monkeypatch):
    seen = []
    real = engine_module.score_batches

    def counting(model, batches, **kw):
        seen.extend(job.key for batch in batches for job in batch)
        yield from real(model, batches, **kw)

    monkeypatch.setattr(engine_module, "score_batches", counting)
    # Variants of one row share instructions and responses: ori/res share x, ins/both share x1.
    pairs = [PAIRS[0], Pair(PAIRS[0].instruction, "", "Jupiter."), PAIRS[0]]
    frame = score_pairs(pairs, student, ScoreConfig(template="alpaca", dtype="float32", max_length=256))
    assert len(seen) == len(set(seen))
    # 3 pairs x 4 losses = 12 sequences, but pair 3 repeats pair 1 and pair 2 shares the instruction target.
    assert len(seen) == 4 + 3
    assert frame["ifd"][0] == frame["ifd"][2]


def test_a_killed_run_resumes_from_its_checkpoints(student, tmp_path, monkeypatch):
    config = ScoreConfig(
        template="alpaca", dtype="float32", max_length=256, batch_tokens=128, cache_dir=tmp_path, flush_seconds=0
    )
    real = engine_module.score_batches
    first_run = []

    def crash_after_two(model, batches, **kw):
        for i, result in enumerate(real(model, batches, **kw)):
            if i == 2:
                raise KeyboardInterrupt
            first_run.extend(j.key for j in result[0])
            yield result

    monkeypatch.setattr(engine_module, "score_batches", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        score_pairs(PAIRS, student, config)
    assert first_run and list(tmp_path.glob("seq-*.parquet"))

    second_run = []

    def counting(model, batches, **kw):
        second_run.extend(job.key for batch in batches for job in batch)
        yield from real(model, batches, **kw)

    monkeypatch.setattr(engine_module, "score_batches", counting)
    resumed = score_pairs(PAIRS, student, config)
    assert not set(first_run) & set(second_run)
    fresh = score_pairs(PAIRS, student, ScoreConfig(template="alpaca", dtype="float32", max_length=256))
    for a, b in zip(resumed["ifd"], fresh["ifd"]):
        assert a == pytest.approx(b, rel=1e-5)


def test_a_checkpoint_folder_of_another_setup_is_refused(student, tmp_path):
    score_pairs(PAIRS[:1], student, ScoreConfig(template="alpaca", dtype="float32", max_length=64, cache_dir=tmp_path))
    with pytest.raises(StoreError, match="another setup"):
        score_pairs(
            PAIRS[:1], student, ScoreConfig(template="vicuna", dtype="float32", max_length=64, cache_dir=tmp_path)
        )


def test_chat_template_gets_a_single_bos(student):
    tokenizer = load_tokenizer(student)
    planner = Planner(tokenizer, "chat", 256)
    (plan,) = planner.plan(PAIRS[:1])
    cond = planner.jobs[plan.jobs[0]]
    assert cond.ids[0] == tokenizer.bos_token_id and cond.ids[1] != tokenizer.bos_token_id
    text = tokenizer.decode(cond.ids[: cond.start])
    assert text.count("<|im_start|>") == 3  # system, user, assistant: the template's own, no extra BOS


def test_batches_respect_the_token_budget():
    from recycled_datasets.scoring.plan import Job

    jobs = [Job(key=f"{i:02d}", ids=tuple(range(n)), start=1, n=n - 1) for i, n in enumerate([5, 9, 3, 9, 2, 40])]
    batches = engine_module.make_batches(jobs, batch_tokens=20)
    assert sorted(j.key for b in batches for j in b) == sorted(j.key for j in jobs)
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(len(j.ids) for j in batch) <= 20
    assert batches == engine_module.make_batches(list(reversed(jobs)), batch_tokens=20)


def test_batches_bound_their_padding():
    from recycled_datasets.scoring.plan import Job

    lengths = [400, 390, 370, 300, 290, 30, 20, 10]
    jobs = [Job(key=f"{i:02d}", ids=tuple(range(n)), start=1, n=n - 1) for i, n in enumerate(lengths)]
    batches = engine_module.make_batches(jobs, batch_tokens=100_000)
    assert [[len(j.ids) for j in b] for b in batches] == [[400, 390, 370], [300, 290], [30, 20], [10]]
    for batch in batches:  # every row within 10% of its batch's longest, or within the small-row slack
        longest = len(batch[0].ids)
        gaps = [longest - len(j.ids) for j in batch]
        assert all(g <= max(0.1 * longest, engine_module.PAD_SLACK) for g in gaps)


def test_score_frame_schema(student):
    frame = score_pairs(PAIRS[:2], student, ScoreConfig(template="none", dtype="bfloat16", max_length=128))
    assert frame.schema["ifd"] == pl.Float64 and frame.schema["n_response_tokens"] == pl.Int32


def _hand_loss(model, ids, start, n):
    """Mean NLL of ids[start:start+n] from the model's own labels path (docs/method.md, section 3)."""
    import torch

    x = torch.tensor([ids])
    labels = torch.full_like(x, -100)
    labels[0, start : start + n] = x[0, start : start + n]
    with torch.inference_mode():
        return float(model(input_ids=x, labels=labels).loss)


def test_token_layout_follows_spec_by_hand_including_truncation(student):
    """[BOS] + ids(prompt) + ids(target), truncated on the right; the direct pass scores the same n tokens."""
    from recycled_datasets.templates import instruction_target, render_prompt, reverse_request

    tokenizer, model = load_tokenizer(student), load_model(student, dtype="float32")
    pair = PAIRS[2]
    bos = tokenizer.bos_token_id

    def enc(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt, response = enc(render_prompt("alpaca", pair.instruction, pair.input)), enc(pair.output)
    rev, instruction = (
        enc(render_prompt("alpaca", reverse_request(pair.output))),
        enc(instruction_target(pair.instruction)),
    )
    max_length = 1 + len(prompt) + len(response) - 3  # cut three response tokens off
    config = ScoreConfig(template="alpaca", dtype="float32", max_length=max_length, scoring="split")
    frame = score_pairs([pair], student, config)
    row = frame.row(0, named=True)
    n = len(response) - 3
    assert row["n_response_tokens"] == n and row["n_prompt_tokens"] == len(prompt)
    cond = _hand_loss(model, [bos, *prompt, *response][:max_length], 1 + len(prompt), n)
    direct = _hand_loss(model, [bos, *response[:n]], 1, n)
    assert row["loss_response_cond"] == pytest.approx(cond, rel=1e-5)
    assert row["loss_response_direct"] == pytest.approx(direct, rel=1e-5)
    assert row["ifd"] == pytest.approx(math.exp(cond - direct), rel=1e-5)
    # The reverse prompt holds the whole response, so the instruction side is cut at the same max_length.
    n_i = max(0, min(len(instruction), max_length - 1 - len(rev)))
    assert row["n_instruction_tokens"] == n_i
    if n_i == 0:
        assert row["rifd"] is None and "prompt fills max_length" in row["reason"]
    full = score_pairs(
        [pair], student, ScoreConfig(template="alpaca", dtype="float32", max_length=2048, scoring="split")
    ).row(0, named=True)
    i_cond = _hand_loss(model, [bos, *rev, *instruction], 1 + len(rev), len(instruction))
    i_direct = _hand_loss(model, [bos, *instruction], 1, len(instruction))
    assert full["loss_instruction_cond"] == pytest.approx(i_cond, rel=1e-5)
    assert full["loss_instruction_direct"] == pytest.approx(i_direct, rel=1e-5)
    assert full["rifd"] == pytest.approx(math.exp(i_cond - i_direct), rel=1e-5)
