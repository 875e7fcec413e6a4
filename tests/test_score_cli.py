"""`srecycle score` as a user runs it: output shape, one-line errors, torchrun equivalence, instant --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest

from recycled_datasets.workdir.schema import row_scores_schema

ROWS = [
    {"instruction": "Name a prime number below ten.", "input": "", "output": "Seven is a prime number below ten."},
    {"instruction": "Translate to French.", "input": "Good morning.", "output": "Bonjour."},
    {"instruction": "List two primary colors.", "input": "", "output": "Red and blue."},
    {"instruction": "Summarize.", "input": "The bus was late, so we walked home.", "output": "We walked home."},
    {"instruction": "Give a synonym for happy.", "input": "", "output": "Joyful."},
]


def run(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recycled_datasets", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write_rows(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_score_writes_one_row_per_input_row_in_order(tmp_path):
    src = write_rows(tmp_path / "rows.json", ROWS)
    out = tmp_path / "scores.parquet"
    result = run("score", str(src), "--student", "smollm2-135m", "--template", "alpaca", "--output", str(out))
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(out)
    assert frame.height == len(ROWS)
    assert frame["source_index"].to_list() == list(range(len(ROWS)))
    assert frame.schema == pl.from_arrow(row_scores_schema().empty_table()).schema
    ok = frame.filter(pl.col("status") == "ok")
    assert ok.height == len(ROWS) and ok["ifd"].is_finite().all() and ok["rifd"].is_finite().all()
    assert not (tmp_path / ".scores.parquet.parts").exists()  # checkpoints are removed once the output is whole
    assert "rows scored" in result.stdout


def test_an_instruction_longer_than_max_length_gets_a_null_score_with_its_reason(tmp_path):
    rows = [ROWS[0], {"instruction": "Repeat after me: " + "banana " * 200, "input": "", "output": "banana"}]
    src = write_rows(tmp_path / "rows.json", rows)
    out = tmp_path / "scores.parquet"
    result = run("score", str(src), "--template", "alpaca", "--max-length", "128", "--output", str(out))
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(out)
    assert frame["status"].to_list() == ["ok", "missing"]
    assert frame["ifd"][1] is None and "prompt fills max_length" in frame["reason"][1]
    assert "missing: 1 x" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ('[{"instruction": "a", "output": "b"}, {"instru', "not valid JSON at line 1"),
        (
            '[{"instruction": "a", "output": "b"}, {"instruction": "c", "input": ""}]',
            "row 2, field 'output': is missing",
        ),
    ],
    ids=["empty", "truncated", "no-output"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, content, message):
    src = tmp_path / "bad.json"
    src.write_text(content)
    result = run("score", str(src), "--output", str(tmp_path / "o.parquet"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and str(src) in lines[0], result.stderr
    assert not (tmp_path / "o.parquet").exists()


def test_skip_invalid_scores_the_rest(tmp_path):
    src = write_rows(tmp_path / "rows.json", [ROWS[0], {"instruction": "x"}, ROWS[2]])
    out = tmp_path / "scores.parquet"
    result = run("score", str(src), "--skip-invalid", "--max-length", "128", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert pl.read_parquet(out)["source_index"].to_list() == [0, 1]
    assert "invalid rows skipped" in result.stdout


def test_bad_options_exit_2_with_one_line(tmp_path):
    src = write_rows(tmp_path / "rows.json", ROWS)
    for args, message in [
        (["--template", "llama"], "unknown template"),
        (["--dtype", "float16"], "dtype must be one of"),
        (["--student", "no-such-student"], "unknown student"),
        (["--max-length", "2"], "--max-length"),
    ]:
        result = run("score", str(src), "--output", str(tmp_path / "o.parquet"), *args)
        assert result.returncode == 2, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)


def test_torchrun_two_processes_write_the_same_parquet_as_one(tmp_path):
    src = write_rows(tmp_path / "rows.json", ROWS * 2 + [{**ROWS[0], "output": "Two, three, five and seven."}])
    single, multi = tmp_path / "single.parquet", tmp_path / "multi.parquet"
    env = {"OMP_NUM_THREADS": "1"}
    common = ["score", str(src), "--template", "alpaca", "--max-length", "128", "--batch-tokens", "256", "--quiet"]
    one = run(*common, "--output", str(single), env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "recycled_datasets",
            *common,
            "--output",
            str(multi),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert multi.read_bytes() == single.read_bytes()


def test_help_is_instant_without_heavy_imports():
    code = (
        "import sys\n"
        "from recycled_datasets.cli import main\n"
        "commands = ['score', 'build', 'reflect', 'push', 'push-model', 'finetune', 'demo', 'select']\n"
        "for args in [['--help']] + [[c, '--help'] for c in commands]:\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        "names = ('torch', 'transformers', 'datasets', 'polars', 'huggingface_hub', 'trl', 'matplotlib')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--student" in result.stdout and "--max-length" in result.stdout
