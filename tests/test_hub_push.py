"""Publishing a release to a Hub-compatible server on loopback, read back by the real clients."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from hub_server import REPO, HubServer, make_workdir
from hub_server import WRITE_TOKEN as TOKEN
from huggingface_hub import DatasetCard

from recycled_datasets.errors import HubError
from recycled_datasets.hub import push_release

pytest_plugins = ["hub_fixtures"]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return make_workdir(tmp_path / "work")


def _files(hub: HubServer, revision: str = "main") -> dict[str, bytes]:
    return hub.state.files_at("dataset", REPO, revision)


def _rows(content: bytes) -> list[dict]:
    return pq.read_table(io.BytesIO(content)).to_pylist()


def _load_in_fresh_process(hub: HubServer, tmp_path: Path, calls: list[tuple[str | None, str | None]]) -> list:
    """Run load_dataset in a new interpreter with HF_ENDPOINT set before datasets is imported."""
    code = textwrap.dedent(
        """
        import json, sys
        import datasets
        out = []
        for config, revision in json.loads(sys.argv[1]):
            kwargs = {"revision": revision} if revision else {}
            ds = datasets.load_dataset(sys.argv[2], config, split="train", **kwargs)
            out.append({"config": ds.config_name, "rows": ds.to_list()})
        print("RESULT" + json.dumps(out))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"),
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(calls), REPO],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def _subset_rows(workdir: Path, key: str) -> list[dict]:
    """A subset's rows as the release holds them: subset.parquet plus the row as chat turns."""
    from recycled_datasets.chat import add_chat_columns, contexts_of

    table = pq.read_table(workdir / "students" / key / "subset.parquet")
    return add_chat_columns(table, contexts_of(table)).to_pylist()


def test_push_two_configs_loads_each_default_and_tagged_revision(hub, workdir, tmp_path):
    result = push_release(repo_id=REPO, workdir=workdir, tag="v1.0", token=TOKEN, endpoint=hub.endpoint)

    assert set(result.configs) == {"llama2-7b", "mistral-7b", "reflections", "scores"}
    repo = hub.state.repos[("dataset", REPO)]
    assert repo.tags["v1.0"] == repo.branches["main"] == result.commit_oid
    llama, default, reflections = _load_in_fresh_process(
        hub, tmp_path, [("llama2-7b", None), (None, None), ("reflections", None)]
    )
    assert llama["rows"] == _subset_rows(workdir, "llama2-7b")
    assert default["config"] == "llama2-7b" and default["rows"] == llama["rows"]
    assert len(reflections["rows"]) == 4 * 6
    assert [r["variant"] for r in reflections["rows"][:4]] == ["ori", "ins", "res", "both"]

    # A later release moves main but not what the tag points to.
    other = make_workdir(tmp_path / "other", rows=3)
    push_release(repo_id=REPO, workdir=other, token=TOKEN, endpoint=hub.endpoint)
    tagged, latest = _load_in_fresh_process(hub, tmp_path, [("llama2-7b", "v1.0"), ("llama2-7b", None)])
    assert tagged["rows"] == _subset_rows(workdir, "llama2-7b")
    assert latest["rows"] == _subset_rows(other, "llama2-7b")
    assert tagged["rows"] != latest["rows"]


def test_private_repo_is_created_private(hub, workdir):
    push_release(repo_id=REPO, workdir=workdir, private=True, token=TOKEN, endpoint=hub.endpoint)
    assert hub.state.repos[("dataset", REPO)].private is True


def test_repush_one_config_keeps_the_other_config_untouched(hub, workdir, tmp_path):
    push_release(repo_id=REPO, workdir=workdir, token=TOKEN, endpoint=hub.endpoint)
    before = _files(hub)
    mistral = ("mistral-7b/", "plots/mistral-7b/", "scores/mistral-7b/")
    mistral_before = {f: c for f, c in before.items() if f.startswith(mistral)}
    assert "mistral-7b/train-00000-of-00001.parquet" in mistral_before
    assert "scores/mistral-7b/train-00000-of-00001.parquet" in mistral_before  # its part of the scores config

    # A new selection for llama2-7b only (fewer rows), pushed on its own.
    from recycled_datasets.workdir.tables import read_report, write_subset

    subset = workdir / "students" / "llama2-7b" / "subset.parquet"
    table = pq.read_table(subset)
    fewer = pl.from_arrow(table.slice(0, table.num_rows - 1))
    write_subset(workdir, "llama2-7b", fewer, read_report(workdir, "llama2-7b"))
    result = push_release(repo_id=REPO, workdir=workdir, students=["llama2-7b"], token=TOKEN, endpoint=hub.endpoint)

    after = _files(hub)
    assert {f: c for f, c in after.items() if f.startswith(mistral)} == mistral_before
    assert _rows(after["mistral-7b/train-00000-of-00001.parquet"]) == _subset_rows(workdir, "mistral-7b")
    assert _rows(after["llama2-7b/train-00000-of-00001.parquet"]) == _subset_rows(workdir, "llama2-7b")
    assert len(_subset_rows(workdir, "llama2-7b")) == table.num_rows - 1
    assert after["reflections/train-00000-of-00001.parquet"] == before["reflections/train-00000-of-00001.parquet"]
    # The card still describes both students, with the untouched one's table read back from the repo.
    card = DatasetCard(after["README.md"].decode())
    names = [c["config_name"] for c in card.data.configs]
    assert names == ["llama2-7b", "mistral-7b", "reflections", "scores"]
    assert result.configs == tuple(names)
    mistral_report = json.loads((workdir / "students" / "mistral-7b" / "report.json").read_text())
    assert f"{mistral_report['rows_kept']} of {mistral_report['rows_in']}" in card.text
    assert "plots/mistral-7b/kept.png" in card.text


def test_repush_deletes_stale_files_of_the_pushed_config_only(hub, workdir):
    push_release(repo_id=REPO, workdir=workdir, token=TOKEN, endpoint=hub.endpoint)
    repo = hub.state.repos[("dataset", REPO)]
    # Files a previous layout might have left: one inside llama2-7b's folder, one outside any config.
    head = repo.commits[repo.branches["main"]]
    head.files["llama2-7b/train-00000-of-00002.parquet"] = b"old shard"
    head.files["notes.txt"] = b"kept"

    result = push_release(repo_id=REPO, workdir=workdir, students=["llama2-7b"], token=TOKEN, endpoint=hub.endpoint)

    files = _files(hub)
    assert "llama2-7b/train-00000-of-00002.parquet" not in files
    assert result.deleted == ("llama2-7b/train-00000-of-00002.parquet",)
    assert files["notes.txt"] == b"kept"


def test_failed_commit_leaves_the_previous_release_intact(hub, workdir, tmp_path):
    first = push_release(repo_id=REPO, workdir=workdir, tag="v1.0", token=TOKEN, endpoint=hub.endpoint)
    before = _files(hub)

    hub.state.fail_next_commits = 1
    with pytest.raises(HubError, match="HTTP 500") as err:
        push_release(
            repo_id=REPO, workdir=make_workdir(tmp_path / "v2", rows=9), tag="v2.0", token=TOKEN, endpoint=hub.endpoint
        )

    assert "\n" not in str(err.value)
    repo = hub.state.repos[("dataset", REPO)]
    assert repo.branches["main"] == first.commit_oid
    assert _files(hub) == before
    assert set(repo.tags) == {"v1.0"}  # the tag of the failed release was not created either
    assert ("POST", f"/api/datasets/{REPO}/commit/main") in hub.state.requests
    loaded = _load_in_fresh_process(hub, tmp_path, [("mistral-7b", None)])[0]
    assert loaded["rows"] == _subset_rows(workdir, "mistral-7b")


def test_existing_tag_is_refused_before_anything_is_committed(hub, workdir):
    first = push_release(repo_id=REPO, workdir=workdir, tag="v1.0", token=TOKEN, endpoint=hub.endpoint)
    with pytest.raises(HubError, match="tag 'v1.0' already exists"):
        push_release(repo_id=REPO, workdir=workdir, tag="v1.0", token=TOKEN, endpoint=hub.endpoint)
    assert hub.state.repos[("dataset", REPO)].branches["main"] == first.commit_oid


def test_pushed_card_has_one_default_a_license_and_plots_in_the_repo(hub, workdir):
    push_release(repo_id=REPO, workdir=workdir, token=TOKEN, endpoint=hub.endpoint)
    files = _files(hub)
    card = DatasetCard(files["README.md"].decode())

    assert [c["config_name"] for c in card.data.configs if c.get("default")] == ["llama2-7b"]
    assert card.data.license == "cc-by-nc-4.0"
    plots = [line.split("](", 1)[1].rstrip(")") for line in card.text.splitlines() if line.startswith("![")]
    assert len(plots) == 6
    assert all(p in files and files[p].startswith(b"\x89PNG") for p in plots)


def test_unchanged_repush_uploads_nothing_new(hub, workdir):
    first = push_release(repo_id=REPO, workdir=workdir, token=TOKEN, endpoint=hub.endpoint)
    second = push_release(repo_id=REPO, workdir=workdir, token=TOKEN, endpoint=hub.endpoint)
    # Byte-identical files are skipped by the client, so nothing changed and no commit was made.
    assert second.commit_oid == first.commit_oid
    assert len(hub.state.repos[("dataset", REPO)].commits) == 2  # the repo's initial commit + the release
