"""``srecycle demo``: the whole job on the bundled sample with the embedded model, on CPU, offline.

It prints what the method does, not only what it produced: for a few rows the four variants side by side
with their status and the student's IFD / r-IFD, the branch the selection rule took and why, then the subset as
``load_dataset`` returns it, and the seconds each stage took.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recycled_datasets.cli.options import MaxNewTokens, Quiet

if TYPE_CHECKING:
    import polars as pl

DEMO_STUDENT = "smollm2-135m"
# The demo's size: enough rows to show every branch of the rule, few enough to finish in minutes on 2 cores.
# The teacher's generation is most of the time (see the README: what the demo costs).
DEMO_ROWS = 10
DEMO_MAX_NEW_TOKENS = 160
VARIANTS = ("ori", "ins", "res", "both")


def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo writes every stage's output.")] = Path(
        ".demo"
    ),
    rows: Annotated[
        int,
        typer.Option("--rows", min=1, help="Use the first N rows of the bundled sample (30 in all)."),
    ] = DEMO_ROWS,
    max_new_tokens: MaxNewTokens = DEMO_MAX_NEW_TOKENS,
    compare: Annotated[
        int, typer.Option("--compare", min=0, help="Rows whose four variants are shown side by side.")
    ] = 3,
    show: Annotated[int, typer.Option("--show", min=0, help="Rows of the loaded subset to print.")] = 3,
    paper_mode: Annotated[
        bool,
        typer.Option(
            "--paper-mode/--keep-unreflected",
            help="Paper mode keeps only rows whose final variant is res or both. The demo keeps ins and ori "
            "finals too by default: the 135M embedded teacher rarely writes a usable reflection.",
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Run the main job on the embedded default, end to end, with no GPU and no Hub access.

    The bundled sample -> reflections by SmolLM2 in-process (every section through the quality gates) ->
    SmolLM2 scores -> selection -> a Hub-layout repo folder with card and plots -> load_dataset(folder,
    "smollm2-135m"). Prints a few rows' four variants with their scores and the branch taken, the rows loaded
    back, and the seconds of each stage. Reruns reuse every finished stage in --workdir.
    """
    from recycled_datasets.progress import set_quiet, setup_logging

    setup_logging(quiet=quiet)
    set_quiet(quiet)

    import time

    from recycled_datasets.errors import RecycledError
    from recycled_datasets.models import resolve_student
    from recycled_datasets.progress import console
    from recycled_datasets.selection import SelectionConfig, report_table
    from recycled_datasets.stages import BuildConfig, build

    out = console()
    started = time.monotonic()
    spec = resolve_student(DEMO_STUDENT)
    out.print(
        f"[bold]srecycle demo[/bold]: teacher and student = {spec.hub_id} (embedded, CPU); {rows} rows of the "
        f"bundled sample, up to {max_new_tokens} new tokens per teacher call; workdir {workdir}"
    )
    selection = SelectionConfig(mode="paper" if paper_mode else "keep-unreflected")
    from recycled_datasets.locking import locked_all

    with locked_all((workdir, "workdir"), (workdir / "teacher", "answer store")):
        result = build(
            BuildConfig(
                workdir=workdir,
                student=spec,
                source="sample",
                teacher="local",
                max_new_tokens=max_new_tokens,
                limit=rows,
                selection=selection,
            )
        )
    out.print(report_table(result.report))
    from recycled_datasets.stages.reflect import read_rows
    from recycled_datasets.workdir import Workdir as Files
    from recycled_datasets.workdir.tables import read_scores

    scores = read_scores(Files(workdir), spec.key)
    reflections, _ = read_rows(Files(workdir), scores["id"].unique(maintain_order=True).to_list())
    for row_id in _rows_to_compare(reflections, compare):
        _print_variants(out, row_id, reflections, scores, selection)

    import datasets

    from recycled_datasets.hf_datasets import load_dataset

    datasets.disable_progress_bars()
    folder = result.dataset
    if result.report.rows_kept == 0:
        raise RecycledError(
            f"no row of the sample passed the selection for {DEMO_STUDENT}, so its config is empty; "
            "the report above says why (rerun with --keep-unreflected to keep unreflected rows)"
        )
    loading = time.monotonic()
    subset = load_dataset(str(folder), DEMO_STUDENT, split="train")
    load_seconds = time.monotonic() - loading
    _print_subset(out, subset, f"load_dataset({str(folder)!r}, {DEMO_STUDENT!r})", show)
    _print_summary(out, result, workdir, load_seconds, time.monotonic() - started)


def _excerpt(text: str | None, n: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def _rows_to_compare(reflections: pl.DataFrame, n: int) -> list[str]:
    """Rows where the teacher's text was used first (most variants ok), then rows whose text was refused."""
    ranked = []
    for i, r in enumerate(reflections.iter_rows(named=True)):
        ok = sum(r[f"{v}_status"] == "ok" for v in VARIANTS[1:])
        ranked.append((-ok, i, r["id"]))
    return [row_id for _, _, row_id in sorted(ranked)[:n]]


def _reason(detail: str | None) -> str:
    from recycled_datasets.teacher.gates import reason_counts

    reasons = reason_counts([detail])
    return ", ".join(reasons) if reasons else ""


def _branch(scores: dict[str, tuple[float | None, float | None]], final: str) -> str:
    """Why the selection rule took ``final``, with the numbers it compared (the rule: docs/method.md)."""

    def fmt(x: float | None) -> str:
        return "missing" if x is None else f"{x:.3f}"

    ifd = {v: s[0] for v, s in scores.items()}
    rifd = {v: s[1] for v, s in scores.items()}
    if final in ("both", "ins"):
        first = f"IFD(ins) {fmt(ifd['ins'])} > IFD(ori) {fmt(ifd['ori'])}: the new instruction is harder"
        sign = "<" if final == "both" else "is not <"
        second = f"r-IFD(both) {fmt(rifd['both'])} {sign} r-IFD(ins) {fmt(rifd['ins'])}"
    else:
        first = f"IFD(ins) {fmt(ifd['ins'])} is not > IFD(ori) {fmt(ifd['ori'])}: the original instruction stays"
        sign = "<" if final == "res" else "is not <"
        second = f"r-IFD(res) {fmt(rifd['res'])} {sign} r-IFD(ori) {fmt(rifd['ori'])}"
    return f"{first}; {second} -> final = {final}"


def _print_variants(out: Any, row_id: str, reflections: pl.DataFrame, scores: pl.DataFrame, config: Any) -> None:
    import polars as pl
    from rich.table import Table

    from recycled_datasets.selection import select_rows

    row = reflections.filter(pl.col("id") == row_id).row(0, named=True)
    mine = scores.filter(pl.col("id") == row_id)
    by_variant = {r["variant"]: (r["ifd"], r["rifd"]) for r in mine.iter_rows(named=True)}
    # The rule itself decides (select_rows on this row alone); the text only spells out its comparisons.
    outcome = select_rows(mine, config)
    final = next(v for v, n in outcome.report.branches.items() if n)
    kept = "kept" if outcome.report.rows_kept else f"dropped ({', '.join(outcome.report.drops)})"

    table = Table(title=f"row {row_id}: the four variants", title_justify="left", show_lines=True)
    table.add_column("")
    for v in VARIANTS:
        table.add_column(f"[bold]{v}[/bold]" + (" (final)" if v == final else ""), overflow="fold", ratio=1)
    table.add_row("instruction", *(_excerpt(row[f"{v}_instruction"], 90) for v in VARIANTS))
    table.add_row("answer", *(_excerpt(row[f"{v}_output"], 120) for v in VARIANTS))
    statuses = ["source"]
    for v in VARIANTS[1:]:
        reason = _reason(row[f"{v}_detail"])
        statuses.append(row[f"{v}_status"] + (f" ({reason})" if reason else ""))
    table.add_row("status", *statuses)

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    table.add_row("IFD", *(num(by_variant.get(v, (None, None))[0]) for v in VARIANTS))
    table.add_row("r-IFD", *(num(by_variant.get(v, (None, None))[1]) for v in VARIANTS))
    out.print(table)
    out.print(f"  branch: {_branch(by_variant, final)}; {kept}\n")


def _print_subset(out: Any, subset: Any, call: str, show: int) -> None:
    from rich.panel import Panel

    out.print(f"\n{call} -> {subset.num_rows} rows, columns {subset.column_names}")
    for i, row in enumerate(subset.select(range(min(show, subset.num_rows)))):
        body = f"[bold]instruction[/bold]: {row['instruction']}\n"
        if row["input"]:
            body += f"[bold]input[/bold]: {row['input']}\n"
        body += f"[bold]output[/bold]: {row['output']}"
        title = f"row {i}: id {row['id']}  variant {row['variant']}  IFD {row['ifd']:.3f}  r-IFD {row['rifd']:.3f}"
        out.print(Panel(body, title=title, title_align="left"))


def _print_summary(out: Any, result: Any, workdir: Path, load_seconds: float, total: float) -> None:
    from rich.table import Table

    reflected = result.stats["reflect"]
    stats = reflected.detail.get("teacher_calls")
    summary = Table(title="srecycle demo: summary")
    summary.add_column("step")
    summary.add_column("result", justify="right")
    summary.add_column("seconds", justify="right")
    seconds = result.seconds
    summary.add_row("source rows (bundled sample)", str(result.rows), f"{seconds.get('source', 0):.1f}")
    teacher = f"{reflected.made} rows reflected, {reflected.reused} reused"
    if stats is not None:
        refused = ", ".join(f"{r} {n}" for r, n in sorted(stats.rejections.items())) or "none"
        teacher += f"; {stats.sent} calls ({stats.parse_retries} retries); refused: {refused}"
    summary.add_row("teacher: reflections", teacher, f"{seconds.get('reflect', 0):.1f}")
    if stats is not None:
        summary.add_row("  of which: loading the teacher model", "", f"{stats.setup_seconds:.1f}")
    summary.add_row(
        "student: IFD / r-IFD",
        f"{result.stats['score'].rows} pairs ({'reused' if result.stats['score'].reused else 'scored'})",
        f"{seconds.get('score', 0):.1f}",
    )
    summary.add_row("selection", f"{result.report.rows_kept} of {result.rows} rows kept", f"{seconds['select']:.1f}")
    summary.add_row("release tree (card, plots)", str(result.dataset), f"{seconds.get('release', 0):.1f}")
    summary.add_row("load_dataset", "", f"{load_seconds:.1f}")
    summary.add_row("[bold]total", str(workdir), f"[bold]{total:.1f}")
    out.print(summary)
