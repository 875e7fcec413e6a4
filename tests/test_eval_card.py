"""Judge results in the model card: an Evaluation section and ``model-index`` that huggingface_hub reads back."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard
from test_hub_model_card import _checkpoint

from recycled_datasets.cli import main
from recycled_datasets.evaluation.judge import JudgeRun, JudgeStats, Matchup, Pairing, Review
from recycled_datasets.evaluation.report import PLOT_FILE, RESULTS_FILE, write_report
from recycled_datasets.evaluation.testsets import Answer


def _pair(test_set: str, i: int, first: tuple[float, float] | None, second: tuple[float, float] | None) -> Matchup:
    q = f"{test_set} question {i}"
    a, b = Answer(test_set, q, "answer a"), Answer(test_set, q, "a longer answer b")
    return Matchup(test_set, q, a, b, Review("", first, 1), Review("", second, 1 if second else 2))


@pytest.fixture
def eval_dir(tmp_path):
    # vicuna: win, win, loss (1.333); koala: tie, invalid (1.0); pooled: 2 wins, 1 tie, 1 loss (1.25)
    pairs = [
        _pair("vicuna", 0, (8, 5), (4, 9)),
        _pair("vicuna", 1, (7, 7), (3, 6)),
        _pair("vicuna", 2, (2, 9), (9, 2)),
        _pair("koala", 0, (6, 6), (6, 6)),
        _pair("koala", 1, (6, 6), None),
    ]
    run = JudgeRun(pairs, "org/judge-70b", JudgeStats(sent=10))
    out = tmp_path / "eval"
    write_report(Pairing(pairs), run, out, a="ckpt", b="org/base-7b")
    return out


def test_push_model_eval_puts_results_in_the_card(tmp_path, eval_dir):
    ckpt = _checkpoint(tmp_path / "ckpt")
    site = tmp_path / "site"
    main(["push-model", str(ckpt), "--repo", "me/llama2-7b-srecycled", "--to-dir", str(site), "--eval", str(eval_dir)])
    card = ModelCard.load(site / "README.md")
    found = {(e.dataset_type, e.metric_type): e.metric_value for e in card.data.eval_results}
    assert found[("vicuna", "win_score")] == pytest.approx(4 / 3, abs=1e-4)
    assert found[("koala", "win_score")] == 1.0
    assert found[("all", "win_score")] == 1.25
    assert found[("all", "adjusted_win_rate")] == pytest.approx(5 / 8)
    assert found[("all", "invalid_pairs")] == 1
    assert "| vicuna | 2 | 0 | 1 | 0 | 1.333 |" in card.text
    assert "| all | 2 | 1 | 1 | 1 | 1.250 | 0.625 |" in card.text
    assert "`org/base-7b` (B)" in card.text and "`org/judge-70b`" in card.text
    assert (site / "eval" / PLOT_FILE).is_file()
    assert json.loads((site / "eval" / RESULTS_FILE).read_text())["all"]["win"] == 2
    # The record's own eval_results are still the card's metadata base: nothing else changed.
    assert card.data.to_dict()["datasets"] == ["org/srecycled"]

    # A later rendering of the card (another push) keeps the evaluation: it travels in the checkpoint.
    main(["push-model", str(ckpt), "--repo", "me/llama2-7b-srecycled", "--to-dir", str(tmp_path / "again")])
    assert ModelCard.load(tmp_path / "again" / "README.md").data.eval_results


def test_an_eval_folder_without_results_is_a_one_line_error(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "ckpt")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "push-model",
                str(ckpt),
                "--repo",
                "me/x",
                "--to-dir",
                str(tmp_path / "s"),
                "--eval",
                str(tmp_path / "nothing"),
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "no results.json" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:  # finetune checks it before any training
        main(
            [
                "finetune",
                "--dataset",
                str(tmp_path),
                "--config",
                "x",
                "--output",
                str(tmp_path / "o"),
                "--eval",
                str(tmp_path / "nothing"),
            ]
        )
    assert exit_info.value.code == 2
    assert "no results.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_push_eval_links_the_evaluation_in_that_students_dataset_card_section(tmp_path, eval_dir, capsys):
    from hub_server import make_workdir
    from huggingface_hub import DatasetCard

    work = make_workdir(tmp_path / "work")
    out = tmp_path / "dataset"
    main(
        [
            "push",
            "--repo",
            "org/srecycled",
            "--workdir",
            str(work),
            "--to-dir",
            str(out),
            "--eval",
            f"llama2-7b={eval_dir}",
            "-q",
        ]
    )
    card = DatasetCard.load(out / "README.md").text
    llama = card[card.index("### `llama2-7b`") : card.index("### `mistral-7b`")]
    assert "**Evaluation.** `ckpt`, trained on\nthis config, against `org/base-7b`" in llama
    assert "| vicuna | 2 | 0 | 1 | 0 | 1.333 |" in llama and "| all | 2 | 1 | 1 | 1 | 1.250 |" in llama
    assert "[`llama2-7b/report.json`](llama2-7b/report.json)" in llama
    assert "Evaluation" not in card[card.index("### `mistral-7b`") :]  # only the student it was given for
    report = json.loads((out / "llama2-7b" / "report.json").read_text())
    assert report["evaluation"]["all"]["win_score"] == 1.25 and report["evaluation"]["judge"] == "org/judge-70b"

    # It stays with the workdir: a later push without --eval keeps the section.
    main(["push", "--repo", "org/srecycled", "--workdir", str(work), "--to-dir", str(tmp_path / "again"), "-q"])
    assert "**Evaluation.**" in (tmp_path / "again" / "README.md").read_text()

    with pytest.raises(SystemExit) as exit_info:
        main(["push", "--repo", "org/x", "--workdir", str(work), "--to-dir", str(tmp_path / "o"), "--eval", "nokey"])
    assert exit_info.value.code == 2 and "KEY=DIR" in capsys.readouterr().err


def test_results_without_a_pair_count_are_refused_not_shown_as_blank(eval_dir):
    from recycled_datasets.errors import InputError
    from recycled_datasets.evaluation.card import release_evaluation

    assert release_evaluation(eval_dir)["all"]["pairs"] == 5
    path = eval_dir / RESULTS_FILE
    results = json.loads(path.read_text())
    del results["test_sets"]["koala"]["pairs"]
    path.write_text(json.dumps(results))
    with pytest.raises(InputError, match="'koala' lacks pairs"):
        release_evaluation(eval_dir)
    path.write_text("[]")
    with pytest.raises(InputError, match="expected a JSON object"):
        release_evaluation(eval_dir)
