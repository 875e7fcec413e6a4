"""Which students of a workdir no longer match its reflections, and the command that rebuilds each.

A release (the build's ``DIR/dataset``, ``srecycle push``) leaves out or refuses such a student: publishing it
would pair one text with another text's scores.
"""

from __future__ import annotations

from recycled_datasets.errors import ConfigError, StoreError
from recycled_datasets.workdir import Workdir
from recycled_datasets.workdir.files import read_json, recorded_digest
from recycled_datasets.workdir.pairs import text_digest
from recycled_datasets.workdir.tables import read_reflections, read_scores, read_scores_meta, rows_of


def stale_students(workdir: Workdir, keys: list[str]) -> dict[str, str]:
    """The students among ``keys`` whose files no longer match the workdir, each with why.

    A student is stale when its scores were made for other text than the reflections now hold for its rows (a
    re-judge with other gates, or an import, rewrote them after it was built), or when its subset was selected
    from other scores than those beside it (a build stopped between the two). Publishing such a student would
    pair one text with another text's scores.
    """
    frame = None
    stale: dict[str, str] = {}
    for key in keys:
        files = workdir.student(key)
        meta = read_scores_meta(workdir, key)
        if meta is None:
            stale[key] = "it has no scores.json"
            continue
        if frame is None:
            frame, _ = read_reflections(workdir)
        ids = read_scores(workdir, key)["id"].unique(maintain_order=True).to_list()
        try:
            text = text_digest(rows_of(frame, ids))
        except StoreError:
            stale[key] = f"its scores hold rows that {workdir.reflections.name} no longer has"
            continue
        if meta.get("pairs_sha256") != text:
            stale[key] = f"its scores were made for other text than {workdir.reflections.name} now holds"
            continue
        record_path = files.dir / "subset.json"
        if record_path.is_file():
            record = read_json(record_path, workdir.command("subset.json", key))
            if record.get("scores_sha256") not in (None, recorded_digest(files.scores)):
                stale[key] = "its subset was selected from other scores than those beside it"
    return stale


def rebuild_command(workdir: Workdir, key: str) -> str:
    """The command that makes ``key``'s scores and subset again, from what its scores.json records."""
    meta = read_scores_meta(workdir, key) or {}
    student = meta.get("student") if isinstance(meta.get("student"), dict) else {}
    root = workdir.root
    source = student.get("imported_from")
    if source:
        local = str(source).startswith("local:")
        where = f" (DIR: the folder {str(source)[6:]} they came from)" if local else ""
        return (
            f"srecycle import-scores {'DIR' if local else source} --student {key} --workdir {root}{where}, then "
            f"srecycle select --workdir {root} --student {key}"
        )
    from recycled_datasets.models import students_table

    model = student.get("model")
    try:
        known = students_table().get(key)
    except ConfigError:  # a broken $SRECYCLE_STUDENTS: name the student by its model
        known = None
    if known is not None and (not model or known.model == model):
        parts = [f"srecycle build --workdir {root} --student {key}"]
        defaults = {"template": known.template, "dtype": known.dtype, "scoring": known.scoring or None}
    else:
        parts = [f"srecycle build --workdir {root} --student {model or key}"] + ([f"--name {key}"] if model else [])
        defaults = {}
    for option in ("template", "scoring", "dtype"):
        value = student.get(option)
        if value and value != defaults.get(option, value if option == "scoring" else None):
            parts.append(f"--{option} {value}")
    return " ".join(parts)


def stale_error(workdir: Workdir, stale: dict[str, str]) -> StoreError:
    """One line naming every stale student, why, and the command that rebuilds each."""
    why = "; ".join(f"{key}: {reason}" for key, reason in stale.items())
    commands = "; ".join(rebuild_command(workdir, key) for key in stale)
    return StoreError(
        f"student(s) {', '.join(stale)} no longer match the workdir's reflections ({why}); nothing stale is "
        f"published: rebuild with {commands} (scores are reused where the text is unchanged)"
    )
