"""The teacher answer store: keys by content, answers survive the process, bad stores are named."""

from __future__ import annotations

import pytest

from recycled_datasets.errors import StoreError
from recycled_datasets.teacher.store import ANSWER_OK, ANSWER_REJECTED, AnswerStore, request_key

REQUEST = {"api": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0.0}


def test_key_changes_with_teacher_prompt_version_and_any_request_field():
    base = request_key("org/teacher", "v1", REQUEST)
    assert base == request_key("org/teacher", "v1", dict(reversed(list(REQUEST.items()))))  # order-free
    assert base != request_key("org/other", "v1", REQUEST)
    assert base != request_key("org/teacher", "v2", REQUEST)
    assert base != request_key("org/teacher", "v1", {**REQUEST, "max_tokens": 9})


def test_answers_persist_across_opens_with_tokens_and_refusals_can_be_forgotten(tmp_path):
    key, refused = request_key("t", "v1", REQUEST), request_key("t", "v1", {**REQUEST, "seed": 1})
    with AnswerStore.open(tmp_path) as store:
        store.put(
            key,
            teacher="t",
            prompt_version="v1",
            request=REQUEST,
            status=ANSWER_OK,
            text="hello",
            finish_reason="stop",
            prompt_tokens=5,
            completion_tokens=2,
        )
        store.put(refused, teacher="t", prompt_version="v1", request=REQUEST, status=ANSWER_REJECTED, error="422")
        store.put(key, teacher="t", prompt_version="v1", request=REQUEST, status=ANSWER_OK, text="other")
    with AnswerStore.open(tmp_path) as store:
        answer = store.get(key)
        assert (answer.text, answer.prompt_tokens, answer.completion_tokens) == ("hello", 5, 2)  # first answer kept
        assert store.get(refused).status == ANSWER_REJECTED
        assert store.usage()["ok_completion_tokens"] == 2
        assert store.forget_rejected() == 1 and store.get(refused) is None and len(store) == 1


def test_a_file_that_is_not_a_store_is_named(tmp_path):
    (tmp_path / "answers.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable teacher store"):
        AnswerStore.open(tmp_path)
