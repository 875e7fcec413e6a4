"""Several teacher replicas (``--teacher http://a,http://b``): one that dies is set aside, the others go on."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from recycled_datasets.errors import TeacherError
from recycled_datasets.teacher.replicas import Cooldown, Replicas

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
