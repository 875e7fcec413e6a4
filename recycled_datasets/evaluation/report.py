"""What a judge run leaves behind: ``results.json``, ``pairs.parquet``, ``win_tie_loss.png`` and a table.

The three files are written from the same judged pairs, so they always agree: the counts in
``results.json`` are the outcomes in ``pairs.parquet``, and the plot draws those counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recycled_datasets.evaluation.judge import (
    INVALID,
    LOSS,
    OUTCOMES,
    TIE,
    WIN,
    JudgeRun,
    Matchup,
    Pairing,
    adjusted_win_rate,
    preference,
    win_score,
)
from recycled_datasets.workdir.files import write_json, write_table
from recycled_datasets.workdir.schema import arrow_schema

RESULTS_FILE = "results.json"
PAIRS_FILE = "pairs.parquet"
PLOT_FILE = "win_tie_loss.png"
POOLED = "all"
PAIR_COLUMNS = (
    "test_set",
    "instruction",
    "id_a",
    "id_b",
    "output_a",
    "output_b",
    "review_a_first",
    "score_a_first_a",
    "score_a_first_b",
    "attempts_a_first",
    "review_b_first",
    "score_b_first_a",
    "score_b_first_b",
    "attempts_b_first",
    "outcome",
    "error",
)
_COLORS = {WIN: "#55a868", TIE: "#c9c9c9", LOSS: "#c44e52", INVALID: "#8172b2"}


def _words(text: str) -> int:
    return len(text.split())


def summarize(pairs: Sequence[Matchup]) -> dict[str, Any]:
    """Counts, win score, adjusted win rate, order disagreement and mean answer lengths of ``pairs``."""
    counts = {name: 0 for name in OUTCOMES}
    disagree = 0
    for pair in pairs:
        result = pair.outcome
        counts[result] += 1
        if result != INVALID:
            b2, a2 = pair.second.scores  # type: ignore[union-attr]
            disagree += preference(pair.first.scores) != preference((a2, b2))  # type: ignore[arg-type]
    judged = counts[WIN] + counts[TIE] + counts[LOSS]
    return {
        **counts,
        "win_score": win_score(counts[WIN], counts[TIE], counts[LOSS]),
        "adjusted_win_rate": adjusted_win_rate(counts[WIN], counts[TIE], counts[LOSS]),
        "inconsistent": disagree / judged if judged else None,
        "pairs": len(pairs),
        "mean_words_a": sum(_words(p.a.output) for p in pairs) / len(pairs) if pairs else None,
        "mean_words_b": sum(_words(p.b.output) for p in pairs) / len(pairs) if pairs else None,
    }


def results(pairing: Pairing, run: JudgeRun, *, a: str, b: str) -> dict[str, Any]:
    """The content of ``results.json``: per test set (in order of first appearance) and pooled."""
    names = list(dict.fromkeys(p.test_set for p in pairing.pairs))
    return {
        "a": a,
        "b": b,
        "judge": run.judge,
        "test_sets": {name: summarize([p for p in pairing.pairs if p.test_set == name]) for name in names},
        POOLED: summarize(pairing.pairs),
        "unpaired": {
            "a": [{"test_set": x.test_set, "instruction": x.instruction} for x in pairing.only_a],
            "b": [{"test_set": x.test_set, "instruction": x.instruction} for x in pairing.only_b],
        },
        "requests": {
            "sent": run.stats.sent,
            "from_store": run.stats.cached,
            "retries": run.stats.retries,
            "unreadable_verdicts_asked_again": run.stats.unreadable_retries,
            "refused": run.stats.rejected,
        },
    }


def _pair_row(pair: Matchup) -> dict[str, Any]:
    first, second = pair.first, pair.second
    assert first is not None and second is not None
    errors = [f"{order}: {r.error}" for order, r in (("A first", first), ("B first", second)) if r.error]
    return {
        "test_set": pair.test_set,
        "instruction": pair.instruction,
        "id_a": pair.a.id,
        "id_b": pair.b.id,
        "output_a": pair.a.output,
        "output_b": pair.b.output,
        "review_a_first": first.text,
        "score_a_first_a": first.scores[0] if first.scores else None,
        "score_a_first_b": first.scores[1] if first.scores else None,
        "attempts_a_first": first.attempts,
        "review_b_first": second.text,
        "score_b_first_a": second.scores[1] if second.scores else None,
        "score_b_first_b": second.scores[0] if second.scores else None,
        "attempts_b_first": second.attempts,
        "outcome": pair.outcome,
        "error": "; ".join(errors) or None,
    }


def write_pairs(pairs: Sequence[Matchup], path: Path) -> Path:
    import pyarrow as pa

    types = {c: pa.float64() for c in PAIR_COLUMNS if c.startswith("score_")}
    types.update({c: pa.int64() for c in PAIR_COLUMNS if c.startswith("attempts_")})
    schema = arrow_schema(PAIR_COLUMNS, types)
    return write_table(pa.Table.from_pylist([_pair_row(p) for p in pairs], schema=schema), path)


def write_plot(summary: dict[str, Any], path: Path) -> Path:
    """A stacked bar per test set (and the pooled one): the shares of wins, ties, losses and invalid pairs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [*summary["test_sets"].items(), (POOLED, summary[POOLED])]
    fig = Figure(figsize=(7, 0.5 * len(rows) + 1.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = [f"{name} (n={stats['pairs']})" for name, stats in rows]
    left = [0.0] * len(rows)
    for name in OUTCOMES:
        shares = [stats[name] / stats["pairs"] if stats["pairs"] else 0.0 for _, stats in rows]
        ax.barh(labels, shares, left=left, color=_COLORS[name], label=name)
        for i, (share, (_, stats)) in enumerate(zip(shares, rows, strict=True)):
            if share >= 0.06:
                ax.text(left[i] + share / 2, i, str(stats[name]), ha="center", va="center", fontsize=8)
        left = [x + s for x, s in zip(left, shares, strict=True)]
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of pairs")
    ax.set_title(f"{summary['a']} vs {summary['b']} (judge: {summary['judge']})", fontsize=9, pad=22)
    ax.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.08), fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path


@dataclass(frozen=True)
class Report:
    """The files a judge run wrote and their content."""

    results: dict[str, Any]
    results_path: Path
    pairs_path: Path
    plot_path: Path


def write_report(pairing: Pairing, run: JudgeRun, output_dir: Path, *, a: str, b: str) -> Report:
    output_dir = Path(output_dir)
    summary = results(pairing, run, a=a, b=b)
    pairs_path = write_pairs(pairing.pairs, output_dir / PAIRS_FILE)
    plot_path = write_plot(summary, output_dir / PLOT_FILE)
    results_path = write_json(output_dir / RESULTS_FILE, summary)
    return Report(summary, results_path, pairs_path, plot_path)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def results_table(summary: dict[str, Any]) -> Any:
    """The terminal table: a row per test set and the pooled row."""
    from rich.table import Table

    table = Table(
        title=f"{summary['a']} (A) vs {summary['b']} (B), judge {summary['judge']}",
        caption="orders differ: share of pairs whose two orders disagree; adj. win: (W + T/2) / (W + T + L)",
    )
    headers = ("test\nset", "win", "tie", "loss", "invalid", "win\nscore", "adj.\nwin", "orders\ndiffer", "words\nA/B")
    for name in headers:
        table.add_column(name, justify="left" if name == headers[0] else "right")
    rows = [*summary["test_sets"].items(), (POOLED, summary[POOLED])]
    for i, (name, s) in enumerate(rows):
        counts = [str(s[k]) for k in (WIN, TIE, LOSS, INVALID)]
        scores = [_fmt(s[k]) for k in ("win_score", "adjusted_win_rate", "inconsistent")]
        words = f"{_fmt(s['mean_words_a'], 0)}/{_fmt(s['mean_words_b'], 0)}"
        table.add_row(name, *counts, *scores, words, end_section=i == len(rows) - 2)
    unpaired = summary["unpaired"]
    if unpaired["a"] or unpaired["b"]:
        table.caption += (
            f"\nnot judged, no partner: {len(unpaired['a'])} answers of A, {len(unpaired['b'])} of B "
            f"(listed in {RESULTS_FILE})"
        )
    return table
