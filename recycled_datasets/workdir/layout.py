"""Where every file of a workdir lives, and the rule for config (student key) names.

Layout (docs/method.md, section 8)::

    DIR/reflections.parquet, reflections.json    the teacher stage: every variant of every row (+ metadata)
    DIR/teacher/answers.sqlite                   the teacher's stored answers (a rerun resends nothing stored)
    DIR/students/KEY/scores.parquet, scores.json the score stage for student KEY (+ the digest of its inputs)
    DIR/students/KEY/scores.parquet.parts/       the scorer's checkpoints while it runs
    DIR/students/KEY/subset.parquet, report.json the select stage for KEY
    DIR/students/KEY/eval/                       an evaluation of a model trained on KEY's subset
    DIR/dataset/                                 the release tree (the Hub repo's files)

Every stage file has a digest beside it (``.NAME.sha256``, see :mod:`recycled_datasets.workdir.files`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from recycled_datasets.errors import ConfigError, InputError

REFLECTIONS_CONFIG = "reflections"
SCORES_CONFIG = "scores"
# Names a student key may not take: the other configs and the release tree's folders.
RESERVED_NAMES = frozenset({REFLECTIONS_CONFIG, SCORES_CONFIG, "plots", "data", "dataset", "README.md"})
_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # a config name: a lowercase folder-safe word, not a Hub id


# A key names a folder, and temporary files inside it carry it again: well below the 255 bytes a name may have.
MAX_KEY_LENGTH = 96


def check_config_name(key: str) -> str:
    """``key`` if it can name a student's config (and its folders), else a :class:`ConfigError` saying why."""
    if not _KEY.match(key or ""):
        raise ConfigError(
            f"student key {key!r} is not a valid config name: use lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (pass --name KEY)"
        )
    if len(key) > MAX_KEY_LENGTH:
        raise ConfigError(
            f"student key {key[:40]!r}... is {len(key)} characters long; a config name has at most {MAX_KEY_LENGTH} "
            "(pass a shorter --name KEY)"
        )
    if key in RESERVED_NAMES:
        raise ConfigError(
            f"{key!r} is reserved (it names another part of the dataset), not a student's config: pass --name KEY"
        )
    return key


@dataclass(frozen=True)
class StudentFiles:
    """The files of one student in a workdir."""

    key: str
    dir: Path

    @property
    def scores(self) -> Path:
        return self.dir / "scores.parquet"

    @property
    def scores_meta(self) -> Path:
        return self.dir / "scores.json"

    @property
    def parts(self) -> Path:
        return self.dir / "scores.parquet.parts"

    @property
    def subset(self) -> Path:
        return self.dir / "subset.parquet"

    @property
    def report(self) -> Path:
        return self.dir / "report.json"

    @property
    def eval(self) -> Path:
        return self.dir / "eval"


@dataclass(frozen=True)
class Workdir:
    """A workdir: the one place that knows its file names."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def reflections(self) -> Path:
        return self.root / "reflections.parquet"

    @property
    def reflections_meta(self) -> Path:
        return self.root / "reflections.json"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def students_dir(self) -> Path:
        return self.root / "students"

    def student(self, key: str) -> StudentFiles:
        return StudentFiles(key, self.students_dir / check_config_name(key))

    def student_keys(self) -> list[str]:
        """The keys of the students built here, sorted."""
        folder = self.students_dir
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def check_links(self) -> None:
        """Refuse a symbolic link among the workdir's own files and folders: writing through one would replace a
        file outside the workdir (or write a student's files into another folder). The workdir itself may be a
        link; files of the user's own beside ours are not looked at."""
        own = {"reflections.parquet", "reflections.json", "teacher", "students", "dataset", "report.json"}
        own |= {f".{name}.sha256" for name in own}
        candidates = [self.root / name for name in sorted(own)]
        for folder in (self.students_dir, self.teacher):
            if folder.is_dir() and not folder.is_symlink():
                for parent, dirs, files in os.walk(folder):  # links are listed, never followed
                    candidates += [Path(parent) / name for name in sorted(dirs + files)]
        link = next((path for path in candidates if path.is_symlink()), None)
        if link is not None:
            raise InputError(
                "is a symbolic link; srecycle never writes through a link in a workdir: put the file or folder "
                "itself there, or remove the link",
                path=str(link),
            )

    def command(self, name: str, key: str | None = None) -> str:
        """The command that writes the stage file ``name`` (of student ``key``) again."""
        if name.startswith("reflections"):
            return (
                f"srecycle build --workdir {self.root} --source SOURCE --teacher TEACHER (stored answers are reused)"
            )
        if name.startswith("scores"):
            return f"srecycle build --workdir {self.root} --student {key}"
        return f"srecycle select --workdir {self.root} --student {key}"

    def command_for(self, path: Path) -> str:
        """:meth:`command` for a stage file given by its path."""
        path = Path(path)
        key = path.parent.name if path.parent.parent == self.students_dir else None
        return self.command(path.name, key)
