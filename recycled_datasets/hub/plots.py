"""The card's figures: score distributions per variant and what the selection kept, as PNG files.

Figures are drawn on matplotlib's Agg canvas through the object API (no pyplot, so no global figure state
and no display needed) and saved without the "Software" PNG text chunk, so the same inputs give the same
bytes and a re-push of an unchanged config uploads nothing new.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recycled_datasets.errors import InputError
from recycled_datasets.records import VARIANTS

logger = logging.getLogger(__name__)

_COLORS = {"ori": "#4c72b0", "ins": "#dd8452", "res": "#55a868", "both": "#c44e52"}
_LABELS = {
    "ori": "ori (source)",
    "ins": "ins (new instruction)",
    "res": "res (new response)",
    "both": "both (new instruction + response)",
}
_DPI = 100


def write_plots(*, scores: Path, subset, report: Mapping[str, Any], dest: Path) -> list[Path]:
    """Write ``ifd.png``, ``rifd.png`` and ``kept.png`` into ``dest``; returns their paths."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(scores, columns=["variant", "ifd", "rifd"])
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"unreadable scores ({exc})", path=str(scores)) from exc
    variants = table.column("variant").to_pylist()
    dest.mkdir(parents=True, exist_ok=True)
    for metric, title in (("ifd", "IFD"), ("rifd", "r-IFD")):
        values = table.column(metric).to_pylist()
        per_variant = {
            v: [x for x, var in zip(values, variants, strict=True) if var == v and _finite(x)] for v in VARIANTS
        }
        _histograms(per_variant, title, dest / f"{metric}.png")
    kept = subset.column("variant").to_pylist()
    _kept(report, {v: kept.count(v) for v in VARIANTS}, dest / "kept.png")
    return [dest / f"{name}.png" for name in ("ifd", "rifd", "kept")]


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    from recycled_datasets.workdir.files import cannot_write

    try:
        fig.savefig(path, format="png", dpi=_DPI, metadata={"Software": None})
    except OSError as e:
        raise cannot_write(path, e) from e


def _histograms(per_variant: Mapping[str, list[float]], title: str, path: Path) -> None:
    """Overlaid step histograms on shared bins; the dashed line is the keep threshold (score < 1)."""
    from matplotlib.ticker import MaxNLocator

    ax = _figure(7, 4).add_subplot()
    pooled = sorted(x for xs in per_variant.values() for x in xs)
    if pooled:
        high = pooled[min(len(pooled) - 1, int(0.99 * len(pooled)))]  # the top 1% would flatten the plot
        low, high = min(pooled[0], 1.0) - 0.05, max(high, 1.0) + 0.05
        bins = [low + (high - low) * i / 40 for i in range(41)]
        for v in VARIANTS:
            xs = [min(max(x, low), high) for x in per_variant[v]]
            if xs:
                label = f"{_LABELS[v]} (n={len(xs)})"
                ax.hist(xs, bins=bins, histtype="step", linewidth=1.6, color=_COLORS[v], label=label)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="keep threshold (< 1)")
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(title)
    ax.set_ylabel("pairs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{title} per variant (values beyond the 99th percentile drawn at the edge)", fontsize=10)
    _save(ax.figure, path)


def _kept(report: Mapping[str, Any], kept: Mapping[str, int], path: Path) -> None:
    """Per variant: how often it won the selection (branch counts) and how many rows of it were kept."""
    from matplotlib.ticker import MaxNLocator

    ax = _figure(7, 4).add_subplot()
    branches = report.get("branches") or {}
    xs = range(len(VARIANTS))
    width = 0.38
    chosen = [int(branches.get(v, 0)) for v in VARIANTS]
    kept_n = [int(kept.get(v, 0)) for v in VARIANTS]
    ax.bar([x - width / 2 for x in xs], chosen, width, color="#bbbbbb", label="chosen as final")
    ax.bar([x + width / 2 for x in xs], kept_n, width, color=[_COLORS[v] for v in VARIANTS], label="kept")
    for x, n in zip(xs, kept_n, strict=True):
        ax.annotate(str(n), (x + width / 2, n), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [_LABELS[v].replace(" (", "\n(", 1) for v in VARIANTS], fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("rows")
    ax.set_title(f"kept {report.get('rows_kept', sum(kept_n))} of {report.get('rows_in', '?')} rows", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    _save(ax.figure, path)


def write_selection_figure(
    *, rows: list[tuple[str, float | None, float | None, bool]], branches: Mapping[str, int], path: Path
) -> Path:
    """One picture of a selection: the four branch counts, and each row's final IFD against its final r-IFD.

    ``rows`` holds (final variant, IFD, r-IFD, kept) per row; rows with a missing score are left out of the
    scatter (they are counted in the branches). The dashed lines are the keep thresholds (both scores < 1).
    """
    from matplotlib.ticker import MaxNLocator

    fig = _figure(11, 4.5)
    bars, scatter = fig.subplots(1, 2, width_ratios=[1, 1.4])
    order = ("both", "ins", "res", "ori")
    counts = [int(branches.get(v, 0)) for v in order]
    bars.bar(range(len(order)), counts, color=[_COLORS[v] for v in order])
    for x, n in enumerate(counts):
        bars.annotate(str(n), (x, n), ha="center", va="bottom", fontsize=9)
    short = {"both": "new instruction\n+ response", "ins": "new instruction", "res": "new response", "ori": "source"}
    bars.set_xticks(list(range(len(order))), [f"{v}\n({short[v]})" for v in order], fontsize=8)
    bars.yaxis.set_major_locator(MaxNLocator(integer=True))
    bars.set_ylabel("rows")
    bars.set_title(f"final variant chosen by the rule ({sum(counts)} rows)", fontsize=10)

    for kept, marker, label in ((True, "o", "kept"), (False, "x", "dropped")):
        for v in order:
            points = [(i, r) for f, i, r, k in rows if f == v and k == kept and _finite(i) and _finite(r)]
            if points:
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                name = f"{label}, final {v} ({len(points)})"
                scatter.scatter(xs, ys, marker=marker, color=_COLORS[v], s=36, label=name)
    scatter.axvline(1.0, color="black", linestyle="--", linewidth=1)
    scatter.axhline(1.0, color="black", linestyle="--", linewidth=1)
    scatter.set_xlabel("IFD of the final variant")
    scatter.set_ylabel("r-IFD of the final variant")
    scatter.set_title("kept rows need IFD < 1 and r-IFD < 1 (dashed)", fontsize=10)
    scatter.legend(fontsize=7, frameon=False, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    return path
