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
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recycled_datasets.chat import add_chat_columns, contexts_of
from recycled_datasets.errors import ConfigError, InputError
from recycled_datasets.records import REFLECTION_COLUMNS, SUBSET_COLUMNS, VARIANTS
from recycled_datasets.safety import check_replaceable, write_manifest
from recycled_datasets.workdir.files import read_json, read_table, verify, write_table

logger = logging.getLogger(__name__)

REFLECTIONS_CONFIG = "reflections"
DATA_FILE = "train-00000-of-00001.parquet"
REPORT_FILE = "report.json"
PLOTS_DIR = "plots"
PLOT_NAMES = ("ifd", "rifd", "kept")
REFLECTIONS_LONG_COLUMNS = ("id", "source_index", "variant", "instruction", "input", "output", "status", "detail")
_RESERVED = {REFLECTIONS_CONFIG, PLOTS_DIR, "data", "README.md"}
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ConfigEntry:
    """One config of the release as the card shows it; ``report`` is None for the reflections config."""

    name: str
    rows: int
    info: dict[str, Any]  # the config's dataset_info entry (features, splits, sizes)
    report: dict[str, Any] | None = None
    plots: tuple[str, ...] = ()

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
    """The folders a config owns on the repo."""
    return (f"{name}/",) if name == REFLECTIONS_CONFIG else (f"{name}/", f"{PLOTS_DIR}/{name}/")


@dataclass(frozen=True)
class _Student:
    key: str
    subset: Path
    scores: Path
    report: dict[str, Any]


@dataclass(frozen=True)
class _Workdir:
    root: Path
    meta: dict[str, Any]
    students: tuple[_Student, ...]


def write_release_tree(
    workdir: Path,
    dest: Path,
    *,
    students: Sequence[str] | None = None,
    repo_id: str | None = None,
    force: bool = False,
    legacy: bool = False,
) -> ReleaseTree:
    """Write the repo tree of ``workdir`` into ``dest`` (absent, empty, or an earlier release it replaces).

    ``students`` picks and orders the student configs (default: every ``students/KEY`` folder, sorted);
    the first becomes the default config. ``repo_id`` only fills the card's ``load_dataset`` snippets.
    """
    return build_tree(workdir, dest, students=students, repo_id=repo_id, force=force, legacy=legacy)


def build_tree(
    workdir: Path,
    dest: Path,
    *,
    students: Sequence[str] | None = None,
    repo_id: str | None = None,
    existing: ExistingRelease | None = None,
    force: bool = False,
    legacy: bool = False,
) -> ReleaseTree:
    """:func:`write_release_tree`, merging the card with the configs of an ``existing`` release.

    ``dest`` must be absent, empty or a release folder holding only what its manifest lists (see
    :mod:`recycled_datasets.safety`); ``force`` replaces any folder, ``legacy`` accepts ``DIR/dataset`` as
    earlier versions wrote it.
    """
    work = read_workdir(Path(workdir), students)
    final = Path(dest)
    check_replaceable(final, force=force, legacy=legacy)
    # Written into a folder of this run's own beside the target and moved in at the end: a failure never
    # leaves half a release at ``dest``, and nothing this run did not create is ever removed.
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.srecycle-", dir=final.parent))
    old: Path | None = None
    try:
        staging.chmod(0o755)  # mkdtemp's folder is private; a release folder is an ordinary one
        configs, entries = _write_tree(work, staging, existing, repo_id)
        files = tuple(sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()))
        write_manifest(staging, files)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / "tree")
        os.replace(staging, final)
    except BaseException:
        if old is not None and not final.exists():  # put the previous release back where it was
            os.replace(old / "tree", final)
            old.rmdir()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)
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


def _write_tree(
    work: _Workdir, dest: Path, existing: ExistingRelease | None, repo_id: str | None
) -> tuple[list[ConfigEntry], dict[str, ConfigEntry]]:
    """Every file of the release into the empty folder ``dest``; returns the card's configs and the pushed ones."""
    from huggingface_hub import DatasetCard

    from recycled_datasets.hub.cards import DATASET_TEMPLATE, render_card
    from recycled_datasets.hub.plots import write_plots

    entries: dict[str, ConfigEntry] = {}
    for student in work.students:
        table = _subset_table(student.subset)
        rel = f"{student.key}/{DATA_FILE}"
        (dest / student.key).mkdir(parents=True)
        if table.num_rows:
            write_table(table, dest / rel, digest=False)
        else:
            logger.warning(
                "student %s: no row passed the selection; its config is left out of the release's loadable "
                "configs (only its report and card section are written)",
                student.key,
            )
        (dest / student.key / REPORT_FILE).write_text(_canonical_json(student.report), encoding="utf-8")
        plots = write_plots(
            scores=student.scores,
            subset=table,
            report=student.report,
            dest=dest / PLOTS_DIR / student.key,
        )
        entries[student.key] = ConfigEntry(
            name=student.key,
            rows=table.num_rows,
            info=_dataset_info(student.key, table, dest / rel) if table.num_rows else {"config_name": student.key},
            report=student.report,
            plots=tuple(f"{PLOTS_DIR}/{student.key}/{p.name}" for p in plots),
        )
        logger.info("config %s: %d rows", student.key, table.num_rows)

    reflections = _reflections_table(work.root / "reflections.parquet")
    rel = f"{REFLECTIONS_CONFIG}/{DATA_FILE}"
    write_table(reflections, dest / rel, digest=False)
    entries[REFLECTIONS_CONFIG] = ConfigEntry(
        REFLECTIONS_CONFIG, reflections.num_rows, _dataset_info(REFLECTIONS_CONFIG, reflections, dest / rel)
    )

    configs = _merge_configs(existing, entries)
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
        students=[c for c in configs if c.name != REFLECTIONS_CONFIG],
        reflections=next(c for c in configs if c.name == REFLECTIONS_CONFIG),
        variants=VARIANTS,
    )
    (dest / "README.md").write_text(str(card), encoding="utf-8")

    return configs, entries


# ---- reading the workdir -----------------------------------------------------------------------------------
def read_workdir(workdir: Path, students: Sequence[str] | None) -> _Workdir:
    """Check the workdir contract up front (every stage file against its digest), so a push fails before it
    touches the network and a damaged file is named before anything is written."""
    from recycled_datasets.pipeline import stage_command

    meta_path = workdir / "reflections.json"
    if not (workdir / "reflections.parquet").is_file() or not meta_path.is_file():
        raise InputError(
            "missing reflections.parquet / reflections.json: run `srecycle reflect` (or build) first",
            path=str(workdir),
        )
    verify(workdir / "reflections.parquet", stage_command(workdir, "reflections.parquet"))
    meta = read_json(meta_path, stage_command(workdir, "reflections.json"))
    for key in ("teacher", "prompt_version", "source", "license"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise InputError("missing or empty", path=str(meta_path), field=key)
    students_dir = workdir / "students"
    if students is None:
        keys = sorted(p.name for p in students_dir.iterdir() if p.is_dir()) if students_dir.is_dir() else []
    else:
        keys = list(dict.fromkeys(students))
    if not keys:
        raise InputError(
            "no student subsets: run `srecycle select` (or build) for at least one student", path=str(students_dir)
        )
    found = []
    for key in keys:
        if not _KEY.match(key) or key in _RESERVED:
            raise ConfigError(f"'{key}' cannot be a config name (reserved or not a plain name)")
        folder = students_dir / key
        for name in ("subset.parquet", "scores.parquet", "report.json"):
            if not (folder / name).is_file():
                raise InputError(f"missing {name}: run `srecycle select --student {key}` first", path=str(folder))
            verify(folder / name, stage_command(workdir, name, key))
        report = read_json(folder / "report.json", stage_command(workdir, "report.json", key))
        read_table(folder / "scores.parquet", stage_command(workdir, "scores.parquet", key))  # page checksums
        if (folder / "eval").is_dir():  # an evaluation of a model trained on this config (`srecycle push --eval`)
            from recycled_datasets.evaluation.card import release_evaluation

            report = {**report, "evaluation": release_evaluation(folder / "eval")}
        found.append(_Student(key, folder / "subset.parquet", folder / "scores.parquet", report))
    for student in found:
        for key in ("rows_in", "rows_kept", "branches", "quantiles", "student"):
            if key not in student.report:
                raise InputError(
                    "missing from the selection report", path=str(student.subset.parent / "report.json"), field=key
                )
    return _Workdir(workdir, meta, tuple(found))


def _subset_table(path: Path):
    import pyarrow as pa

    table = _read_parquet(path, SUBSET_COLUMNS)
    schema = pa.schema(
        [(c, pa.float64() if c in ("ifd", "rifd") else pa.string()) for c in SUBSET_COLUMNS],
    )
    return add_chat_columns(table.select(list(SUBSET_COLUMNS)).cast(schema), contexts_of(table))


def _reflections_table(path: Path):
    """The long layout: one row per (source row, variant), source order then ori, ins, res, both.

    Long rather than wide so the config has the same instruction/input/output columns as the subsets and
    a variant is one filter away; ``status``/``detail`` say whether the teacher's text was used.
    """
    import pyarrow as pa

    wide = _read_parquet(path, REFLECTION_COLUMNS)
    n = wide.num_rows
    ids = wide.column("id").cast(pa.string()).to_pylist()
    index = wide.column("source_index").cast(pa.int64()).to_pylist()
    columns: dict[str, list] = {c: [] for c in REFLECTIONS_LONG_COLUMNS}
    per_variant = {
        v: {
            f: wide.column(f"{v}_{f}").to_pylist()
            for f in ("instruction", "input", "output", *(("status", "detail") if v != "ori" else ()))
        }
        for v in VARIANTS
    }
    for row in range(n):
        for v in VARIANTS:
            cols = per_variant[v]
            columns["id"].append(ids[row])
            columns["source_index"].append(index[row])
            columns["variant"].append(v)
            for f in ("instruction", "input", "output"):
                columns[f].append(cols[f][row])
            columns["status"].append(cols["status"][row] if v != "ori" else "ok")
            columns["detail"].append(cols["detail"][row] if v != "ori" else None)
    schema = pa.schema([(c, pa.int64() if c == "source_index" else pa.string()) for c in REFLECTIONS_LONG_COLUMNS])
    contexts = [context for context in contexts_of(wide) for _ in VARIANTS]
    return add_chat_columns(pa.table(columns, schema=schema), contexts)


def _read_parquet(path: Path, columns: Sequence[str]):
    from recycled_datasets.pipeline import stage_command

    key = path.parent.name if path.parent.parent.name == "students" else None
    table = read_table(path, stage_command(path.parent.parent.parent if key else path.parent, path.name, key))
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}", path=str(path), field=missing[0])
    return table


# ---- card metadata -----------------------------------------------------------------------------------------
def _dataset_info(name: str, table, path: Path) -> dict[str, Any]:
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
        "features": [feature(f) for f in table.schema],
        "splits": [{"name": "train", "num_bytes": int(table.nbytes), "num_examples": int(table.num_rows)}],
        "download_size": path.stat().st_size,
        "dataset_size": int(table.nbytes),
    }


def _merge_configs(existing: ExistingRelease | None, new: Mapping[str, ConfigEntry]) -> list[ConfigEntry]:
    """Existing configs keep their place (the first student stays the default); new ones replace or append."""
    order: list[str] = [c.name for c in existing.configs] if existing else []
    order += [name for name in new if name not in order]
    old = {c.name: c for c in existing.configs} if existing else {}
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
                "data_files": [{"split": "train", "path": f"{c.name}/train-*"}],
                **({"default": True} if c.name == default else {}),
            }
            for c in configs
        ],
        dataset_info=[c.info for c in configs],
    )


_KNOWN_SOURCES = (
    ("wizard", "WizardLMTeam/WizardLM_evol_instruct_70k", "WizardLM"),
    ("alpaca", "tatsu-lab/alpaca", "Alpaca"),
)


def _source_dataset(source: str) -> str:
    lowered = source.lower()
    for needle, repo, _ in _KNOWN_SOURCES:
        if needle in lowered:
            return repo
    return source if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and "." not in source.split("/")[-1] else "original"


def _pretty_name(meta: Mapping[str, Any]) -> str:
    lowered = str(meta["source"]).lower()
    label = next((name for needle, _, name in _KNOWN_SOURCES if needle in lowered), Path(str(meta["source"])).stem)
    return f"sRecycled {label}: student-selected reflection-tuning data"


def _size_category(n: int) -> str:
    bounds = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))
    return next((label for bound, label in bounds if n < bound), "1M<n<10M")


def _canonical_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
