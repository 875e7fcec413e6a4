"""``srecycle demo``: the method on the bundled sample with the embedded student, on CPU, offline, in two parts.

1. The method. The bundled reference reflections (four variants of each of the 30 sample rows, written the way a
   strong teacher would) are imported with ``import-reflections``, scored by the embedded student, selected
   and released by the project's stages. It prints rows where the student took a reflection and rows where it
   kept the original, each with its four variants, IFD and r-IFD and the branch of the rule; the subset as
   ``load_dataset`` returns it; and a picture of the selection.
2. The teacher. The embedded 135M model runs as teacher on a few rows, clearly labelled as a tiny model's
   attempt: its replies, the quality gates that refused them and why, and that a rerun reuses the stored answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recycled_datasets.cli.options import MaxNewTokens, Quiet

if TYPE_CHECKING:
    import polars as pl

    from recycled_datasets.models import StudentSpec
    from recycled_datasets.selection import SelectionConfig
    from recycled_datasets.stages import BuildResult

DEMO_STUDENT = "smollm2-135m"
# The tiny teacher's share: its generation is nearly all of the demo's time (README: what the demo costs).
DEMO_TEACHER_ROWS = 3
DEMO_MAX_NEW_TOKENS = 128
VARIANTS = ("ori", "ins", "res", "both")
REFERENCE_FOLDER = "sample_reflections"


def reference_reflections_path() -> Path:
    """The bundled reference reflections of the 30-row sample: a folder in the reference authors' split layout."""
    from importlib import resources

    return Path(str(resources.files("recycled_datasets").joinpath("data", REFERENCE_FOLDER)))


@dataclass(frozen=True)
class RowOutcome:
    """One row's fate under the selection rule, as the rule itself (``select_rows``) decided it."""

    id: str
    final: str
    kept: bool
    drop: str
    scores: dict[str, tuple[float | None, float | None]]  # variant -> (IFD, r-IFD)


def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo writes every stage's output.")] = Path(
        ".demo"
    ),
    rows: Annotated[
        int,
        typer.Option("--rows", min=1, help="Rows of the bundled sample the tiny embedded teacher reflects (part 2)."),
    ] = DEMO_TEACHER_ROWS,
    max_new_tokens: MaxNewTokens = DEMO_MAX_NEW_TOKENS,
    compare: Annotated[
        int, typer.Option("--compare", min=0, help="Rows shown where the student took a reflection.")
    ] = 3,
    compare_original: Annotated[
        int, typer.Option("--compare-original", min=0, help="Rows shown where the student kept the original.")
    ] = 2,
    show: Annotated[int, typer.Option("--show", min=0, help="Rows of the loaded subset to print.")] = 3,
    paper_mode: Annotated[
        bool,
        typer.Option(
            "--paper-mode/--keep-unreflected",
            help="Paper mode (the default) keeps only rows whose final variant is res or both; --keep-unreflected "
            "keeps ins and ori finals too.",
        ),
    ] = True,
    quiet: Quiet = False,
) -> None:
    """Show the method on the bundled sample with the embedded student, then the embedded teacher on a few rows.

    Part 1: the bundled reference reflections -> import-reflections -> SmolLM2 scores -> selection -> a Hub-layout
    repo folder -> load_dataset(folder, "smollm2-135m"), with rows' four variants, scores and branch, and a picture.
    Part 2: SmolLM2-135M as teacher on --rows rows (a tiny model: most of its replies are refused by the quality
    gates). Reruns reuse every finished stage and every stored teacher answer in --workdir.
    """

    from recycled_datasets.models import resolve_student
    from recycled_datasets.progress import console
    from recycled_datasets.selection import SelectionConfig

    out = console()
    started = time.monotonic()
    spec = resolve_student(DEMO_STUDENT)
    selection = SelectionConfig(mode="paper" if paper_mode else "keep-unreflected")
    out.print(
        f"[bold]srecycle demo[/bold]: student = {spec.hub_id} (embedded, CPU); workdir {workdir}\n"
        "  part 1: the method on the bundled reference reflections of the 30-row sample\n"
        f"  part 2: the same 135M model as teacher on {rows} rows, a tiny model's attempt"
    )
    method = _part_method(out, workdir / "reference", spec, selection, compare, compare_original, show)
    teacher = _part_teacher(out, workdir / "tiny-teacher", spec, rows, max_new_tokens)
    _print_summary(out, method, teacher, time.monotonic() - started)


# ---- part 1: the method on the reference reflections ----------------------------------------------------------
@dataclass(frozen=True)
class MethodPart:
    result: BuildResult
    import_seconds: float
    load_seconds: float
    figure: Path


def _part_method(
    out: Any,
    workdir: Path,
    spec: StudentSpec,
    selection: SelectionConfig,
    compare: int,
    compare_original: int,
    show: int,
) -> MethodPart:
    from recycled_datasets.errors import RecycledError
    from recycled_datasets.locking import locked
    from recycled_datasets.selection import report_table
    from recycled_datasets.stages import BuildConfig, build
    from recycled_datasets.stages.reference import import_reflections
    from recycled_datasets.stages.reflect import reflected_rows
    from recycled_datasets.workdir.tables import read_scores

    out.rule("[bold]part 1: the method, on reference reflections")
    source = reference_reflections_path()
    out.print(
        "The four variants of each sample row were written the way a strong teacher writes them "
        f"(ins: a harder new instruction and its answer; res: a better answer; both: a better answer to ins), and "
        f"ship in {source}.\nThey are imported with `srecycle import-reflections`, then {spec.key} scores every "
        "variant and the selection rule picks one per row.\n"
    )
    with locked(workdir, what="workdir"):
        begun = time.monotonic()
        imported = import_reflections(str(source), workdir)
        import_seconds = time.monotonic() - begun
        result = build(BuildConfig(workdir=workdir, student=spec, selection=selection))
    out.print(f"imported {imported.rows} rows x 4 variants into {workdir}")
    out.print(report_table(result.report))

    scores = read_scores(workdir, spec.key)
    ids = scores["id"].unique(maintain_order=True).to_list()
    reflections, _ = reflected_rows(workdir, ids)
    outcomes = [_outcome(scores, row_id, selection) for row_id in ids]
    shown = _rows_to_show(outcomes, compare, compare_original)
    for what, rows in zip(("took a reflection", "kept the original"), shown, strict=True):
        if rows:
            out.rule(f"rows where the student {what}")
        for outcome in rows:
            _print_variants(out, outcome, reflections)

    import datasets

    from recycled_datasets.hf_datasets import load_dataset

    if result.report.rows_kept == 0:
        raise RecycledError(
            f"no row of the sample passed the selection for {spec.key}, so its config is empty; the report above "
            "says why (rerun with --keep-unreflected to keep ins and ori finals too)"
        )
    datasets.disable_progress_bars()
    folder = str(result.dataset)
    loading = time.monotonic()
    subset = load_dataset(folder, spec.key, split="train")
    load_seconds = time.monotonic() - loading
    out.rule("the subset, as datasets.load_dataset returns it")
    _print_subset(out, subset, f"load_dataset({folder!r}, {spec.key!r}, split='train')", show)

    from recycled_datasets.hub.plots import write_selection_figure

    figure = write_selection_figure(
        rows=[(o.final, *o.scores[o.final], o.kept) for o in outcomes],
        branches=result.report.branches,
        path=workdir / "selection.png",
    )
    out.print(f"\npicture of the selection (branch counts; IFD / r-IFD of kept and dropped rows): {figure}")
    return MethodPart(result, import_seconds, load_seconds, figure)


def _outcome(scores: pl.DataFrame, row_id: str, config: SelectionConfig) -> RowOutcome:
    import polars as pl

    from recycled_datasets.selection import select_rows

    mine = scores.filter(pl.col("id") == row_id)
    # The rule itself decides (select_rows on this row alone); the demo only spells out its comparisons.
    selected = select_rows(mine, config)
    final = next(v for v, n in selected.report.branches.items() if n)
    by_variant = {r["variant"]: (r["ifd"], r["rifd"]) for r in mine.iter_rows(named=True)}
    by_variant = {v: by_variant.get(v, (None, None)) for v in VARIANTS}
    return RowOutcome(row_id, final, bool(selected.report.rows_kept), ", ".join(selected.report.drops), by_variant)


def _rows_to_show(outcomes: list[RowOutcome], n_reflected: int, n_original: int) -> tuple[list, list]:
    """Rows where a reflection won, one final variant after another (both, res, ins), kept rows first; then rows
    where the original won, kept rows first."""
    by_final: dict[str, list[RowOutcome]] = {}
    for o in sorted(outcomes, key=lambda o: not o.kept):  # stable: source order within kept / dropped
        by_final.setdefault(o.final, []).append(o)
    rounds = zip_longest(*(by_final.get(v, []) for v in ("both", "res", "ins")))
    reflected = [o for one_round in rounds for o in one_round if o is not None][:n_reflected]
    return reflected, by_final.get("ori", [])[:n_original]


def _num(x: float | None) -> str:
    return "missing" if x is None else f"{x:.3f}"


def _branch(scores: dict[str, tuple[float | None, float | None]], final: str) -> str:
    """The comparisons of the rule (docs/method.md, section 4) that led to ``final``, with their numbers."""
    took_ins = final in ("both", "ins")
    first = f"IFD(ins) {_num(scores['ins'][0])} {'>' if took_ins else 'is not >'} IFD(ori) {_num(scores['ori'][0])}"
    better, other = ("both", "ins") if took_ins else ("res", "ori")
    sign = "<" if final == better else "is not <"
    return (
        f"{first}, r-IFD({better}) {_num(scores[better][1])} {sign} r-IFD({other}) {_num(scores[other][1])} -> {final}"
    )


def _print_variants(out: Any, outcome: RowOutcome, reflections: pl.DataFrame) -> None:
    import polars as pl
    from rich.table import Table

    row = reflections.filter(pl.col("id") == outcome.id).row(0, named=True)
    title = f"sample row {row['source_index'] + 1} (id {outcome.id})"
    table = Table(title=title, title_justify="left", show_lines=True)
    table.add_column("")
    for v in VARIANTS:
        table.add_column(f"[bold]{v}[/bold]" + (" (final)" if v == outcome.final else ""), overflow="fold", ratio=1)
    table.add_row(
        "instruction",
        *(
            _excerpt(row[f"{v}_instruction"] + (f" [input: {row[f'{v}_input']}]" if row[f"{v}_input"] else ""), 110)
            for v in VARIANTS
        ),
    )
    table.add_row("answer", *(_excerpt(row[f"{v}_output"], 110) for v in VARIANTS))
    table.add_row("IFD", *(_num(outcome.scores[v][0]) for v in VARIANTS))
    table.add_row("r-IFD", *(_num(outcome.scores[v][1]) for v in VARIANTS))
    out.print(table)
    ifd, rifd = outcome.scores[outcome.final]
    fate = f"kept (IFD {_num(ifd)} < 1 and r-IFD {_num(rifd)} < 1)" if outcome.kept else f"dropped ({outcome.drop})"
    out.print(f"  branch: {_branch(outcome.scores, outcome.final)}; {fate}\n")


def _print_subset(out: Any, subset: Any, call: str, show: int) -> None:
    from rich.panel import Panel

    counts = {v: n for v in VARIANTS if (n := subset["variant"].count(v))}
    out.print(f"{call} -> {subset.num_rows} rows, variants {counts}, columns {subset.column_names}")
    for i, row in enumerate(subset.select(range(min(show, subset.num_rows)))):
        body = f"[bold]instruction[/bold]: {_excerpt(row['instruction'], 300)}\n"
        if row["input"]:
            body += f"[bold]input[/bold]: {_excerpt(row['input'], 200)}\n"
        body += f"[bold]output[/bold]: {_excerpt(row['output'], 300)}"
        title = f"row {i}: id {row['id']}  variant {row['variant']}  IFD {row['ifd']:.3f}  r-IFD {row['rifd']:.3f}"
        out.print(Panel(body, title=title, title_align="left"), soft_wrap=False)


def _excerpt(text: str | None, n: int) -> str:
    """``text`` on one line, cut at ``n`` characters, escaped for rich (a teacher's ``[cut_off]`` is not markup)."""
    from rich.markup import escape

    flat = " ".join((text or "").split())
    return escape(flat if len(flat) <= n else flat[: n - 1] + "…")


# ---- part 2: the tiny embedded teacher -------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherPart:
    result: BuildResult
    stored_answers: int


def _part_teacher(out: Any, workdir: Path, spec: StudentSpec, rows: int, max_new_tokens: int) -> TeacherPart:
    from recycled_datasets.locking import locked_all
    from recycled_datasets.stages import BuildConfig, build
    from recycled_datasets.stages.reflect import reflected_rows
    from recycled_datasets.teacher.store import AnswerStore
    from recycled_datasets.workdir.tables import read_reflections

    out.rule(f"[bold]part 2: a tiny model as teacher ({spec.hub_id}, {rows} rows)")
    out.print(
        "This is a 135M-parameter model's attempt, shown to see the teacher stage run offline; it is far too small "
        "to write usable reflections.\nEvery section it writes goes through the quality gates; a refused one is "
        "retried once, then the variant falls back to the original field.\n"
    )
    config = BuildConfig(workdir, spec, source="sample", teacher="local", max_new_tokens=max_new_tokens, limit=rows)
    with locked_all((workdir, "workdir"), (workdir / "teacher", "answer store")):
        result = build(config, until="reflect")
        reflections, _ = reflected_rows(workdir, read_reflections(workdir)[0]["id"].to_list()[:rows])
        with AnswerStore.open(workdir / "teacher", durable=False) as store:
            answers = list(store.answers())
    _print_teacher_rows(out, reflections, answers)
    stats = result.stats["reflect"]
    calls = stats.teacher_calls
    if calls is None:
        out.print(
            f"[bold]rerun[/bold]: the reflections of all {stats.reused} rows were already in {workdir}; "
            f"0 teacher calls, {stats.seconds:.1f} s (the answer store keeps all {len(answers)} replies)"
        )
    else:
        out.print(
            f"this run: {calls.sent} teacher calls ({calls.parse_retries} retries of refused replies), "
            f"{calls.cached} requests answered from the store instead of the model, {stats.seconds:.1f} s "
            f"(of which {calls.setup_seconds:.1f} s loading the model); a rerun reuses all {len(answers)} stored "
            "answers and makes no call"
        )
    return TeacherPart(result, len(answers))


def _print_teacher_rows(out: Any, reflections: pl.DataFrame, answers: list[tuple[dict[str, Any], Any]]) -> None:
    """Per row: each variant's status and the gates that refused it, then the model's raw replies."""
    from rich.table import Table

    from recycled_datasets.teacher.gates import reason_counts

    for row in reflections.iter_rows(named=True):
        title = f"sample row {row['source_index'] + 1}: {_excerpt(row['ori_instruction'], 80)}"
        table = Table(title=title, title_justify="left", show_lines=True)
        table.add_column("variant")
        table.add_column("status")
        table.add_column("what the teacher wrote, or why it was refused", overflow="fold")
        for v in VARIANTS[1:]:
            status = row[f"{v}_status"]
            if status == "ok":
                text = row[f"{v}_output"] if v != "ins" else f"{row['ins_instruction']} → {row['ins_output']}"
                table.add_row(v, "[green]used", _excerpt(text, 200))
            else:
                detail = row[f"{v}_detail"] or ""
                gates = ", ".join(reason_counts([detail])) or status
                attempts = detail.find("attempt 1:")  # the gates' verdicts, after the fallback's explanation
                why = detail[attempts:] if attempts >= 0 else detail
                table.add_row(v, f"[red]refused ({gates}): original kept", _excerpt(why, 300))
        for kind, attempt, answer in _replies_of(row, answers):
            table.add_row(
                f"[dim]reply: {kind}",
                f"[dim]{attempt}, {answer.completion_tokens or 0} tokens, stop: {answer.finish_reason or '?'}",
                f"[dim]{_excerpt(answer.text or answer.error, 200)}",
            )
        out.print(table)


def _replies_of(row: dict[str, Any], answers: list[tuple[dict[str, Any], Any]]) -> list[tuple[str, str, Any]]:
    """The stored replies to this row's requests: (request kind, attempt, answer), in the order they were made.

    A request is this row's if its prompt quotes the row's instruction and answer (the reflection of the original)
    or, for the response reflection of ``ins``, its new instruction.
    """
    from recycled_datasets.teacher.prompts import NEW_INSTRUCTION

    out = []
    for request, answer in answers:
        prompt = str(request.get("inputs") or request.get("messages") or request.get("prompt") or "")
        attempt = "first try" if not request.get("temperature") else "retry"
        original = row["ori_instruction"] in prompt and row["ori_output"] in prompt
        if NEW_INSTRUCTION in prompt:
            if original:
                out.append(("instruction reflection (ins)", attempt, answer))
        elif original:
            # when ins fell back, both reflects the original pair too: the same request, asked once
            shared = "" if row["ins_status"] == "ok" else ", shared by both"
            out.append((f"response reflection (res{shared})", attempt, answer))
        elif row["ins_status"] == "ok" and row["ins_instruction"] in prompt:
            out.append(("response reflection of ins (both)", attempt, answer))
    return out


# ---- summary ---------------------------------------------------------------------------------------------------
def _print_summary(out: Any, method: MethodPart, teacher: TeacherPart, total: float) -> None:
    from rich.table import Table

    summary = Table(title="srecycle demo: summary")
    summary.add_column("step")
    summary.add_column("result", justify="right")
    summary.add_column("seconds", justify="right")
    result = method.result
    seconds = result.seconds
    summary.add_row("[bold]part 1: reference reflections", "", "")
    summary.add_row("import-reflections", f"{result.rows} rows x 4 variants", f"{method.import_seconds:.1f}")
    summary.add_row(
        "student: IFD / r-IFD",
        f"{result.stats['score'].rows} pairs ({'reused' if result.stats['score'].reused else 'scored'})",
        f"{seconds.get('score', 0):.1f}",
    )
    branches = ", ".join(f"{v} {n}" for v, n in result.report.branches.items())
    summary.add_row(
        "selection", f"{result.report.rows_kept} of {result.rows} rows kept; {branches}", f"{seconds['select']:.1f}"
    )
    summary.add_row("release tree (card, plots)", str(result.dataset), f"{seconds.get('release', 0):.1f}")
    summary.add_row("load_dataset", "", f"{method.load_seconds:.1f}")
    summary.add_row("picture", str(method.figure), "")
    reflected = teacher.result.stats["reflect"]
    calls = reflected.teacher_calls
    summary.add_row("[bold]part 2: the tiny teacher", "", "")
    text = f"{reflected.made} rows reflected, {reflected.reused} reused; {teacher.stored_answers} stored answers"
    if calls is not None:
        refused = ", ".join(f"{r} {n}" for r, n in sorted(calls.rejections.items())) or "none"
        text += f"; {calls.sent} calls ({calls.parse_retries} retries); refused: {refused}"
    summary.add_row("teacher: reflections", text, f"{reflected.seconds:.1f}")
    if calls is not None:
        summary.add_row("  of which: loading the teacher model", "", f"{calls.setup_seconds:.1f}")
    summary.add_row("[bold]total", "", f"[bold]{total:.1f}")
    out.print(summary)
