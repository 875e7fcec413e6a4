"""The CLI as a user meets it: every option documented, user errors as one line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer

from recycled_datasets.cli import app


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "recycled_datasets", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def commands():
    group = typer.main.get_command(app)
    return sorted(group.commands.items())


def test_every_command_and_option_has_help_text():
    names = [name for name, _ in commands()]
    for expected in (
        "demo",
        "reflect",
        "score",
        "build",
        "select",
        "import-reflections",
        "push",
        "push-model",
        "finetune",
        "students",
    ):
        assert expected in names
    for name, command in commands():
        assert (command.help or "").strip(), f"{name} has no help"
        for param in command.params:
            if param.param_type_name == "option":
                assert (param.help or "").strip(), f"{name} {param.opts} has no help text"


@pytest.mark.parametrize("name", ["score", "build", "reflect", "push", "finetune", "demo", "import-reflections"])
def test_help_lists_the_options(name):
    result = run(name, "--help")
    assert result.returncode == 0, result.stderr
    _, command = next(c for c in commands() if c[0] == name)
    for param in command.params:
        if param.param_type_name == "option":
            assert param.opts[0] in result.stdout, (name, param.opts[0])


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("srecycle ")


@pytest.mark.parametrize(
    "args",
    [
        ["score", "missing.json", "--output", "o.parquet"],
        ["reflect", "missing.json", "--output", "o.parquet", "--teacher", "http://127.0.0.1:9"],
        ["build", "--source", "missing.json", "--workdir", "w", "--teacher", "http://127.0.0.1:9"],
        ["import-reflections", "missing-folder", "--workdir", "w"],
        ["push", "--repo", "org/name", "--workdir", "missing-workdir", "--to-dir", "out"],
        ["push-model", "missing-checkpoint", "--repo", "org/name", "--to-dir", "out"],
        ["finetune", "--dataset", "missing-folder", "--config", "smollm2-135m", "--output", "ckpt"],
        ["select", "--workdir", "missing-workdir", "--student", "smollm2-135m"],
    ],
    ids=lambda a: a[0],
)
def test_a_missing_file_is_one_line_and_exit_2(tmp_path, args):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("srecycle: error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert "missing" in lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["score", "x.json", "--output", "o.parquet", "--no-such-option"],
        ["build", "--workdir", "w", "--top-p", "150"],
        ["demo", "--rows", "0"],
        ["push", "--workdir", "w"],
        ["no-such-command"],
    ],
    ids=["unknown-option", "out-of-range", "bad-value", "missing-required", "unknown-command"],
)
def test_a_bad_option_is_one_line_and_exit_2(tmp_path, args):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("srecycle: error:"), result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = run("--debug", "score", "missing.json", "--output", "o.parquet", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr
