"""The evaluation in one call: answer files judged into a report, or two models answered, then judged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recycled_datasets.evaluation.generate import GenerateConfig, GenerateResult, generate_answers
from recycled_datasets.evaluation.judge import JudgeConfig, judge_pairs, pair_answers
from recycled_datasets.evaluation.report import Report, write_report
from recycled_datasets.evaluation.testsets import Answer, read_answers


def judge_files(
    a: Path, b: Path, config: JudgeConfig, *, a_name: str | None = None, b_name: str | None = None
) -> Report:
    """Pair the answers of two files, judge every pair in both orders, and write the report into the output."""
    a_rows, b_rows = read_answers(a), read_answers(b)
    pairing = pair_answers(a_rows, b_rows, a_name=str(a), b_name=str(b), test_sets=config.test_sets)
    run = judge_pairs(pairing.pairs, config)
    a_name = a_name or _model_name(a, a_rows)
    b_name = b_name or _model_name(b, b_rows)
    return write_report(pairing, run, config.output_dir, a=a_name, b=b_name)


def _model_name(path: Path, answers: list[Answer]) -> str:
    """The model an answer file names in its ``model`` column (what ``generate`` writes), else the file's name."""
    names = {x.model for x in answers}
    if len(names) == 1 and None not in names:
        return str(names.pop())
    return Path(path).stem


@dataclass(frozen=True)
class Evaluation:
    model: GenerateResult
    baseline: GenerateResult
    report: Report


def evaluate(model: GenerateConfig, baseline: GenerateConfig, judge: JudgeConfig) -> Evaluation:
    """Answers of the model and of the baseline (each resumed from its store), then the judge's report."""
    ours = generate_answers(model)
    theirs = generate_answers(baseline)
    report = judge_files(ours.path, theirs.path, judge, a_name=ours.model, b_name=theirs.model)
    return Evaluation(ours, theirs, report)
