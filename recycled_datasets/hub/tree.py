"""The release tree: a workdir turned into the exact file layout of the dataset repo on the Hub.

Layout (one config per student, plus the student-independent reflections)::

    README.md                                  dataset card: YAML configs/dataset_info + the body
    KEY/train-00000-of-00001.parquet           the student's subset (columns of subset.parquet, and the row
                                               as chat turns: messages, prompt, completion)
    KEY/report.json                            the selection report the card's table is made from
    reflections/train-00000-of-00001.parquet   every variant of every source row, long layout
    plots/KEY/{ifd,rifd,kept}.png              the figures the card shows

A student whose selection kept no row gets no data file and no entry in the card's YAML (``datasets`` cannot
load a 0-row parquet), but keeps its ``KEY/report.json``, its plots and its section in the card body, which
says that no row passed. If no student has a row, ``reflections`` is the default config.

A config owns ``KEY/`` and ``plots/KEY/``; re-publishing a config replaces exactly those files. The
report is committed next to the data so that a later push of another config can still render this
config's table without the original workdir. Parquet files are byte-identical for identical inputs: fixed
row order, fixed schema, fixed compression, and no timestamps anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recycled_datasets.errors import InputError
from recycled_datasets.locking import process_alive
from recycled_datasets.records import VARIANTS
from recycled_datasets.repo_ids import is_repo_id
from recycled_datasets.safety import check_replaceable, read_manifest, write_manifest
from recycled_datasets.workdir import REFLECTIONS_CONFIG, SCORES_CONFIG, Workdir
from recycled_datasets.workdir.files import atomic_write_bytes, replace_dir, verify, write_tables
from recycled_datasets.workdir.schema import (
    reflections_long_schema,
    release_scores_schema,
    release_subset_schema,
    report_bytes,
)
from recycled_datasets.workdir.tables import (
    has_reflections,
    read_reflections_meta,
    read_report,
    read_scores_table,
    read_subset_table,
)
from recycled_datasets.workdir.views import chat_subset, release_reflections, release_scores

logger = logging.getLogger(__name__)

DATA_FILE = "train-00000-of-00001.parquet"
REPORT_FILE = "report.json"
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class ConfigEntry:
    """One config of the release as the card shows it; ``report`` is None for the reflections config."""

    name: str
    rows: int
    info: dict[str, Any]  # the config's dataset_info entry (features, splits, sizes)
    report: dict[str, Any] | None = None
    plots: tuple[str, ...] = ()
    data_files: str | None = None  # the glob of its files when not NAME/train-*

    @property
    def empty(self) -> bool:
        """A student config whose selection kept no row: shown in the card body, but not loadable."""
        return self.report is not None and self.rows == 0


@dataclass(frozen=True)
class ExistingRelease:
    """What is already on the repo, so a partial push can keep the other configs in the card."""

    configs: tuple[ConfigEntry, ...] = ()
    files: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ReleaseTree:
    """A written release: ``files`` are repo-relative POSIX paths under ``root``, sorted."""

    root: Path
    files: tuple[str, ...]
    configs: tuple[str, ...]  # every loadable config in the card's YAML, the default first
    pushed: tuple[str, ...]  # the configs whose files this tree carries (empty ones included)
    default_config: str
    rows: dict[str, int] = field(default_factory=dict)
    empty: tuple[str, ...] = ()  # pushed student configs that kept no row: report and card section only

    def owned_prefixes(self) -> tuple[str, ...]:
        """Repo path prefixes that belong to the pushed configs (what a push may delete)."""
        return tuple(p for name in self.pushed for p in config_prefixes(name))


def config_prefixes(name: str) -> tuple[str, ...]:
    """The folders a config owns on the repo: a student's config also owns its part of ``scores``."""
    if name == REFLECTIONS_CONFIG:
        return (f"{name}/",)
    return (f"{name}/", f"{PLOTS_DIR}/{name}/", f"{SCORES_CONFIG}/{name}/")


@dataclass(frozen=True)
class _Student:
    key: str
    scores: Path
    report: dict[str, Any]


@dataclass(frozen=True)
class _Workdir:
    files: Workdir
    meta: dict[str, Any]
    students: tuple[_Student, ...]


def write_release_tree(
    workdir: Path,
    dest: Path,
    *,
    students: Sequence[str] | None = None,
    repo_id: str | None = None,
    existing: ExistingRelease | None = None,
    force: bool = False,
    legacy: bool = False,
    skip_stale: bool = False,
) -> ReleaseTree:
    """Write the repo tree of ``workdir`` into ``dest``, merging the card with the configs of an ``existing``
    release (a push's, read from the Hub).

    ``students`` picks and orders the student configs (default: every ``students/KEY`` folder, sorted);
    the first becomes the default config. ``repo_id`` only fills the card's ``load_dataset`` snippets.
    ``dest`` must be absent, empty or a release folder holding only what its manifest lists (see
    :mod:`recycled_datasets.safety`); ``force`` replaces any folder, ``legacy`` accepts ``DIR/dataset`` as
    earlier versions wrote it.
    """
    work = read_workdir(Path(workdir), students, skip_stale=skip_stale)
    final = Path(dest)
    check_replaceable(final, force=force, legacy=legacy)
    remove_leftovers(final)

    # Written into a folder of this run's own beside the target and moved in at the end: a failure never
    # leaves half a release at ``dest``, and nothing this run did not create is ever removed.
    def write(staging: Path) -> tuple[list[ConfigEntry], dict[str, ConfigEntry], tuple[str, ...]]:
        mark_staging(staging)
        configs, entries = _write_tree(work, staging, existing, repo_id)
        (staging / STAGING_MARK).unlink()
        files = tuple(sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()))
        write_manifest(staging, files)
        return configs, entries, files

    configs, entries, files = replace_dir(final, write)
    loadable = [c for c in configs if not c.empty]
    return ReleaseTree(
        root=final,
        files=files,
        configs=tuple(c.name for c in loadable),
        pushed=tuple(entries),
        default_config=loadable[0].name,
        rows={c.name: c.rows for c in configs},
        empty=tuple(c.name for c in configs if c.empty and c.name in entries),
    )


STAGING_MARK = ".srecycle-staging"


def mark_staging(staging: Path) -> None:
    """Sign a staging folder as this process's, so a later run can tell a leftover of a killed run (SIGKILL,
    power loss: no cleanup ran) from a folder of the user's and from another run's folder still being written."""
    data = {"pid": os.getpid(), "host": socket.gethostname()}
    (staging / STAGING_MARK).write_text(json.dumps(data) + "\n", encoding="utf-8")


def _dead_run(folder: Path) -> bool:
    """Whether ``folder`` is a staging folder signed by a process of this host that no longer runs."""
    try:
        data = json.loads((folder / STAGING_MARK).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    pid = data.get("pid") if isinstance(data, dict) else None
    return isinstance(pid, int) and data.get("host") == socket.gethostname() and not process_alive(pid)


def remove_leftovers(final: Path) -> list[Path]:
    """Remove what killed runs left beside ``final``: staging folders (``.NAME.srecycle-*``) they signed, and
    the previous release they had moved aside (``.NAME.old-*/tree``, a release folder with its manifest).
    Anything else so named is not provably ours and stays."""
    parent = final.parent
    if not parent.is_dir():
        return []
    removed = []
    for folder in sorted(parent.glob(f".{final.name}.*")):
        if folder.is_symlink() or not folder.is_dir():
            continue
        suffix = folder.name[len(final.name) + 2 :]
        staging = suffix.startswith("srecycle-") and _dead_run(folder)
        moved_aside = (
            suffix.startswith("old-")
            and [p.name for p in folder.iterdir()] == ["tree"]
            and read_manifest(folder / "tree") is not None
        )
        if staging or moved_aside:
            logger.info("removing %s, left by an interrupted run", folder)
            shutil.rmtree(folder)
            removed.append(folder)
    return removed


def _write_student(work: _Workdir, student: _Student, dest: Path) -> ConfigEntry:
    """A student's config: its subset, report, part of the scores config and plots; returns its card entry."""
    from recycled_datasets.hub.plots import write_plots

    subset = read_subset_table(work.files, student.key)
    rel = f"{student.key}/{DATA_FILE}"
    (dest / student.key).mkdir(parents=True)
    rows, info = 0, {"config_name": student.key}
    if subset.num_rows:
        rows, nbytes = write_tables(chat_subset(subset), release_subset_schema(), dest / rel, digest=False)
        info = _dataset_info(student.key, release_subset_schema(), rows, dest / rel, nbytes)
    else:
        logger.warning(
            "student %s: no row passed the selection; its config is left out of the release's loadable "
            "configs (only its report and card section are written)",
            student.key,
        )
    atomic_write_bytes(dest / student.key / REPORT_FILE, report_bytes(student.report), digest=False)
    scores_file = dest / SCORES_CONFIG / student.key / DATA_FILE
    write_tables(release_scores(work.files, [student.key]), release_scores_schema(), scores_file, digest=False)
    folder = dest / PLOTS_DIR / student.key
    plots = write_plots(scores=student.scores, subset=subset, report=student.report, dest=folder)
    logger.info("config %s: %d rows", student.key, rows)
    plot_paths = tuple(f"{PLOTS_DIR}/{student.key}/{p.name}" for p in plots)
    return ConfigEntry(name=student.key, rows=rows, info=info, report=student.report, plots=plot_paths)


def _write_tree(
    work: _Workdir, dest: Path, existing: ExistingRelease | None, repo_id: str | None
) -> tuple[list[ConfigEntry], dict[str, ConfigEntry]]:
    """Every file of the release into the empty folder ``dest``; returns the card's configs and the pushed ones."""
    from huggingface_hub import DatasetCard

    from recycled_datasets.hub.cards import DATASET_TEMPLATE, render_card

    entries = {student.key: _write_student(work, student, dest) for student in work.students}
    path, schema = dest / REFLECTIONS_CONFIG / DATA_FILE, reflections_long_schema()
    rows, nbytes = write_tables(release_reflections(work.files), schema, path, digest=False)
    info = _dataset_info(REFLECTIONS_CONFIG, schema, rows, path, nbytes)
    entries[REFLECTIONS_CONFIG] = ConfigEntry(REFLECTIONS_CONFIG, rows, info)

    configs = _merge_configs(existing, entries)
    on_repo = {f.split("/")[1] for f in (existing.files if existing else ()) if f.startswith(f"{SCORES_CONFIG}/")}
    configs.append(_scores_entry(configs, scored=on_repo | {s.key for s in work.students}))
    loadable = [c for c in configs if not c.empty]
    default = loadable[0].name  # the first student with rows, else reflections (always loadable)
    card = render_card(
        DatasetCard,
        _card_metadata(work.meta, loadable, default),
        DATASET_TEMPLATE,
        repo_id=repo_id or "ORG/NAME",
        repo_id_known=repo_id is not None,
        meta=work.meta,
        default_config=default,
        students=[c for c in configs if c.name not in (REFLECTIONS_CONFIG, SCORES_CONFIG)],
        reflections=next(c for c in configs if c.name == REFLECTIONS_CONFIG),
        scores=next(c for c in configs if c.name == SCORES_CONFIG),
        variants=VARIANTS,
    )
    (dest / "README.md").write_text(str(card), encoding="utf-8")

    return configs, entries


# ---- reading the workdir -----------------------------------------------------------------------------------
def read_workdir(workdir: Path, students: Sequence[str] | None, *, skip_stale: bool = False) -> _Workdir:
    """Check the workdir contract up front (every stage file against its digest, every student against the
    reflections), so a push fails before it touches the network and a damaged file or a stale student is named
    before anything is written. ``skip_stale`` leaves stale students out with a warning instead (the workdir's
    own DIR/dataset, rewritten by every build); a push refuses them."""
    wd = Workdir(workdir)
    if not has_reflections(wd):
        raise InputError(
            "missing reflections.parquet / reflections.json: run `srecycle reflect` (or build) first",
            path=str(workdir),
        )
    verify(wd.reflections, wd.command_for(wd.reflections))
    meta = read_reflections_meta(wd)
    for key in ("teacher", "prompt_version", "source", "license"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise InputError("missing or empty", path=str(wd.reflections_meta), field=key)
    meta = {**meta, "source": public_name(meta["source"]), "teacher": public_name(meta["teacher"])}
    keys = wd.student_keys() if students is None else list(dict.fromkeys(students))
    if not keys:
        raise InputError(
            "no student subsets: run `srecycle select` (or build) for at least one student", path=str(wd.students_dir)
        )
    for key in keys:
        files = wd.student(key)  # checks the config-name rule
        for path in (files.subset, files.scores, files.report):
            if not path.is_file():
                raise InputError(
                    f"missing {path.name}: run `srecycle select --student {key}` first", path=str(files.dir)
                )
            verify(path, wd.command_for(path))
    keys = _fresh(wd, keys, skip_stale=skip_stale)
    found = []
    for key in keys:
        files = wd.student(key)
        report = read_report(wd, key)
        report = {
            k: public_name(v) if k in ("source", "teacher") and isinstance(v, str) else v for k, v in report.items()
        }
        read_scores_table(wd, key)  # page checksums and columns
        if files.eval.is_dir():  # an evaluation of a model trained on this config (`srecycle push --eval`)
            from recycled_datasets.evaluation.card import release_evaluation

            report = {**report, "evaluation": release_evaluation(files.eval)}
        for field_name in ("rows_in", "rows_kept", "branches", "quantiles", "student"):
            if field_name not in report:
                raise InputError("missing from the selection report", path=str(files.report), field=field_name)
        found.append(_Student(key, files.scores, report))
    return _Workdir(wd, meta, tuple(found))


def public_name(name: str) -> str:
    """A source or teacher as a release may name it: a local path names the user's folders, so only its file name
    is published (``/home/me/data/alpaca.json`` -> ``alpaca.json``, ``reference:/home/me/ref`` -> ``reference:ref``);
    Hub ids, URLs' hosts and the project's names stay as they are."""
    prefix, sep, rest = name.partition(":")
    if sep and prefix in ("reference", "local") and rest:
        return f"{prefix}:{public_name(rest)}"
    if "://" in name:
        return name
    path = Path(name) if Path(name).exists() else Path(name.split(":", 1)[0])  # a Hub id may end in :SPLIT
    local = path.is_absolute() or name.startswith(("~", ".")) or path.exists()
    return (path.name or name) if local else name


def _fresh(wd: Workdir, keys: list[str], *, skip_stale: bool) -> list[str]:
    from recycled_datasets.hub.stale import stale_error, stale_students

    stale = stale_students(wd, keys)
    if not stale:
        return keys
    fresh = [key for key in keys if key not in stale]
    if not skip_stale or not fresh:
        raise stale_error(wd, stale)
    logger.warning("%s; left out of %s until then", stale_error(wd, stale), wd.dataset)
    return fresh


def _scores_entry(configs: Sequence[ConfigEntry], scored: set[str]) -> ConfigEntry:
    """The ``scores`` config: each student's file in ``scores/KEY/`` (``scored``: the students that have one;
    a repo pushed before the config existed lacks it for its older students); a row scores four variants."""
    rows = sum(4 * int(c.report["rows_in"]) for c in configs if c.report is not None and c.name in scored)
    info = _dataset_info(SCORES_CONFIG, release_scores_schema(), rows, None)
    return ConfigEntry(SCORES_CONFIG, rows, info, data_files=f"{SCORES_CONFIG}/*/train-*")


# ---- card metadata -----------------------------------------------------------------------------------------
def _dataset_info(name: str, schema, rows: int, path: Path | None, nbytes: int = 0) -> dict[str, Any]:
    import pyarrow as pa

    def dtype(t) -> str:
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "string"
        return "float64" if pa.types.is_float64(t) else "int64" if pa.types.is_int64(t) else str(t)

    def feature(f) -> dict[str, Any]:
        # A list of turns is written the way the Hub's YAML writes a list of structs.
        if pa.types.is_list(f.type) and pa.types.is_struct(f.type.value_type):
            return {"name": f.name, "list": [{"name": s.name, "dtype": dtype(s.type)} for s in f.type.value_type]}
        return {"name": f.name, "dtype": dtype(f.type)}

    return {
        "config_name": name,
        "features": [feature(f) for f in schema],
        "splits": [{"name": "train", "num_bytes": int(nbytes), "num_examples": int(rows)}],
        **({"download_size": path.stat().st_size, "dataset_size": int(nbytes)} if path is not None else {}),
    }


def _merge_configs(existing: ExistingRelease | None, new: Mapping[str, ConfigEntry]) -> list[ConfigEntry]:
    """Existing configs keep their place (the first student stays the default); new ones replace or append."""
    kept = [c for c in existing.configs if c.name != SCORES_CONFIG] if existing else []  # remade from the students
    order: list[str] = [c.name for c in kept]
    order += [name for name in new if name not in order]
    old = {c.name: c for c in kept}
    merged = [new.get(name) or old[name] for name in order]
    students = [c for c in merged if c.name != REFLECTIONS_CONFIG]
    return students + [c for c in merged if c.name == REFLECTIONS_CONFIG]


def _card_metadata(meta: Mapping[str, Any], configs: Sequence[ConfigEntry], default: str):
    """The card's front matter: ``configs`` (one per loadable config, the default flagged) and ``dataset_info`` let
    ``load_dataset(repo, config)`` work with no code; the rest is what the Hub indexes."""
    from huggingface_hub import DatasetCardData

    return DatasetCardData(
        license=meta["license"],
        pretty_name=_pretty_name(meta),
        language=["en"],
        task_categories=["text-generation"],
        size_categories=[_size_category(max(c.rows for c in configs))],
        source_datasets=[_source_dataset(meta["source"])],
        tags=["instruction-tuning", "reflection-tuning", "data-selection", "ifd", "synthetic", "srecycled"],
        configs=[
            {
                "config_name": c.name,
                "data_files": [{"split": "train", "path": c.data_files or f"{c.name}/train-*"}],
                **({"default": True} if c.name == default else {}),
            }
            for c in configs
        ],
        dataset_info=[c.info for c in configs],
    )


def _public_source(source: str):  # -> KnownSource | None
    """The public set a release's source names (by name, Hub id or label, in any case), if any."""
    from recycled_datasets.sources import KNOWN_SOURCES

    lowered = source.lower()
    return next(
        (k for k in KNOWN_SOURCES if k.public and any(n.lower() in lowered for n in (k.name, k.path, k.label))), None
    )


def _source_dataset(source: str) -> str:
    known = _public_source(source)
    if known is not None:
        return known.path
    return source if is_repo_id(source) and "." not in source.split("/")[-1] else "original"


def _pretty_name(meta: Mapping[str, Any]) -> str:
    known = _public_source(str(meta["source"]))
    label = known.label if known is not None else Path(str(meta["source"])).stem
    return f"sRecycled {label}: student-selected reflection-tuning data"


def _size_category(n: int) -> str:
    bounds = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))
    return next((label for bound, label in bounds if n < bound), "1M<n<10M")
