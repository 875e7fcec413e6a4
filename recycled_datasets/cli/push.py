"""``srecycle push`` and ``srecycle push-model``: publish a release or a fine-tuned checkpoint to the Hub.

The token comes from ``HF_TOKEN`` or the stored login (``hf auth login``); it is never an option, so it
cannot end up in shell history, and never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recycled_datasets.cli.options import Quiet, Workdir
from recycled_datasets.errors import ConfigError, InputError

Repo = Annotated[str, typer.Option("--repo", help="Target repo on the Hub, ORG/NAME (created if missing).")]
Tag = Annotated[str | None, typer.Option("--tag", help="Also tag the new commit (e.g. v1.0) so it can be pinned.")]
Private = Annotated[
    bool, typer.Option("--private", help="Create the repo as private (an existing repo keeps its visibility).")
]
ToDir = Annotated[
    Path | None,
    typer.Option("--to-dir", help="Write the exact repo tree to this folder instead of pushing (no network)."),
]


def push(
    repo: Repo,
    workdir: Workdir,
    student: Annotated[
        list[str] | None,
        typer.Option(
            "--student", help="Config(s) to publish, repeatable; on a new repo the first is the default. Default: all."
        ),
    ] = None,
    tag: Tag = None,
    private: Private = False,
    to_dir: ToDir = None,
    eval_dirs: Annotated[
        list[str] | None,
        typer.Option(
            "--eval",
            help="KEY=DIR: the `srecycle judge` output of a model trained on config KEY; its section of the card "
            "shows and links the results (kept in the workdir for later pushes). Repeatable.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="With --to-dir: replace a non-empty folder that is not a release srecycle wrote."
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Publish the workdir's per-student subsets and the reflections as one dataset repo, in one commit."""
    from rich.table import Table

    from recycled_datasets.hub import push_release, write_release_tree
    from recycled_datasets.hub.publish import check_repo_id, check_tag
    from recycled_datasets.locking import locked
    from recycled_datasets.progress import console
    from recycled_datasets.safety import check_replaceable

    check_repo_id(repo)  # before anything is read or contacted
    check_tag(tag)
    if to_dir is not None:
        check_replaceable(to_dir, force=force)
    if not Path(workdir).is_dir():
        raise InputError("no such workdir (no reflections.parquet): run srecycle build first", path=str(workdir))
    # Attaching an evaluation writes into the workdir, so it takes the lock exclusively; a plain push only reads.
    with locked(workdir, what="workdir", shared=not eval_dirs):
        for spec in eval_dirs or ():
            _attach_dataset_evaluation(workdir, spec)
        table = Table(title=f"srecycle push: {repo}")
        if to_dir is not None:
            tree = write_release_tree(workdir, to_dir, students=student or None, repo_id=repo, force=force)
            table.add_column("config")
            table.add_column("rows", justify="right")
            for name in tree.configs:
                table.add_row(name + (" (default)" if name == tree.default_config else ""), str(tree.rows[name]))
            table.caption = f"{len(tree.files)} files written to {tree.root}"
        else:
            result = push_release(repo_id=repo, workdir=workdir, students=student or None, tag=tag, private=private)
            table.add_column("")
            table.add_column("")
            table.add_row("configs on the repo", ", ".join(result.configs))
            table.add_row("files uploaded / deleted", f"{len(result.added)} / {len(result.deleted)}")
            table.add_row("commit", result.commit_url or "")
            if result.tag:
                table.add_row("tag", result.tag)
        if not quiet:
            console().print(table)


def _attach_dataset_evaluation(workdir: Path, spec: str) -> None:
    from recycled_datasets.evaluation.card import attach_evaluation
    from recycled_datasets.workdir import Workdir

    key, sep, folder = spec.partition("=")
    if not sep or not key or not folder:
        raise ConfigError(f"--eval {spec!r}: write KEY=DIR (a student config and a `srecycle judge` output folder)")
    try:
        student = Workdir(workdir).student(key).dir  # the config-name rule: no path can reach outside the workdir
    except ConfigError as e:
        raise ConfigError(f"--eval {spec!r}: {e}") from e
    if not (student / "report.json").is_file():
        raise InputError(
            f"no selection for student {key!r}: run `srecycle select --student {key}` first", path=str(student)
        )
    attach_evaluation(student, Path(folder))


def push_model(
    checkpoint: Annotated[Path, typer.Argument(help="Fine-tuned checkpoint folder (with srecycle_finetune.json).")],
    repo: Repo,
    to_dir: ToDir = None,
    tag: Tag = None,
    private: Private = False,
    eval_dir: Annotated[
        Path | None,
        typer.Option("--eval", help="A `srecycle judge` output folder: its results go into the model card."),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Upload a fine-tuned checkpoint with a model card that names the data it was trained on."""
    from rich.table import Table

    from recycled_datasets.hub import push_model as push_checkpoint
    from recycled_datasets.hub.publish import check_repo_id, check_tag
    from recycled_datasets.progress import console
    from recycled_datasets.safety import check_target

    check_repo_id(repo)  # before anything is read or contacted
    check_tag(tag)
    if to_dir is not None:
        check_target(to_dir, "--to-dir")
    result = push_checkpoint(
        checkpoint=checkpoint, repo_id=repo, to_dir=to_dir, private=private, tag=tag, eval_dir=eval_dir
    )
    table = Table(title=f"srecycle push-model: {repo}")
    table.add_column("")
    table.add_column("")
    table.add_row("files", str(len(result.added)))
    table.add_row("card", str(Path(checkpoint) / "README.md"))
    table.add_row(
        "written to" if to_dir is not None else "commit",
        str(to_dir) if to_dir is not None else result.commit_url or "",
    )
    if result.tag:
        table.add_row("tag", result.tag)
    if not quiet:
        console().print(table)
