"""Evaluation results in cards: a checkpoint carries its judge report, and its card shows and indexes it.

``attach_evaluation`` copies a judge run's ``results.json`` and plot into the checkpoint's ``eval/`` folder, so
they travel with the model and every later card rendering finds them. The card gets an Evaluation section (a
table per test set and the plot) and ``model-index`` results in its metadata: ``EvalResult`` objects that the
model card's ``ModelCardData`` writes, so that the Hub and ``ModelCard.load`` read them back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recycled_datasets.errors import InputError
from recycled_datasets.evaluation.report import PLOT_FILE, POOLED, RESULTS_FILE

if TYPE_CHECKING:
    from huggingface_hub import EvalResult

EVAL_FOLDER = "eval"
_SET_KEYS = ("win", "tie", "loss", "invalid", "win_score", "adjusted_win_rate", "inconsistent")


def read_results(path: Path) -> dict[str, Any]:
    """A judge run's ``results.json``, checked for the keys cards rely on."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise InputError(f"no {RESULTS_FILE}: give the --output folder of `srecycle judge`", path=str(path.parent))
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"unreadable JSON ({type(e).__name__}: {e})"[:200], path=str(path)) from e
    if not isinstance(results, dict):
        raise InputError("expected a JSON object (not written by `srecycle judge`?)", path=str(path))
    for key in ("a", "b", "judge", "test_sets", POOLED):
        if key not in results:
            raise InputError("missing (not written by `srecycle judge`?)", path=str(path), field=key)
    for key in ("a", "b", "judge"):
        if not isinstance(results[key], str):
            raise InputError("must be a string (not written by `srecycle judge`?)", path=str(path), field=key)
    if not isinstance(results["test_sets"], dict):
        raise InputError("must be an object of test sets", path=str(path), field="test_sets")
    for name, stats in [*results["test_sets"].items(), (POOLED, results[POOLED])]:
        missing = [k for k in (*_SET_KEYS, "pairs") if k not in stats] if isinstance(stats, dict) else ["every key"]
        if missing:
            raise InputError(f"test set {name!r} lacks {', '.join(missing)}", path=str(path))
        for key in (*_SET_KEYS, "pairs"):
            value = stats[key]
            whole = isinstance(value, int) and not isinstance(value, bool)
            counted = key not in ("win_score", "adjusted_win_rate", "inconsistent")
            if not (whole if counted else value is None or whole or isinstance(value, float)):
                kind = "a whole number" if counted else "a number or null"
                raise InputError(
                    f"test set {name!r}: {key} is {value!r}, not {kind} (not written by `srecycle judge`?)",
                    path=str(path),
                )
    return results


def attach_evaluation(checkpoint: Path, eval_dir: Path) -> Path:
    """Copy the judge report of ``eval_dir`` into ``CHECKPOINT/eval/``; returns that folder."""
    from recycled_datasets.workdir.files import atomic_write_bytes

    results = Path(eval_dir) / RESULTS_FILE
    read_results(results)
    dest = Path(checkpoint) / EVAL_FOLDER
    # Written by rename, never through a link someone planted there (copyfile would follow it).
    for path in (dest, dest / RESULTS_FILE, dest / PLOT_FILE):
        if path.is_symlink():
            raise InputError("is a symbolic link; srecycle never writes through one: remove it", path=str(path))
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest / RESULTS_FILE, results.read_bytes(), digest=False)
    plot = Path(eval_dir) / PLOT_FILE
    if plot.is_file():
        atomic_write_bytes(dest / PLOT_FILE, plot.read_bytes(), digest=False)
    elif (dest / PLOT_FILE).exists():
        (dest / PLOT_FILE).unlink()  # an older run's plot must not stand beside these results
    return dest


@dataclass(frozen=True)
class CardEvaluation:
    """What a card shows of an evaluation: who was compared, the table, the plot, and the results that
    ``ModelCardData(model_name=..., eval_results=...)`` turns into the card's ``model-index``."""

    a: str
    b: str
    judge: str
    rows: list[list[str]]
    plot: str | None
    model_name: str
    eval_results: tuple[EvalResult, ...]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def card_evaluation(checkpoint: Path, *, model_name: str) -> CardEvaluation | None:
    """The evaluation a checkpoint carries in ``eval/``, ready for its card; None when it carries none."""
    from huggingface_hub import EvalResult

    folder = Path(checkpoint) / EVAL_FOLDER
    if not (folder / RESULTS_FILE).is_file():
        return None
    results = read_results(folder / RESULTS_FILE)
    sets = [*results["test_sets"].items(), (POOLED, results[POOLED])]
    rows = [[name, *(_cell(stats[k]) for k in _SET_KEYS)] for name, stats in sets]
    vs = f"vs {results['b']}, judge {results['judge']}"
    evals = []
    for name, stats in sets:
        # The scores exist only where some pair got a readable verdict; the invalid count is always reported.
        metrics = [("win_score", stats["win_score"]), ("adjusted_win_rate", stats["adjusted_win_rate"])]
        metrics = [(m, v) for m, v in metrics if v is not None] + [("invalid_pairs", stats["invalid"])]
        for metric, value in metrics:
            evals.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="pairwise comparison (LLM judge, both orders)",
                    dataset_type=name,
                    dataset_name=f"{name} test set" if name != POOLED else "all test sets pooled",
                    metric_type=metric,
                    metric_name=f"{metric.replace('_', ' ')} ({vs})",
                    metric_value=value if isinstance(value, int) else round(float(value), 4),
                )
            )
    plot = f"{EVAL_FOLDER}/{PLOT_FILE}" if (folder / PLOT_FILE).is_file() else None
    return CardEvaluation(results["a"], results["b"], results["judge"], rows, plot, model_name, tuple(evals))


def release_evaluation(folder: Path) -> dict[str, Any]:
    """The part of a judge report that a dataset card shows in its student's section (and keeps in the
    config's ``report.json``): who was compared, by which judge, and the counts and scores per test set."""
    results = read_results(Path(folder) / RESULTS_FILE)
    keep = (*_SET_KEYS, "pairs")
    return {
        "a": results["a"],
        "b": results["b"],
        "judge": results["judge"],
        "test_sets": {name: {k: s[k] for k in keep} for name, s in results["test_sets"].items()},
        POOLED: {k: results[POOLED][k] for k in keep},
    }
