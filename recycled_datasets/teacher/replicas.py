"""Which teacher replica takes the next attempt: one that keeps failing is set aside while the others go on.

``--teacher http://a:8080,http://b:8080`` names replicas of one model. Their capacity is one request window: a
queue of slot tokens (a token is its replica's index), one per request a replica takes at once, interleaved so
that free capacity is handed out round-robin. An attempt takes a token and gives it back when it ends.

Without more, a dead replica keeps being chosen: its tokens come back at once (a refused connection) or only
after a full timeout (a hung server), and every request that draws one pays a failed attempt. So a replica whose
attempts fail ``strikes`` times in a row (whatever ``transport.classify`` calls worth a retry: refused or reset
connections, timeouts, 429 and 5xx, garbled bodies) is set aside for a cool-down: its tokens are parked as they
are drawn or given back. When the cool-down is over, one attempt, a probe, goes to it: an answer brings it back
with all its tokens; a failure sets it aside again for twice as long, up to ``cap``. Only the probe's outcome
counts while it is set aside: the late answers and failures of attempts sent before it was set aside neither
bring it back nor lengthen its cool-down.

A replica not ready at the start (the others are) begins set aside, as if it had just failed.

When every replica is set aside, an attempt waits for the earliest to come back, but never past the deadline it
is given (its request's retry budget): then it fails with every replica named, and why it was set aside.

With one URL nothing is ever set aside: there is no other replica to go on with, and the retry backoff alone
paces the retries, as before there were replicas.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from recycled_datasets.errors import TeacherError

logger = logging.getLogger(__name__)

DEFAULT_COOLDOWN = 30.0


@dataclass(frozen=True, slots=True)
class Cooldown:
    """How long a failing replica is set aside: ``seconds``, doubled each time it is set aside again without
    answering in between, at most ``cap`` (or ``seconds``, if larger); set aside after ``strikes`` failed
    attempts in a row, so that one overload answer of a busy replica does not halve the capacity."""

    seconds: float = DEFAULT_COOLDOWN
    cap: float = 600.0
    strikes: int = 3

    def length(self, times: int) -> float:
        """The cool-down of a replica set aside for the ``times``-th time in a row (1 for the first)."""
        return max(self.seconds, min(self.cap, self.seconds * 2 ** (times - 1)))


@dataclass
class _Replica:
    url: str
    strikes: int = 0  # failed attempts in a row
    times: int = 0  # set aside this many times in a row, without an answer in between
    until: float | None = None  # set aside until then (on the clock); None: it takes requests
    reason: str = ""  # the failure that set it aside last
    probing: bool = False  # its one probe is under way
    parked: int = 0  # its tokens held back while it is set aside

    def due(self, now: float) -> bool:
        """Set aside, its cool-down over, and no probe under way: the next attempt may probe it."""
        return self.until is not None and now >= self.until and not self.probing


class Replicas:
    """The request window over the replicas at ``urls``, ``windows[i]`` tokens for replica ``i``.

    ``clock`` (seconds, monotonic) is what cool-downs and deadlines are measured on; tests pass their own.
    """

    def __init__(
        self,
        urls: Sequence[str],
        windows: Sequence[int],
        cooldown: Cooldown | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cooldown = cooldown or Cooldown()
        self.clock = clock
        self.window = sum(windows)
        self._replicas = [_Replica(url) for url in urls]
        self._slots: asyncio.Queue[int] = asyncio.Queue()
        groups = [[index] * size for index, size in enumerate(windows)]
        for slot in itertools.chain.from_iterable(itertools.zip_longest(*groups)):
            if slot is not None:
                self._slots.put_nowait(slot)

    async def take(self, deadline: float) -> tuple[int, bool]:
        """(replica index, whether the attempt is its probe) for one attempt; give it back with :meth:`release`.

        Waits for a free token of a replica that takes requests, or for a set-aside one to come back; raises
        :class:`TeacherError` when every replica is set aside and none is back by ``deadline`` (clock time).
        """
        while True:
            now = self.clock()
            for index, replica in enumerate(self._replicas):
                if replica.parked and replica.due(now):
                    replica.parked -= 1
                    replica.probing = True
                    return index, True
            slot = await self._wait(now, deadline) if self._slots.empty() else self._slots.get_nowait()
            if slot is None:
                continue
            replica = self._replicas[slot]
            if replica.until is None:
                return slot, False
            if replica.due(self.clock()):
                replica.probing = True
                return slot, True
            replica.parked += 1

    async def _wait(self, now: float, deadline: float) -> int | None:
        """A token given back, or None once a cool-down ends (the caller looks again)."""
        cooling = [r.until for r in self._replicas if r.until is not None and not r.probing and r.until > now]
        timeout = min(cooling) - now if cooling else None
        if all(r.until is not None for r in self._replicas):
            # A probe under way may bring its replica back at any moment; else the earliest cool-down's end.
            back = now if any(r.probing for r in self._replicas) else min(r.until or now for r in self._replicas)
            if now >= deadline or back > deadline:
                raise TeacherError(
                    f"every teacher replica is set aside and none is back within this request's retry budget "
                    f"(--max-retry-time): {self.aside()}; every answer received so far is stored, so a rerun "
                    "continues from there"
                )
            timeout = deadline - now if timeout is None else min(timeout, deadline - now)
        try:
            return await asyncio.wait_for(self._slots.get(), timeout)
        except TimeoutError:
            return None

    def answered(self, index: int, probe: bool) -> None:
        """The replica answered (a refusal such as 422 is an answer too): it takes requests, all its tokens."""
        replica = self._replicas[index]
        if replica.until is not None and not probe:
            return  # an attempt sent before it was set aside: its probe decides
        replica.strikes = replica.times = 0
        if replica.until is not None:
            logger.info("teacher %s answers again: it takes requests again", replica.url)
            replica.until, replica.reason = None, ""
            for _ in range(replica.parked):
                self._slots.put_nowait(index)
            replica.parked = 0

    def failed(self, index: int, reason: str, probe: bool) -> None:
        """An attempt at the replica failed in a way worth a retry; ``reason`` is shown, so already masked."""
        replica = self._replicas[index]
        if len(self._replicas) == 1 or (replica.until is not None and not probe):
            return
        replica.strikes += 1
        if not probe and replica.strikes < self.cooldown.strikes:
            return
        replica.times += 1
        seconds = self.cooldown.length(replica.times)
        replica.until, replica.reason = self.clock() + seconds, reason
        if probe:
            logger.info("teacher %s still fails (%s); set aside for %.0f s more", replica.url, reason, seconds)
        else:
            logger.warning(
                "teacher %s failed %d times in a row (last: %s); set aside for %.0f s while the other replicas "
                "take its requests",
                replica.url,
                replica.strikes,
                reason,
                seconds,
            )

    def set_aside(self, index: int, reason: str) -> None:
        """Set the replica aside from the start (it was not ready): probed, like any other, after a cool-down."""
        replica = self._replicas[index]
        replica.times, replica.strikes = 1, self.cooldown.strikes
        seconds = self.cooldown.length(1)
        replica.until, replica.reason = self.clock() + seconds, reason
        logger.warning(
            "teacher %s is not ready (%s); set aside for %.0f s while the other replicas take its requests",
            replica.url,
            reason,
            seconds,
        )

    def release(self, index: int, probe: bool) -> None:
        """Give back the token of an attempt that ended (after :meth:`answered` or :meth:`failed`, if either)."""
        replica = self._replicas[index]
        if probe:
            replica.probing = False
        if replica.until is None or replica.due(self.clock()):
            self._slots.put_nowait(index)
        else:
            replica.parked += 1

    def aside(self) -> str:
        """Each replica set aside now and why, for a message ('' when none is)."""
        now = self.clock()
        return "; ".join(
            f"{r.url} set aside {r.times} time{'s' if r.times > 1 else ''} (last: {r.reason}), "
            + ("its probe under way" if r.probing else f"tried again in {max(0.0, (r.until or now) - now):.0f} s")
            for r in self._replicas
            if r.until is not None
        )
