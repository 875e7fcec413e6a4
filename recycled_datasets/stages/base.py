"""The stage interface: inputs in the workdir to outputs in the workdir, done-ness by a digest of the inputs.

A stage is built with everything it reads (the workdir, the ids of this build's rows, its settings); ``done``
says whether its outputs already hold the result for exactly those inputs (the digest of the inputs is
recorded next to the outputs), and ``run`` makes what is missing and returns a :class:`StageStats`. The
score stage distributes under ``torchrun``: the scorer reads each rank's place from torchrun's environment.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from recycled_datasets.workdir import Workdir

if TYPE_CHECKING:
    from recycled_datasets.selection import SelectionReport
    from recycled_datasets.teacher import ReflectStats


@dataclass
class StageStats:
    """What one stage did: one type for every stage.

    Attributes:
        stage: the stage's name.
        rows: rows (or scored pairs) the stage's output holds for this build.
        reused: of those, how many were already in the workdir.
        made: how many this run made.
        fallbacks: variants that fell back to the original, per reason (teacher stage; 0 elsewhere).
        drops: rows left out, per reason (select stage).
        seconds: wall time of ``run``.

    A stage with more to say returns a subclass with typed fields (:class:`ReflectStageStats`, ...).
    """

    stage: str
    rows: int = 0
    reused: int = 0
    made: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class ReflectStageStats(StageStats):
    """The reflect stage's record: the teacher, and its calls where it was asked (``None`` where not)."""

    teacher: str = ""
    teacher_calls: ReflectStats | None = None  # the rows reflected by this run
    rejudge_calls: ReflectStats | None = None  # the stored answers judged again because the gates changed
    rejudged: int | None = None  # rows judged again


@dataclass
class SelectStageStats(StageStats):
    """The select stage's record: its student's selection report."""

    report: SelectionReport | None = None


@dataclass
class ReleaseStageStats(StageStats):
    """The release stage's record: the folder written and its loadable configs."""

    root: Path | None = None
    configs: tuple[str, ...] = ()


def digest_of(*parts: Any) -> str:
    """A sha256 of JSON-able parts (dicts with sorted keys): what a stage records of its inputs."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()


class Stage(ABC):
    """One step of the build (see the module docstring)."""

    name: ClassVar[str]
    workdir: Workdir  # every stage is a dataclass whose first field is its workdir

    @abstractmethod
    def done(self) -> bool:
        """Whether the outputs already hold this stage's result for these inputs."""

    @abstractmethod
    def _run(self) -> StageStats:
        """Make the outputs (reusing what is there) and say what was done."""

    def reuse(self) -> StageStats:
        """The stats of outputs that are already :meth:`done` (a stage whose ``_run`` does no work then may
        leave this as it is)."""
        return self._run()

    def run(self) -> StageStats:
        """:meth:`reuse` when the outputs are done for these inputs, else make them."""
        start = time.monotonic()
        stats = self.reuse() if self.done() else self._run()
        stats.seconds = round(time.monotonic() - start, 3)
        return stats


def counts(items: Mapping[str, int]) -> dict[str, int]:
    """Non-zero counts, sorted by name."""
    return {k: int(v) for k, v in sorted(items.items()) if v}
