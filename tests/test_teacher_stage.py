"""The reflect stage against the TGI-protocol fixture server: contract, cache, faults, fallbacks, limits."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from teacher_server import Faults, TeacherServer, payload_content_key
from teacher_server import reflect_config as config

from recycled_datasets.errors import TeacherError
from recycled_datasets.records import (
    REFLECTION_COLUMNS,
    STATUS_FAILED,
    STATUS_FELL_BACK,
    STATUS_OK,
    assign_ids,
)
from recycled_datasets.teacher import AnswerStore, plan_rows, reflect_rows, teacher_identity
from recycled_datasets.teacher.prompts import DEFAULT_PROMPT_VERSION

ROWS = assign_ids(
    [
        ("Give three tips for staying healthy.", "", "Eat well, sleep, exercise."),
        ("Translate the sentence into French.", "The cat sleeps.", "Le chat dort."),
        ("What is the capital of Australia?", "", "Canberra."),
        ("Summarize the text.", "Bees pollinate flowers and make honey.", "Bees pollinate and make honey."),
        ("Name a prime number above 10.", "", "11"),
    ]
)


@pytest.fixture
def server() -> Iterator[TeacherServer]:
    with TeacherServer(max_concurrent_requests=4) as srv:
        yield srv


def test_four_variants_per_row_in_source_order_and_rerun_sends_nothing(server, tmp_path):
    result = reflect_rows(ROWS, config(server.url, tmp_path / "store"))
    table = result.table
    assert table.columns == list(REFLECTION_COLUMNS)
    assert table["id"].to_list() == [r.id for r in ROWS]
    assert table["source_index"].to_list() == list(range(len(ROWS)))
    assert set(table["ins_status"]) | set(table["res_status"]) | set(table["both_status"]) == {STATUS_OK}
    assert table["ins_input"].to_list() == [""] * len(ROWS) and table["both_input"].to_list() == [""] * len(ROWS)
    assert table["res_instruction"].to_list() == table["ori_instruction"].to_list()
    assert table["res_input"].to_list() == table["ori_input"].to_list()
    assert table["both_instruction"].to_list() == table["ins_instruction"].to_list()
    # The teacher's text, not the source's, fills the reflected fields; both reflects ins, not ori.
    assert all(t.startswith("Explain in depth") for t in table["ins_instruction"])
    assert all(o.startswith("A better, complete answer to Explain in depth") for o in table["both_output"])
    assert all(
        o.startswith("A better, complete answer to " + r.instruction[:20])
        for o, r in zip(table["res_output"], ROWS, strict=True)
    )
    assert table["ins_detail"].null_count() == len(ROWS)
    assert result.teacher_id == "fixture/teacher-7b" and result.prompt_version == DEFAULT_PROMPT_VERSION
    assert result.stats.sent == 3 * len(ROWS) == server.generation_requests()
    assert result.stats.completion_tokens > 0 and result.stats.prompt_tokens > 0
    # Every chat request names the served model, so vLLM-style servers accept it.
    assert {e.model for e in server.events} == {"fixture/teacher-7b"}

    again = reflect_rows(ROWS, config(server.url, tmp_path / "store"))
    assert server.generation_requests() == 3 * len(ROWS)  # zero new requests
    assert again.stats.sent == 0 and again.stats.cached == 3 * len(ROWS)
    assert again.table.equals(table)
    with AnswerStore.open(tmp_path / "store") as store:
        usage = store.usage()
    assert usage["ok_answers"] == 3 * len(ROWS) and usage["ok_completion_tokens"] == result.stats.completion_tokens


def test_window_is_sized_from_info_and_never_exceeded(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="recycled_datasets.teacher.client")
    with TeacherServer(max_concurrent_requests=3, faults=Faults(latency=0.05)) as srv:
        rows = assign_ids([(f"Question number {i}?", "", f"Answer {i}.") for i in range(12)])
        result = reflect_rows(rows, config(srv.url, tmp_path / "s"))
        assert "window 3 (from /info)" in caplog.text  # the window is /info's limit...
        assert srv.max_inflight <= 3 and srv.outcomes()["429"] == 0  # ...and the server never saw more
        assert result.stats.retries == 0


def test_explicit_concurrency_below_the_server_limit_is_kept(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="recycled_datasets.teacher.client")
    with TeacherServer(max_concurrent_requests=8, faults=Faults(latency=0.05)) as srv:
        rows = assign_ids([(f"Question number {i}?", "", f"Answer {i}.") for i in range(8)])
        reflect_rows(rows, config(srv.url, tmp_path / "s", concurrency=2))
        assert "window 2" in caplog.text
        assert srv.max_inflight <= 2


def test_faults_every_row_completes_retries_reported_and_no_answer_paid_twice(tmp_path):
    # A hang outlasts the client's timeout, which is generous so that a normal answer on a loaded machine
    # is never mistaken for a lost one.
    faults = Faults(burst_429=6, p429=0.3, p503=0.08, p_hang=0.02, hang=11.0, p_drop=0.04, p_malformed=0.03, seed=7)
    rows = assign_ids([(f"Explain topic {i} to a child.", "", f"Topic {i} is simple.") for i in range(20)])
    with TeacherServer(max_concurrent_requests=8, faults=faults) as srv:
        result = reflect_rows(rows, config(srv.url, tmp_path / "s", timeout=10.0, max_retries=30))
        outcomes = srv.outcomes()
        answered = srv.answered()
        # A rerun finds every answer stored: no stored request is ever sent again.
        again = reflect_rows(rows, config(srv.url, tmp_path / "s", timeout=10.0, max_retries=30))
        assert srv.generation_requests() == sum(outcomes.values()) and again.stats.sent == 0
    with AnswerStore.open(tmp_path / "s") as store:
        stored = [payload_content_key(req) for _, req in store.requests()]
    table = result.table
    assert table.height == 20
    for variant in ("ins", "res", "both"):
        assert table[f"{variant}_status"].to_list() == [STATUS_OK] * 20
    assert outcomes["429"] >= 6 and outcomes["503"] > 0 and outcomes["hang"] > 0 and outcomes["drop"] > 0
    # Every request that did not come back with an answer was retried, and the run says so, by reason.
    stats = result.stats
    assert stats.retries == stats.sent - 60 > 0
    reasons = stats.retry_reasons
    assert reasons["http_429"] == outcomes["429"] and reasons["http_503"] == outcomes["503"]
    assert reasons["malformed"] == outcomes["malformed"]
    # A loaded machine can also time out or drop a request before the server logs it: at least these.
    assert reasons["timeout"] >= outcomes["hang"] and reasons["connection"] >= outcomes["drop"]
    # Every stored answer is one the server delivered, one per request; an answer is paid twice only when
    # the client had already given up on the first delivery (timed out or lost the connection).
    assert len(stored) == len(set(stored)) == 60 and set(stored) == set(answered)
    assert sum(answered.values()) - 60 <= reasons["timeout"] + reasons["connection"]
    assert again.table.equals(table)


def test_422_is_recorded_not_retried_and_not_resent(server, tmp_path):
    rows = assign_ids(
        [("PLEASE-REJECT-THIS request", "", "x"), *[(r.instruction, r.input, r.output) for r in ROWS[:2]]]
    )
    result = reflect_rows(rows, config(server.url, tmp_path / "s"))
    first = result.table.row(0, named=True)
    assert first["ins_status"] == first["res_status"] == first["both_status"] == STATUS_FAILED
    assert "HTTP 422" in first["ins_detail"] and "validation" in first["ins_detail"]
    assert first["res_output"] == "x" and first["ins_instruction"] == "PLEASE-REJECT-THIS request"
    assert "both reflects the original pair" in first["both_detail"]
    assert server.outcomes()["422"] == 2  # ins once, res once (both is the same request as res): no retries
    assert result.stats.retries == 0 and result.stats.failures == 3
    assert result.table["ins_status"].to_list()[1:] == [STATUS_OK, STATUS_OK]

    before = server.generation_requests()
    reflect_rows(rows, config(server.url, tmp_path / "s"))
    assert server.generation_requests() == before  # the refusal is stored: not paid for again
    reflect_rows(rows, config(server.url, tmp_path / "s", retry_rejected=True))
    assert server.generation_requests() == before + 2  # unless the user asks for it


def test_unusable_greedy_reply_is_asked_once_more_sampled(tmp_path):
    def reply(user_text: str, temperature: float) -> str:
        if temperature == 0:
            return "I think the answer is fine as it is."  # no markers at all
        n = len(user_text)  # tells the rows apart
        if "[New Instruction]" in user_text:
            return f"[New Instruction] List {n} renewable energy sources. [End]\n[New Answer] Solar, wind... [End]"
        return f"[Better Answer] A fuller answer ({n}). [End]"

    with TeacherServer(faults=Faults(reply=reply)) as srv:
        result = reflect_rows(ROWS[:2], config(srv.url, tmp_path / "s", seed=5))
        distinct = {e.key for e in srv.events}
    table = result.table
    for variant in ("ins", "res", "both"):
        assert table[f"{variant}_status"].to_list() == [STATUS_OK, STATUS_OK]
    assert all(t.startswith("List ") and t.endswith(" renewable energy sources.") for t in table["ins_instruction"])
    assert all(o.startswith("A fuller answer (") for o in table["res_output"])
    # ins, res and both of two rows were unusable greedily: six more requests, sampled, all distinct.
    assert result.stats.parse_retries == 6 and result.stats.sent == 12 == len(distinct)


def test_fallback_names_the_field_and_why_and_both_reflects_the_original(tmp_path):
    def reply(user_text: str, temperature: float) -> str:
        if "[New Instruction]" in user_text:  # always truncated before the answer section
            return "Critique...\n[New Instruction] Design a week-long meal plan for an athlete."
        return "[Better Answer] N/A [End]" if temperature == 0 else "[Better Answer] [End]"

    with TeacherServer(faults=Faults(reply=reply)) as srv:
        result = reflect_rows(ROWS[1:2], config(srv.url, tmp_path / "s"))
    row = result.table.row(0, named=True)
    assert row["ins_status"] == row["res_status"] == row["both_status"] == STATUS_FELL_BACK
    # The ins pair falls back whole (a new instruction is never paired with an answer it did not get).
    assert row["ins_instruction"] == "Translate the sentence into French.\nThe cat sleeps."
    assert row["ins_output"] == "Le chat dort." and row["ins_input"] == ""
    assert "ins_instruction and ins_output fell back" in row["ins_detail"]
    assert "attempt 1: [unparsed] no [New Answer] section" in row["ins_detail"] and "attempt 2:" in row["ins_detail"]
    assert "input is folded into the instruction" in row["ins_detail"]
    assert row["res_output"] == "Le chat dort."
    assert "res_output fell back to the original" in row["res_detail"]
    assert "attempt 1: [unparsed] the [Better Answer] section says N/A" in row["res_detail"]
    assert "attempt 2: [unparsed] the [Better Answer] section is empty" in row["res_detail"]
    assert "both reflects the original pair" in row["both_detail"] and "both_output fell back" in row["both_detail"]
    assert row["both_instruction"] == row["ins_instruction"] and row["both_output"] == "Le chat dort."
    # both asked the very request res asked: 2 ins attempts + 2 res attempts, nothing more.
    assert result.stats.sent == 4 and result.stats.fallbacks == 3


def test_output_budget_fits_the_server_context(tmp_path):
    with TeacherServer(max_total_tokens=1500) as srv:
        reflect_rows(ROWS[:1], config(srv.url, tmp_path / "s", max_new_tokens=4000))
        store = AnswerStore.open(tmp_path / "s")
        budgets = [req["max_tokens"] for _, req in store.requests()]
        store.close()
    assert budgets and all(b < 1500 for b in budgets)


def test_openai_style_url_and_several_urls_share_the_load(tmp_path):
    rows = assign_ids([(f"Describe animal {i}.", "", f"Animal {i} is nice.") for i in range(10)])
    with (
        TeacherServer(tgi=False, health=False, faults=Faults(latency=0.02)) as a,
        TeacherServer(tgi=False, health=False, faults=Faults(latency=0.02)) as b,
    ):
        result = reflect_rows(rows, config(f"{a.v1},{b.v1}", tmp_path / "s", concurrency=2))
        assert a.generation_requests() > 5 and b.generation_requests() > 5
        assert a.generation_requests() + b.generation_requests() == 30
    assert result.teacher_id == "fixture/teacher-7b"
    assert set(result.table["res_status"]) == {STATUS_OK}


def test_tgi_generate_route_applies_the_chat_template(tmp_path):
    with TeacherServer() as srv:
        result = reflect_rows(ROWS[:2], config(srv.url, tmp_path / "s", api="generate", tokenizer="smollm2-135m"))
        routes = {e.route for e in srv.events}
        store = AnswerStore.open(tmp_path / "s")
        inputs = [req["inputs"] for _, req in store.requests()]
        store.close()
    assert routes == {"/"}
    assert all(i.startswith("<|im_start|>") and i.rstrip().endswith("<|im_start|>assistant") for i in inputs)
    assert set(result.table["both_status"]) == {STATUS_OK}
    assert result.stats.prompt_tokens > 0


def test_waits_for_health_then_runs(tmp_path):
    with TeacherServer(unhealthy_for=0.6) as srv:
        result = reflect_rows(ROWS[:1], config(srv.url, tmp_path / "s"))
    assert result.table["ins_status"].to_list() == [STATUS_OK]


def test_unreachable_teacher_fails_within_the_health_timeout(tmp_path):
    with TeacherServer() as srv:
        url = srv.url
    with pytest.raises(TeacherError, match="not ready after"):
        reflect_rows(ROWS[:1], config(url, tmp_path / "s", health_timeout=0.5))


def test_server_that_keeps_failing_stops_the_run_and_keeps_finished_answers(tmp_path):
    with TeacherServer(faults=Faults(p503=1.0)) as srv:
        with pytest.raises(TeacherError, match="still failed after 3 attempts"):
            reflect_rows(ROWS[:1], config(srv.url, tmp_path / "s", max_retries=2))


def test_the_store_holds_exactly_what_the_server_answered_and_a_rerun_sends_nothing(server, tmp_path):
    """Every answer is stored as it arrives, under the request the server answered; a rerun reads them all back."""
    reflect_rows(ROWS[:1], config(server.url, tmp_path / "s"))
    with AnswerStore.open(tmp_path / "s") as store:
        stored = {payload_content_key(req) for _, req in store.requests()}
    assert stored == set(server.answered()) and len(stored) == 3
    sent = server.generation_requests()
    again = reflect_rows(ROWS[:1], config(server.url, tmp_path / "s"))
    assert server.generation_requests() == sent
    assert again.table["ins_status"].to_list() == [STATUS_OK]


def test_dry_run_counts_calls_and_stored_answers(server, tmp_path):
    plan = plan_rows(ROWS, config(server.url, tmp_path / "s"))
    assert (plan.calls, plan.cached, plan.cache_checked) == (15, 0, True)
    assert plan.max_output_tokens == 15 * 200 and plan.prompt_tokens > 0
    assert server.generation_requests() == 0
    reflect_rows(ROWS[:2], config(server.url, tmp_path / "s"))
    plan = plan_rows(ROWS, config(server.url, tmp_path / "s"))
    assert (plan.calls, plan.cached) == (9, 6)
    assert teacher_identity(config(server.url, tmp_path / "s")) == ("fixture/teacher-7b", DEFAULT_PROMPT_VERSION)


def test_dry_run_parses_stored_replies_like_the_run(tmp_path):
    def reply(user_text: str, temperature: float) -> str:
        if "[New Instruction]" in user_text:  # echoes the prompt's layout before the real sections
            return (
                "[New Instruction] the new instruction goes here [End]\n"
                f"[New Instruction] Explain {len(user_text)} things in depth. [End]\n[New Answer] Here they are. [End]"
            )
        return "[Better Answer] A fuller answer. [End]"

    with TeacherServer(faults=Faults(reply=reply)) as srv:
        result = reflect_rows(ROWS[:2], config(srv.url, tmp_path / "s"))
        plan = plan_rows(ROWS[:2], config(srv.url, tmp_path / "s"))
    assert result.table["ins_instruction"].str.starts_with("Explain ").all()
    assert (plan.calls, plan.cached) == (0, 6)  # the both requests the run made are the ones the plan finds


def test_teacher_server_is_reachable_when_the_hub_is_offline(server, tmp_path, monkeypatch):
    """Clusters without internet set HF_HUB_OFFLINE=1; the user's own teacher server must still be used."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    result = reflect_rows(ROWS[:1], config(server.url, tmp_path / "s"))
    assert result.table["ins_status"].to_list() == [STATUS_OK]
    assert server.generation_requests() == 3


def test_prompt_over_the_servers_input_limit_is_refused_without_sending(tmp_path):
    long_row = assign_ids([("Summarize this report. " + "The quarterly numbers rose again. " * 200, "", "Up.")])
    with TeacherServer(max_input_tokens=450, max_total_tokens=500) as srv:
        result = reflect_rows(
            [*long_row, *ROWS[:1]], config(srv.url, tmp_path / "s", tokenizer="smollm2-135m", max_new_tokens=300)
        )
        sent = srv.generation_requests()
        store = AnswerStore.open(tmp_path / "s")
        budgets = [req["max_tokens"] for _, req in store.requests()]
        store.close()
    row = result.table.row(0, named=True)
    assert row["ins_status"] == row["res_status"] == STATUS_FAILED
    assert "the server accepts at most 450" in row["ins_detail"]
    assert sent == 3  # only the short row reached the server
    # The short row's budget was cut to what the 500-token context leaves after its prompt.
    assert budgets and all(b < 300 for b in budgets)


def test_hf_token_never_reaches_a_plain_teacher_server_only_the_teacher_token_does(server, tmp_path, monkeypatch):
    import huggingface_hub.constants

    stored_login = tmp_path / "hf_token"
    stored_login.write_text("hf_STORED_LOGIN_SENTINEL", encoding="utf-8")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(stored_login))
    monkeypatch.setenv("HF_TOKEN", "hf_ENV_TOKEN_SENTINEL")
    monkeypatch.delenv("SRECYCLE_TEACHER_TOKEN", raising=False)
    reflect_rows(ROWS[:1], config(server.url, tmp_path / "a"))
    assert server.generation_requests() == 3
    # No Authorization at all: neither $HF_TOKEN nor the stored login goes to a server that is not Hugging Face's.
    assert set(server.authorizations) == {None}

    monkeypatch.setenv("SRECYCLE_TEACHER_TOKEN", "teacher-secret")
    before = len(server.authorizations)
    reflect_rows(ROWS[:1], config(server.url, tmp_path / "b"))
    assert set(server.authorizations[before:]) == {"Bearer teacher-secret"}
