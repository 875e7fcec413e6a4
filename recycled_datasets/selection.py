"""Selection: each student picks, per source row, the one variant it finds worth learning from.

The rule is stated in docs/method.md, section 4.

The rule works on a student's scores only (one row per (id, variant)), so re-selecting with another mode or
top-k never needs the student or the teacher again::

    if IFD(ins) > IFD(ori):   final = both if rIFD(both) < rIFD(ins) else ins
    else:                     final = res  if rIFD(res)  < rIFD(ori) else ori
    keep the row only if IFD(final) < 1 and rIFD(final) < 1

A comparison with a missing score is false, so a missing score never promotes a reflection. Every row that
is not kept is counted under exactly one drop reason, checked in this order: the final variant's scores are
missing; IFD(final) >= 1; rIFD(final) >= 1; paper mode drops ``ins``/``ori`` finals; top-k/top-p cut.
Applying the paper-mode filter after the < 1 filters makes its drop count the number of rows that
``keep-unreflected`` mode would add.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from recycled_datasets.errors import ConfigError, InputError
from recycled_datasets.records import VARIANTS

if TYPE_CHECKING:
    import polars as pl
    from rich.table import Table

Mode = Literal["paper", "keep-unreflected"]
MODES: tuple[str, ...] = ("paper", "keep-unreflected")
QUANTILES: tuple[tuple[str, float], ...] = (("p10", 0.1), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("p90", 0.9))

# Drop reasons, in the order they are checked (a row is counted under the first that applies).
DROP_MISSING_SCORE = "final_score_missing"
DROP_IFD = "ifd_not_below_1"
DROP_RIFD = "rifd_not_below_1"
DROP_PAPER_INS = "paper_mode_ins_final"
DROP_PAPER_ORI = "paper_mode_ori_final"
DROP_TOP = "below_top_cut"
DROP_REASONS: tuple[str, ...] = (DROP_MISSING_SCORE, DROP_IFD, DROP_RIFD, DROP_PAPER_INS, DROP_PAPER_ORI, DROP_TOP)

SELECTED_COLUMNS: tuple[str, ...] = ("id", "variant", "ifd", "rifd")


@dataclass(frozen=True, slots=True)
class SelectionConfig:
    """How a student's subset is cut from its scores.

    Attributes:
        mode: ``paper`` keeps only rows whose final variant is ``both`` or ``res`` (as the released sets do);
            ``keep-unreflected`` also keeps ``ins`` and ``ori`` finals.
        top_k: after the rule, keep only the k kept rows with the highest IFD (the first IFD paper's choice:
            the hardest rows the student can still follow). Ties go to the earlier source row.
        top_p: the same with a percentage (0 < p <= 100) of the kept rows, rounded up so p > 0 keeps a row.
    """

    mode: Mode = "paper"
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"selection mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.top_k is not None and self.top_p is not None:
            raise ConfigError("give --top-k or --top-p, not both")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise ConfigError(f"--top-k must be a positive number of rows, not {self.top_k}")
        if self.top_p is not None and not (0 < self.top_p <= 100):
            raise ConfigError(f"--top-p is a percentage in (0, 100], not {self.top_p}")

    @property
    def top(self) -> dict[str, int | float] | None:
        """The top cut as report.json writes it: null, {"k": int} or {"p": float}."""
        if self.top_k is not None:
            return {"k": self.top_k}
        if self.top_p is not None:
            return {"p": float(self.top_p)}
        return None


@dataclass(frozen=True, slots=True)
class SelectionReport:
    """What the rule did to one student's scores: the content of report.json (see docs/method.md, section 8).

    ``branches`` counts the final variant of every row (before any filter); ``drops`` counts every row that
    was not kept under one reason; ``quantiles`` describe IFD and r-IFD of the kept rows (null when none).
    The provenance fields (student, teacher, prompt_version, source) are filled by the pipeline.
    """

    mode: str
    rows_in: int
    rows_kept: int
    branches: dict[str, int]
    drops: dict[str, int]
    quantiles: dict[str, dict[str, float | None]]
    top: dict[str, int | float] | None = None
    student: dict[str, str] = field(default_factory=dict)
    teacher: str = ""
    prompt_version: str = ""
    source: str = ""
    # Variants of these rows whose teacher text was refused, per reason (a quality gate, unparsed, ...).
    teacher_fallbacks: dict[str, int] = field(default_factory=dict)

    def with_provenance(
        self, *, student: dict[str, str], teacher: str, prompt_version: str, source: str
    ) -> SelectionReport:
        """A copy that names the student and the teacher run the subset came from."""
        return replace(self, student=dict(student), teacher=teacher, prompt_version=prompt_version, source=source)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        order = (
            "student",
            "teacher",
            "prompt_version",
            "source",
            "mode",
            "rows_in",
            "rows_kept",
            "branches",
            "drops",
            "quantiles",
            "top",
            "teacher_fallbacks",
        )
        return {k: d[k] for k in order}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SelectionReport:
        """A report read back from report.json (keys it does not know, such as an evaluation, are left out)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True, slots=True)
class Selection:
    """The kept rows (id, variant, ifd, rifd; in the order of the scores) and the report."""

    frame: pl.DataFrame
    report: SelectionReport


def _wide(scores: pl.DataFrame) -> pl.DataFrame:
    """One row per id with ifd_<v>/rifd_<v> columns; ids in order of first appearance in ``scores``."""
    import polars as pl

    missing = [c for c in ("id", "variant", "ifd", "rifd") if c not in scores.columns]
    if missing:
        raise InputError(f"the scores table lacks the columns {missing}; rescore with srecycle build/score")
    unknown = scores.filter(~pl.col("variant").is_in(list(VARIANTS)))["variant"].unique().to_list()
    if unknown:
        raise InputError(f"the scores table has unknown variants {sorted(map(str, unknown))} (expected {VARIANTS})")
    dup = scores.group_by("id", "variant").len().filter(pl.col("len") > 1)
    if dup.height:
        raise InputError(f"the scores table has {dup.height} duplicated (id, variant) rows, e.g. {dup.row(0)[:2]}")
    base = scores.select("id").unique(maintain_order=True)
    for v in VARIANTS:
        part = scores.filter(pl.col("variant") == v).select(
            "id",
            pl.col("ifd").cast(pl.Float64).alias(f"ifd_{v}"),
            pl.col("rifd").cast(pl.Float64).alias(f"rifd_{v}"),
        )
        base = base.join(part, on="id", how="left", maintain_order="left")
    return base


def _less(a: str, b: str) -> pl.Expr:
    """``a < b`` where a comparison with a missing (or NaN) score is false."""
    import polars as pl

    left, right = pl.col(a), pl.col(b)
    present = left.is_not_null() & right.is_not_null() & left.is_not_nan() & right.is_not_nan()
    return (present & (left < right)).fill_null(False)


def _final(column: str) -> pl.Expr:
    """The value of ``column``_<final> for each row."""
    import polars as pl

    expr = pl.lit(None, dtype=pl.Float64)
    for v in VARIANTS:
        expr = pl.when(pl.col("final") == v).then(pl.col(f"{column}_{v}")).otherwise(expr)
    return expr


def _quantiles(values: pl.Series) -> dict[str, float | None]:
    if values.len() == 0:
        return {name: None for name, _ in QUANTILES}
    return {name: float(values.quantile(q, interpolation="linear")) for name, q in QUANTILES}


def select_rows(scores: pl.DataFrame, config: SelectionConfig | None = None) -> Selection:
    """Apply the selection rule (docs/method.md, section 4) to one student's scores; report every row's fate."""
    import polars as pl

    config = config or SelectionConfig()
    wide = _wide(scores)
    ins_harder = (
        pl.col("ifd_ins").is_not_null()
        & pl.col("ifd_ori").is_not_null()
        & pl.col("ifd_ins").is_not_nan()
        & pl.col("ifd_ori").is_not_nan()
        & (pl.col("ifd_ins") > pl.col("ifd_ori"))
    ).fill_null(False)
    wide = wide.with_columns(
        pl.when(ins_harder)
        .then(pl.when(_less("rifd_both", "rifd_ins")).then(pl.lit("both")).otherwise(pl.lit("ins")))
        .otherwise(pl.when(_less("rifd_res", "rifd_ori")).then(pl.lit("res")).otherwise(pl.lit("ori")))
        .alias("final")
    ).with_columns(_final("ifd").alias("ifd"), _final("rifd").alias("rifd"))

    reason = (
        pl.when(pl.col("ifd").is_null() | pl.col("rifd").is_null() | pl.col("ifd").is_nan() | pl.col("rifd").is_nan())
        .then(pl.lit(DROP_MISSING_SCORE))
        .when(pl.col("ifd") >= 1)
        .then(pl.lit(DROP_IFD))
        .when(pl.col("rifd") >= 1)
        .then(pl.lit(DROP_RIFD))
    )
    if config.mode == "paper":
        reason = (
            reason.when(pl.col("final") == "ins")
            .then(pl.lit(DROP_PAPER_INS))
            .when(pl.col("final") == "ori")
            .then(pl.lit(DROP_PAPER_ORI))
        )
    wide = wide.with_columns(reason.otherwise(pl.lit(None, dtype=pl.String)).alias("drop")).with_row_index("_order")

    kept = wide.filter(pl.col("drop").is_null())
    n_top = None
    if config.top_k is not None:
        n_top = min(config.top_k, kept.height)
    elif config.top_p is not None:
        n_top = min(kept.height, math.ceil(kept.height * config.top_p / 100 - 1e-9))
    top_dropped = 0
    if n_top is not None:
        keep_ids = kept.sort(["ifd", "_order"], descending=[True, False]).head(n_top)["_order"]
        top_dropped = kept.height - n_top
        kept = kept.filter(pl.col("_order").is_in(keep_ids.implode()))

    branch_counts = dict(wide.group_by("final").len().iter_rows())
    drop_counts = dict(wide.filter(pl.col("drop").is_not_null()).group_by("drop").len().iter_rows())
    if top_dropped:
        drop_counts[DROP_TOP] = top_dropped
    report = SelectionReport(
        mode=config.mode,
        rows_in=wide.height,
        rows_kept=kept.height,
        branches={v: int(branch_counts.get(v, 0)) for v in ("both", "ins", "res", "ori")},
        drops={r: int(drop_counts[r]) for r in DROP_REASONS if drop_counts.get(r)},
        quantiles={"ifd": _quantiles(kept["ifd"]), "rifd": _quantiles(kept["rifd"])},
        top=config.top,
    )
    frame = kept.sort("_order").select("id", pl.col("final").alias("variant"), "ifd", "rifd")
    return Selection(frame=frame, report=report)


def subset_frame(selected: pl.DataFrame, reflections: pl.DataFrame, *, student: str, teacher: str) -> pl.DataFrame:
    """The released subset: each kept row's final variant as training fields, then its provenance.

    Rows follow the source order of ``reflections`` so that the same inputs give the same file.
    """
    import polars as pl

    missing = selected.join(reflections.select("id"), on="id", how="anti")
    if missing.height:
        raise InputError(
            f"{missing.height} selected ids are not in the reflections (e.g. {missing['id'][0]}); "
            "the scores belong to other reflections: rebuild the scores"
        )
    joined = selected.join(reflections, on="id", how="left").sort("source_index")
    text = {
        f: pl.coalesce(*(pl.when(pl.col("variant") == v).then(pl.col(f"{v}_{f}")) for v in VARIANTS)).alias(f)
        for f in ("instruction", "input", "output")
    }
    return joined.select(
        text["instruction"].cast(pl.String),
        text["input"].fill_null("").cast(pl.String),
        text["output"].cast(pl.String),
        pl.col("id").cast(pl.String),
        pl.col("variant").cast(pl.String),
        pl.col("ifd").cast(pl.Float64),
        pl.col("rifd").cast(pl.Float64),
        pl.lit(student, dtype=pl.String).alias("student"),
        pl.lit(teacher, dtype=pl.String).alias("teacher"),
    )


def report_table(report: SelectionReport) -> Table:
    """A rich table of a selection report, for the end of ``srecycle build`` / ``select``."""
    from rich.table import Table

    title = f"selection for {report.student.get('key', '?')}" if report.student else "selection"
    table = Table(title=f"{title} ({report.mode} mode)", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("rows in", str(report.rows_in))
    table.add_row("[bold]rows kept", f"[bold]{report.rows_kept}")
    for v in ("both", "ins", "res", "ori"):
        table.add_row(f"final = {v}", str(report.branches.get(v, 0)))
    for r, n in report.drops.items():
        table.add_row(f"dropped: {r}", str(n))
    for r, n in report.teacher_fallbacks.items():
        table.add_row(f"teacher text refused: {r}", f"{n} variants")
    if report.top is not None:
        table.add_row("top cut", ", ".join(f"{k}={v}" for k, v in report.top.items()))
    for metric, label in (("ifd", "IFD"), ("rifd", "r-IFD")):
        q = report.quantiles.get(metric, {})
        values = " ".join(f"{k}={v:.3f}" if v is not None else f"{k}=-" for k, v in q.items())
        table.add_row(f"{label} of kept", values)
    return table
