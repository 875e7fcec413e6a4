"""The stages a builder config runs, shared with ``srecycle build``: one path from a config to a workdir.

Every stage reuses what the workdir already holds for the same inputs (stored teacher answers, scores whose
inputs match), so running a config again costs only what changed. Each run holds the workdir's lock and the
answer store's, as the CLI does, so a builder and a command never write one workdir at the same time.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# The one import of the stage code: everything below reaches the stages through these names.
from recycled_datasets.stages import BuildConfig, BuildResult, build
from recycled_datasets.workdir import StudentFiles, Workdir
from recycled_datasets.workdir.files import digest_path, fingerprint

from .config import SRecycledConfig

if TYPE_CHECKING:
    from recycled_datasets.models import StudentSpec


@contextlib.contextmanager
def _locked(workdir: Path) -> Iterator[None]:
    from recycled_datasets.locking import locked_all
    from recycled_datasets.scoring import dist_info

    workdir.mkdir(parents=True, exist_ok=True)
    if not dist_info().main:  # another rank of torchrun: it only scores its chunks, while rank 0 holds the locks
        yield
        return
    with locked_all((workdir, "workdir"), (Workdir(workdir).teacher, "answer store")):
        yield


def _student(config: SRecycledConfig, student: str, name: str | None) -> StudentSpec:
    from recycled_datasets.models import resolve_student

    students_file = Path(config.students_file) if config.students_file else None
    return resolve_student(student, name=name, template=config.template, students_file=students_file)


def _build_config(config: SRecycledConfig, spec: StudentSpec, *, release: bool = False) -> BuildConfig:
    return BuildConfig(
        workdir=config.root,
        student=spec,
        source=config.source,
        teacher=config.teacher,
        max_new_tokens=config.max_new_tokens,
        limit=config.limit,
        skip_invalid=config.skip_invalid,
        selection=config.selection(),
        scoring=config.score_config(),
        release=release,
        gates=config.gate_config(),
        prompts=config.prompts(),
        client=config.teacher_client,
    )


def run_student(config: SRecycledConfig, *, release: bool = False) -> BuildResult:
    """Every stage for the student of ``config``: reflect (stored answers reused) -> score -> select.

    ``release`` also writes the release tree (``DIR/dataset``), as ``srecycle build`` does.
    """
    spec = _student(config, config.student or config.name, config.name)
    with _locked(config.root):
        return build(_build_config(config, spec, release=release))


def run_reflections(config: SRecycledConfig) -> int:
    """The teacher stage for the rows of ``config``; returns how many rows this build has."""
    spec = _student(config, config.student or "smollm2-135m", None)  # not scored: only names the build
    with _locked(config.root):
        return build(_build_config(config, spec), until="reflect").rows


def run_scores(config: SRecycledConfig) -> list[str]:
    """The teacher stage, then the score stage for each of the config's students (no selection).

    Returns the students' keys in the config's order.
    """
    specs = [_student(config, student, None) for student in config.score_students()]
    with _locked(config.root):
        for spec in specs:
            build(_build_config(config, spec), until="score")
    return [spec.key for spec in specs]


def inputs_digest(workdir: Path, source: str | None) -> str:
    """A digest of what a build starts from: the workdir's stage files (through the digests kept beside them)
    and, for a local source, its files' sizes and times. The datasets cache is keyed by it, so a workdir or
    source that changed is never served from an older build's cache."""
    h = hashlib.sha256()
    wd = Workdir(workdir)
    files = [wd.reflections, wd.reflections_meta]
    if wd.students_dir.is_dir():
        for folder in sorted(p for p in wd.students_dir.iterdir() if p.is_dir()):
            student = StudentFiles(folder.name, folder)
            files += [student.scores, student.scores_meta, student.subset, student.report]
    for path in files:
        sidecar = digest_path(path)
        if path.is_file():
            h.update(f"{path.relative_to(wd.root)}\0".encode())
            h.update(sidecar.read_bytes() if sidecar.is_file() else path.read_bytes())
    if source is not None and Path(source).exists():
        fingerprint(Path(source), h)
    return h.hexdigest()[:16]
