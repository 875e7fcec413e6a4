"""The dry run is the run itself with the store-only teacher: it finds in the store exactly what a real run
reads from it, and counts exactly what a real run then sends."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from teacher_server import Faults, TeacherServer, realistic_reply
from teacher_server import reflect_config as config

from recycled_datasets.errors import ConfigError, Rejected, TeacherError
from recycled_datasets.records import STATUS_OK, assign_ids
from recycled_datasets.teacher import AnswerStore, ReflectConfig, plan_rows, reflect_rows
from recycled_datasets.teacher.base import CallStats, NotStored, StoreOnlyTeacher
from recycled_datasets.teacher.config import make_teacher
from recycled_datasets.teacher.store import request_key

ROWS = assign_ids(
    [
        ("What is the capital of Australia?", "", "Canberra."),
        ("Give three tips for staying healthy.", "", "Eat well, sleep, exercise."),
        ("Translate the sentence into French.", "The cat sleeps.", "Le chat dort."),
        ("Summarize the text.", "Bees pollinate flowers and make honey.", "Bees pollinate and make honey."),
        ("Name a prime number above 10.", "", "11"),
    ]
)


def first_ask_garbled(user_text: str, temperature: float) -> str:
    """The first, greedy ask of the capital question's instruction reflection is unusable; its retry is fine."""
    if "capital of Australia" in user_text and "[New Instruction]" in user_text and temperature == 0:
        return "I would rather not follow the format."
    return realistic_reply(user_text, temperature)


def stored_keys(store_dir: Path, teacher: str, prompt_version: str) -> set[str]:
    with AnswerStore.open(store_dir, durable=False) as store:
        return {request_key(teacher, prompt_version, request) for _, request in store.requests()}


def test_dry_run_and_real_run_agree_on_what_is_stored_and_what_is_sent(tmp_path):
    store = tmp_path / "store"
    with TeacherServer(max_concurrent_requests=4, faults=Faults(reply=first_ask_garbled)) as srv:
        first = reflect_rows(ROWS[:2], config(srv.url, store))
        # the garbled reply was stored, then its sampled retry: the dry run must read both as the run does
        assert first.stats.parse_retries == 1 and first.stats.sent == 7
        before = stored_keys(store, first.teacher_id, first.prompt_version)

        plan = plan_rows(ROWS, config(srv.url, store))
        assert srv.generation_requests() == 7  # the dry run sent nothing
        result = reflect_rows(ROWS, config(srv.url, store))
        sent = srv.generation_requests() - 7
        after = stored_keys(store, first.teacher_id, first.prompt_version)
        # Every request of the real run is stored now: a dry run finds each of them, and nothing to send.
        done = plan_rows(ROWS, config(srv.url, store))
        assert srv.generation_requests() - 7 == sent

    assert set(result.table["both_status"]) == {STATUS_OK}
    assert (done.calls, done.unsent) == (0, frozenset())
    asked = done.stored  # the keys of every request the real run made
    # What the dry run found stored is what the real run read from the store ...
    assert plan.stored == asked & before and plan.stored == before
    assert plan.cached == result.stats.cached == 7
    # ... and what it counted to send is exactly what the real run sent: 3 rows x (ins, res, both).
    assert plan.calls == result.stats.sent == sent == len(after - before) == 9
    assert plan.unsent <= after - before and len(plan.unsent) == 6  # the both requests wait on ins answers
    assert asked == after


def test_an_unexpected_teacher_stops_the_run_after_its_handshake_before_any_request(tmp_path):
    store = tmp_path / "store"
    with TeacherServer() as srv:
        with pytest.raises(ConfigError, match=r"reflections are by other/model .* from fixture/teacher-7b"):
            reflect_rows(ROWS[:1], config(srv.url, store), expect=("other/model", "srecycle-v1"))
        assert srv.generation_requests() == 0
        result = reflect_rows(ROWS[:1], config(srv.url, store), expect=("fixture/teacher-7b", "srecycle-v1"))
        assert result.stats.sent == 3 == srv.generation_requests()


def test_store_only_selects_the_store_only_teacher_which_answers_nothing(tmp_path):
    cfg = ReflectConfig(teacher="http://127.0.0.1:9", store_dir=tmp_path / "s", store_only=True)
    teacher = make_teacher(cfg)
    assert isinstance(teacher, StoreOnlyTeacher) and not isinstance(
        make_teacher(replace(cfg, store_only=False)), StoreOnlyTeacher
    )
    with pytest.raises(NotStored):
        asyncio.run(teacher.complete({"api": "chat"}, CallStats()))


def test_a_refusal_is_a_teacher_error_with_its_reason():
    error = Rejected("HTTP 422: the prompt is too long")
    assert isinstance(error, TeacherError) and error.reason == "HTTP 422: the prompt is too long"
