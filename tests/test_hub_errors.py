"""Hub failures become one clear line each, and the token never shows up anywhere."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import READ_TOKEN, REPO, make_workdir
from hub_server import WRITE_TOKEN as SENTINEL
from huggingface_hub import HfApi

from recycled_datasets.errors import HubError
from recycled_datasets.hub import hub_errors, push_release

pytest_plugins = ["hub_fixtures"]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return make_workdir(tmp_path / "work", rows=4)


def test_invalid_token_is_a_401_message_without_the_token(hub, workdir):
    bad = "hf_unknown_token_999"
    with pytest.raises(HubError, match="HTTP 401.*HF_TOKEN") as err:
        push_release(repo_id=REPO, workdir=workdir, token=bad, endpoint=hub.endpoint)
    assert bad not in str(err.value) and err.value.status == 401
    assert ("dataset", REPO) not in hub.state.repos


def test_read_only_token_is_a_403_message(hub, workdir):
    push_release(repo_id=REPO, workdir=workdir, token=SENTINEL, endpoint=hub.endpoint)
    with pytest.raises(HubError, match="HTTP 403.*write") as err:
        push_release(repo_id=REPO, workdir=workdir, token=READ_TOKEN, endpoint=hub.endpoint)
    assert err.value.status == 403  # kept as data, so a caller can branch on it without reading the message


def test_missing_repo_is_a_404_message(hub):
    api = HfApi(endpoint=hub.endpoint, token=SENTINEL)
    with pytest.raises(HubError, match="org/missing: repo not found") as err:
        with hub_errors("org/missing", action="read", token=SENTINEL, endpoint=hub.endpoint):
            api.dataset_info("org/missing")
    assert "\n" not in str(err.value) and err.value.status == 404


def test_name_conflict_is_a_409_message(hub, workdir):
    result = push_release(repo_id=REPO, workdir=workdir, token=SENTINEL, endpoint=hub.endpoint)
    api = HfApi(endpoint=hub.endpoint, token=SENTINEL)
    api.create_tag(REPO, tag="v1", revision=result.commit_oid, repo_type="dataset")
    with pytest.raises(HubError, match="name conflict \\(HTTP 409\\)") as err:
        with hub_errors(REPO, action="tag", token=SENTINEL, endpoint=hub.endpoint):
            api.create_tag(REPO, tag="v1", revision=result.commit_oid, repo_type="dataset")
    assert err.value.status == 409


def test_unreachable_hub_is_a_network_message(workdir):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HubError, match="cannot reach .*check the network or HF_ENDPOINT") as err:
        push_release(repo_id=REPO, workdir=workdir, token=SENTINEL, endpoint=f"http://127.0.0.1:{port}")
    assert err.value.status is None  # no answer came, so there is no status to keep


def test_bad_repo_id_and_bad_workdir_fail_before_any_request(hub, tmp_path, workdir):
    from recycled_datasets.errors import ConfigError, InputError

    with pytest.raises(ConfigError, match="ORG/NAME"):
        push_release(repo_id="just-a-name", workdir=workdir, token=SENTINEL, endpoint=hub.endpoint)
    # huggingface_hub's own rules, not a look-alike pattern: the Hub refuses "--" in a name, and so does the check.
    with pytest.raises(ConfigError, match="'org/bad--name' is not a Hub repo id.*--"):
        push_release(repo_id="org/bad--name", workdir=workdir, token=SENTINEL, endpoint=hub.endpoint)
    with pytest.raises(InputError, match="reflections.parquet"):
        push_release(repo_id=REPO, workdir=tmp_path / "empty", token=SENTINEL, endpoint=hub.endpoint)
    assert hub.state.requests == []


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "import sys; from recycled_datasets.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def test_no_token_at_all_is_a_clear_cli_error(tmp_path, workdir):
    proc = _cli(
        ["push", "--repo", REPO, "--workdir", str(workdir)], _clean_env(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "srecycle: error: no Hub token: set HF_TOKEN or run `hf auth login` (a write token is needed to push)"
    ]


def test_sentinel_token_appears_in_no_log_output_card_or_file(hub, tmp_path, workdir, caplog):
    caplog.set_level(logging.DEBUG)
    env = _clean_env(tmp_path, HF_TOKEN=SENTINEL, HF_ENDPOINT=hub.endpoint)
    outputs = []
    # The CLI end to end (stdout + stderr), with debug logging, a push, a tag, and a local tree.
    for args in (
        ["push", "--repo", REPO, "--workdir", str(workdir), "--tag", "v1.0", "--debug"],
        ["push", "--repo", REPO, "--workdir", str(workdir), "--to-dir", str(tmp_path / "tree")],
        ["push", "--repo", REPO, "--workdir", str(workdir), "--tag", "v1.0"],  # fails: the tag exists
    ):
        proc = _cli(args, env)
        outputs += [proc.stdout, proc.stderr]
    assert proc.returncode == 2 and "tag 'v1.0' already exists" in proc.stderr
    # In process too, so huggingface_hub's own debug logging is captured.
    push_release(repo_id="org/second", workdir=workdir, token=SENTINEL, endpoint=hub.endpoint)
    outputs.append(caplog.text)

    assert all(SENTINEL not in text for text in outputs)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "README.md" for p in written)
    assert [p for p in written if SENTINEL.encode() in p.read_bytes()] == []
    for (_, repo_id), repo in hub.state.repos.items():
        for commit in repo.commits.values():
            assert all(SENTINEL.encode() not in content for content in commit.files.values()), repo_id
