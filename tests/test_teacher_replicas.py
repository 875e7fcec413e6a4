"""Several teacher replicas (``--teacher http://a,http://b``): one that dies is set aside, the others go on.

The end-to-end tests run the reflect stage (``reflect_rows``, what ``srecycle reflect`` and ``build`` run) over
two ``teacher_server.TeacherServer`` on 127.0.0.1, one of which dies: it crashes mid-run (its open connections
are dropped, then new ones refused), hangs on every answer from the start, or was never started (a closed port).
The run must finish on the other with few attempts on the dead one, well within the timeouts it would otherwise
wait through. A replica that comes up late serving another model is never sent a request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from pathlib import Path

import pytest
from teacher_server import Faults, TeacherServer, realistic_reply, reflect_config

from recycled_datasets.errors import TeacherError
from recycled_datasets.records import assign_ids
from recycled_datasets.teacher import reflect_rows
from recycled_datasets.teacher.base import CallStats
from recycled_datasets.teacher.client import HttpTeacher
from recycled_datasets.teacher.replicas import Cooldown, Replicas
from recycled_datasets.teacher.transport import RetryPolicy

ROWS = assign_ids([(f"Give {i} tips for staying healthy.", "", f"Tip {i}: eat well, sleep, move.") for i in range(24)])
WINDOW = 4  # requests in flight per replica (--concurrency)


def _crash_after(answers: int) -> tuple[Faults, list[TeacherServer]]:
    """Faults of a server that crashes once it has given ``answers`` answers: every request on a connection
    still open is dropped, and its listening socket closes (new connections are refused)."""
    faults = Faults(latency=0.02)
    victim: list[TeacherServer] = []
    given = itertools.count(1)

    def reply(text: str, temperature: float) -> str:
        if next(given) == answers:
            faults.p_drop = 1.0
            victim[0].stop()  # from this handler's thread: the serving thread is another one
        return realistic_reply(text, temperature)

    faults.reply = reply
    return faults, victim


@pytest.mark.parametrize("death", ["crashes", "hangs"])
def test_a_dead_replica_is_set_aside_and_the_run_finishes_on_the_other(death: str, tmp_path: Path, caplog):
    """Issue 22: a replica that refuses, resets or times out stops being chosen; the run does not wait on it."""
    timeout = 0.5
    if death == "crashes":
        faults, victim = _crash_after(4)
    else:
        faults, victim = Faults(p_hang=1.0, hang=2.0), []
    dead = TeacherServer(faults=faults, max_requests=400).start()
    victim.append(dead)
    dead_url = dead.url  # while it listens
    try:
        with TeacherServer(faults=Faults(latency=0.15), max_requests=400) as alive:
            config = reflect_config(f"{dead_url},{alive.url}", tmp_path / "store", concurrency=WINDOW, timeout=timeout)
            started = time.monotonic()
            with caplog.at_level(logging.INFO, logger="recycled_datasets"):
                result = reflect_rows(ROWS, config)
            wall = time.monotonic() - started
    finally:
        dead.stop()
    statuses = {s for v in ("ins", "res", "both") for s in result.table[f"{v}_status"].to_list()}
    assert statuses == {"ok"}, statuses
    # The live replica never fails: every failed attempt was one on the dead replica. At most the attempts under
    # way when it died, and the few that make three failures in a row among their late answers; a run that
    # keeps choosing it fails an attempt on it every few requests, to the end (or runs out of retries).
    failed = sum(result.stats.retry_reasons.values())
    assert failed <= 2 * WINDOW + 3, (
        f"{failed} attempts failed on the dead replica ({dict(result.stats.retry_reasons)}) in {wall:.1f} s: "
        "it kept being chosen"
    )
    # Nothing waited for the dead replica to come back (30 s), nor through a retry budget.
    assert wall < 15, f"the run took {wall:.1f} s: it waited on the dead replica"
    aside = [r for r in caplog.records if r.levelno == logging.WARNING and "set aside" in r.getMessage()]
    assert len(aside) == 1 and dead_url in aside[0].getMessage(), [r.getMessage() for r in aside]


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed): connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_replica_down_at_the_start_is_set_aside_and_the_run_goes_on_with_the_other(tmp_path: Path, caplog):
    """One replica never started: the run does not wait --wait-ready for it, it finishes on the other."""
    down = f"http://127.0.0.1:{_closed_port()}"
    with TeacherServer(faults=Faults(latency=0.02), max_requests=400) as alive:
        config = reflect_config(f"{down},{alive.url}", tmp_path / "store", concurrency=WINDOW, health_timeout=60.0)
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="recycled_datasets"):
            result = reflect_rows(ROWS, config)
        wall = time.monotonic() - started
        assert alive.generation_requests() == 3 * len(ROWS)
    statuses = {s for v in ("ins", "res", "both") for s in result.table[f"{v}_status"].to_list()}
    assert statuses == {"ok"}, statuses
    assert wall < 15, f"the run took {wall:.1f} s: it waited for the replica that is down"
    aside = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and down in r.getMessage()]
    assert len(aside) == 1 and "not ready" in aside[0] and "set aside" in aside[0], aside


def test_when_no_replica_is_ready_the_error_names_each_and_why(tmp_path: Path):
    down = [f"http://127.0.0.1:{_closed_port()}" for _ in range(2)]
    config = reflect_config(",".join(down), tmp_path / "store", health_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(TeacherError) as error:
        reflect_rows(ROWS[:2], config)
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "no teacher replica is ready after 1 s" in message, message
    assert all(url in message for url in down) and "ConnectError" in message, message


@pytest.mark.parametrize(
    ("api", "model"),
    [("chat", "fixture/other-model-13b"), ("generate", "fixture/other-model-13b"), ("generate", "fixture/teacher-7b")],
)
def test_a_replica_that_comes_up_late_takes_requests_only_if_it_serves_the_same_model(api: str, model: str):
    """Down at the start, it comes up later: its probe reads the model it serves first. Another model stops the
    run before anything is sent to it, so no answer of that model is ever stored under this teacher's name (the
    generate route's replies name no model); the same model takes requests like the other replica."""
    port = _closed_port()
    late_url = f"http://127.0.0.1:{port}"
    late = TeacherServer(model=model, port=port)

    async def run() -> TeacherError | None:
        teacher = HttpTeacher(
            [late_url, alive.url],
            api=api,
            raw_prompts=True,
            concurrency=2,
            timeout=5.0,
            health_timeout=10.0,
            retry=RetryPolicy(base=0.005, cap=0.05, max_seconds=10.0),
            cooldown=Cooldown(seconds=0.2),
        )
        try:
            await teacher.start()
            assert teacher.teacher_id == "fixture/teacher-7b"
            late.start()
            payload = teacher.prepare("Give 3 tips for staying healthy.", max_new_tokens=50, temperature=0.0, seed=0)
            for _ in range(300):  # about 6 s at most; the probe is due after 0.2 s
                try:
                    await teacher.complete(payload, CallStats())
                except TeacherError as error:
                    return error
                if late.generation_requests() >= 3:
                    return None
                await asyncio.sleep(0.01)
            raise AssertionError("the late replica was never probed")
        finally:
            await teacher.close()

    with TeacherServer(faults=Faults(latency=0.01), max_requests=1000) as alive:
        try:
            error = asyncio.run(run())
        finally:
            late.stop()
        assert alive.generation_requests() > 0
    if model == "fixture/teacher-7b":
        assert error is None and late.generation_requests() >= 3
        return
    assert late.generation_requests() == 0, late.events
    message = str(error)
    assert late_url in message and model in message and "fixture/teacher-7b" in message, message


# ---- the replica chooser alone, on a clock of the test's own ------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _attempt(replicas: Replicas, dead: set[int], deadline: float = 10**6) -> tuple[int, bool]:
    """One attempt: a replica drawn, its outcome (a failure on the ``dead`` ones), its token given back."""
    index, probe = await replicas.take(deadline)
    if index in dead:
        replicas.failed(index, f"ConnectError: replica {index} refused", probe)
    else:
        replicas.answered(index, probe)
    replicas.release(index, probe)
    return index, probe


def test_a_failing_replica_is_set_aside_probed_once_after_its_cooldown_and_brought_back(caplog):
    clock = Clock()

    async def run() -> None:
        replicas = Replicas(["http://a", "http://b"], [2, 2], Cooldown(seconds=30, cap=100, strikes=2), clock)
        drawn = [await _attempt(replicas, dead={0}) for _ in range(12)]
        assert [i for i, _ in drawn].count(0) == 2  # two failures in a row, then only b
        assert [i for i, _ in drawn[-8:]] == [1] * 8
        assert "http://a set aside 1 time (last: ConnectError: replica 0 refused), tried again in 30 s" in (
            replicas.aside()
        )
        clock.now = 29.9
        assert {(await _attempt(replicas, dead={0}))[0] for _ in range(4)} == {1}
        clock.now = 30.0
        probe = await replicas.take(10**6)
        assert probe == (0, True)
        assert await replicas.take(10**6) == (1, False)  # one probe only; the rest go on with b
        replicas.answered(1, False)
        replicas.release(1, False)
        replicas.failed(0, "ConnectError: still refused", True)
        replicas.release(0, True)  # the probe failed: set aside again, twice as long
        clock.now = 89.9
        assert {(await _attempt(replicas, dead={0}))[0] for _ in range(4)} == {1}
        clock.now = 90.0
        assert await _attempt(replicas, dead=set()) == (0, True)  # the probe answers: a is back, both tokens
        assert sorted([(await replicas.take(10**6))[0] for _ in range(4)]) == [0, 0, 1, 1]

    with caplog.at_level(logging.INFO, logger="recycled_datasets"):
        asyncio.run(run())
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "http://a" in r.getMessage()]
    assert [level for level, _ in said] == ["WARNING", "INFO", "INFO"], said
    assert "set aside for 30 s" in said[0][1] and "60 s more" in said[1][1] and "answers again" in said[2][1]
    assert [Cooldown(seconds=30, cap=100).length(n) for n in (1, 2, 3, 4)] == [30, 60, 100, 100]


def test_when_every_replica_is_set_aside_a_request_waits_for_the_first_back_within_its_budget():
    async def run() -> None:
        clock = Clock()
        replicas = Replicas(["http://a", "http://b"], [1, 1], Cooldown(seconds=30, strikes=1), clock)
        await _attempt(replicas, dead={0, 1})
        await _attempt(replicas, dead={0, 1})
        # Nobody is back within the budget: a clear error at once, naming each replica and why.
        with pytest.raises(TeacherError) as error:
            await replicas.take(deadline=20.0)
        message = str(error.value)
        assert "every teacher replica is set aside" in message and "--max-retry-time" in message
        assert "http://a set aside 1 time (last: ConnectError: replica 0 refused)" in message
        assert "http://b set aside 1 time (last: ConnectError: replica 1 refused)" in message
        # The earliest back within the budget: the request waits for it (on the real clock, briefly).
        replicas = Replicas(["http://a", "http://b"], [1, 1], Cooldown(seconds=0.2, strikes=1))
        await _attempt(replicas, dead={0, 1})
        await _attempt(replicas, dead={0, 1})
        started = time.monotonic()
        index, probe = await asyncio.wait_for(replicas.take(started + 5), 5)
        assert probe and 0.15 < time.monotonic() - started < 2

    asyncio.run(run())


def test_a_single_replica_is_never_set_aside():
    """Nobody else could take its requests: the retry backoff alone paces them, as without replicas."""

    async def run() -> None:
        replicas = Replicas(["http://a"], [1], Cooldown(strikes=1), Clock())
        assert [await _attempt(replicas, dead={0}) for _ in range(5)] == [(0, False)] * 5
        assert replicas.aside() == ""

    asyncio.run(run())
