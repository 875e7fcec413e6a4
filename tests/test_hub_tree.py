"""The release tree written locally (``srecycle push --to-dir`` and the build's DIR/dataset)."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hub_server import make_workdir
from huggingface_hub import DatasetCard

from recycled_datasets.cli import main
from recycled_datasets.errors import ConfigError, InputError
from recycled_datasets.hub import write_release_tree
from recycled_datasets.records import CHAT_COLUMNS, VARIANTS
from recycled_datasets.safety import MANIFEST_NAME

REPO = "org/srecycled"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("hub_tree") / "work")


@pytest.fixture(scope="module")
def tree(workdir, tmp_path_factory):
    return write_release_tree(workdir, tmp_path_factory.mktemp("hub_tree_out") / "dataset", repo_id=REPO)


def test_tree_has_the_hub_layout(tree):
    data = {f for f in tree.files if f.endswith(".parquet")}
    assert data == {
        "llama2-7b/train-00000-of-00001.parquet",
        "mistral-7b/train-00000-of-00001.parquet",
        "reflections/train-00000-of-00001.parquet",
        "scores/llama2-7b/train-00000-of-00001.parquet",
        "scores/mistral-7b/train-00000-of-00001.parquet",
    }
    assert "README.md" in tree.files
    assert {f for f in tree.files if f.startswith("plots/")} == {
        f"plots/{k}/{p}.png" for k in ("llama2-7b", "mistral-7b") for p in ("ifd", "rifd", "kept")
    }
    assert tree.default_config == "llama2-7b"


def test_tree_is_byte_identical_for_the_same_inputs(workdir, tree, tmp_path):
    again = write_release_tree(workdir, tmp_path / "again", repo_id=REPO)
    assert again.files == tree.files
    for rel in tree.files:
        assert (again.root / rel).read_bytes() == (tree.root / rel).read_bytes(), rel


def test_a_release_written_in_small_batches_holds_the_same_rows(workdir, tree, tmp_path, monkeypatch):
    """Views stream tables of views.BATCH_ROWS rows; cut into batches of 2 and 3 the release's rows are the same."""
    from recycled_datasets.workdir import views

    for size in (2, 3):
        monkeypatch.setattr(views, "BATCH_ROWS", size)
        small = write_release_tree(workdir, tmp_path / f"small{size}", repo_id=REPO)
        assert small.files == tree.files
        for rel in (f for f in tree.files if f.endswith(".parquet")):
            cut, whole = pq.ParquetFile(small.root / rel), pq.ParquetFile(tree.root / rel)
            assert cut.read().to_pylist() == whole.read().to_pylist(), rel
            assert cut.schema_arrow == whole.schema_arrow, rel
            assert cut.metadata.num_row_groups > 1 or cut.metadata.num_rows <= size, rel
        # the card's features and row counts are the same; only the measured sizes may differ
        assert _card_without_sizes(small.root) == _card_without_sizes(tree.root)


def _card_without_sizes(root: Path) -> str:
    return re.sub(r"(num_bytes|download_size|dataset_size): \d+", r"\1: N", (root / "README.md").read_text())


def test_folder_loads_with_datasets_per_config_and_default(workdir, tree, tmp_path):
    import datasets

    cache = str(tmp_path / "cache")
    mistral = datasets.load_dataset(str(tree.root), "mistral-7b", split="train", cache_dir=cache)
    subset = pq.read_table(workdir / "students" / "mistral-7b" / "subset.parquet").to_pylist()
    assert mistral.remove_columns(list(CHAT_COLUMNS)).to_list() == subset
    # Alpaca rows are written as one user turn (input after a newline) and the response.
    for loaded, row in zip(mistral, subset, strict=True):
        user = f"{row['instruction']}\n{row['input']}" if row["input"] else row["instruction"]
        assert loaded["prompt"] == [{"role": "user", "content": user}]
        assert loaded["completion"] == [{"role": "assistant", "content": row["output"]}]
        assert loaded["messages"] == loaded["prompt"] + loaded["completion"]
    default = datasets.load_dataset(str(tree.root), split="train", cache_dir=cache)
    assert default.config_name == "llama2-7b"
    assert len(default) == pq.read_metadata(workdir / "students" / "llama2-7b" / "subset.parquet").num_rows


def test_scores_config_holds_every_variant_of_every_student_with_its_text(workdir, tree, tmp_path):
    """Others can cut their own subsets from the released scores: each student's, per (row, variant)."""
    import datasets

    scores = datasets.load_dataset(str(tree.root), "scores", split="train", cache_dir=str(tmp_path / "cache"))
    wide = {r["id"]: r for r in pq.read_table(workdir / "reflections.parquet").to_pylist()}
    for key in ("llama2-7b", "mistral-7b"):
        own = [r for r in scores if r["student"] == key]
        raw = pq.read_table(workdir / "students" / key / "scores.parquet").to_pylist()
        assert [(r["id"], r["variant"], r["ifd"], r["rifd"]) for r in own] == [
            (r["id"], r["variant"], r["ifd"], r["rifd"]) for r in raw
        ]
        for r in own:
            assert r["output"] == wide[r["id"]][f"{r['variant']}_output"]
    assert len(scores) == 2 * 4 * len(wide)


def test_reflections_config_is_the_long_layout_of_every_variant(workdir, tree):
    wide = pq.read_table(workdir / "reflections.parquet").to_pylist()
    long = pq.read_table(tree.root / "reflections" / "train-00000-of-00001.parquet").to_pylist()
    assert len(long) == 4 * len(wide)
    for i, row in enumerate(wide):
        for j, variant in enumerate(VARIANTS):
            got = long[4 * i + j]
            assert (got["id"], got["variant"], got["source_index"]) == (row["id"], variant, row["source_index"])
            assert (got["instruction"], got["input"], got["output"]) == tuple(
                row[f"{variant}_{f}"] for f in ("instruction", "input", "output")
            )
            assert got["status"] == ("ok" if variant == "ori" else row[f"{variant}_status"])
    assert any(r["status"] == "fell_back" and r["detail"] for r in long)


def test_card_metadata_and_body(workdir, tree):
    card = DatasetCard.load(tree.root / "README.md")
    configs = card.data.configs
    assert [c["config_name"] for c in configs] == ["llama2-7b", "mistral-7b", "reflections", "scores"]
    assert [c["config_name"] for c in configs if c.get("default")] == ["llama2-7b"]
    assert card.data.license == "cc-by-nc-4.0"
    for key in ("task_categories", "size_categories", "source_datasets", "tags", "pretty_name", "dataset_info"):
        assert getattr(card.data, key), key
    info = {i["config_name"]: i for i in card.data.dataset_info}
    assert info["reflections"]["splits"][0]["num_examples"] == 24
    assert info["scores"]["splits"][0]["num_examples"] == 48  # two students, four variants of six rows
    # Every image the card shows is a file of the tree.
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card.text)
    assert len(images) == 6 and all((tree.root / p).is_file() for p in images)
    # Numbers, ids and snippets that the issue asks the card to carry.
    import json

    report = json.loads((workdir / "students" / "llama2-7b" / "report.json").read_text())
    assert f"{report['rows_kept']} of {report['rows_in']}" in card.text
    assert report["student"]["revision"] in card.text
    assert "0123456789abcdef0123456789abcdef01234567" in card.text  # teacher revision
    assert 'load_dataset("org/srecycled", "mistral-7b"' in card.text
    assert "2402.10110" in card.text and "2308.12032" in card.text


def test_student_order_sets_the_default(workdir, tmp_path):
    tree = write_release_tree(workdir, tmp_path / "t", students=["mistral-7b"])
    card = DatasetCard.load(tree.root / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["mistral-7b", "reflections", "scores"]
    assert card.data.configs[0]["default"] is True
    assert not any(f.startswith("llama2-7b/") for f in tree.files)
    assert 'load_dataset("ORG/NAME", "mistral-7b"' in card.text  # no repo id given


def test_license_is_inherited_from_the_reflections(tmp_path):
    work = make_workdir(tmp_path / "work", students=("llama2-7b",), rows=3, license="apache-2.0")
    tree = write_release_tree(work, tmp_path / "t")
    assert DatasetCard.load(tree.root / "README.md").data.license == "apache-2.0"


def test_bad_inputs_are_typed_errors(workdir, tmp_path):
    with pytest.raises(InputError, match="missing subset.parquet"):
        write_release_tree(workdir, tmp_path / "a", students=["llama2-13b"])
    with pytest.raises(ConfigError, match="reserved"):
        write_release_tree(workdir, tmp_path / "b", students=["reflections"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not a release folder srecycle wrote"):
        write_release_tree(workdir, tmp_path / "busy")
    assert (tmp_path / "busy" / "x").read_text() == "x"


def test_rebuild_replaces_an_earlier_release_in_place(workdir, tmp_path):
    first = write_release_tree(workdir, tmp_path / "dataset")
    assert any(f.startswith("llama2-7b/") for f in first.files)
    second = write_release_tree(workdir, tmp_path / "dataset", students=["mistral-7b"])
    assert second.root == first.root == tmp_path / "dataset"
    on_disk = sorted(
        p.relative_to(second.root).as_posix()
        for p in second.root.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME
    )
    assert on_disk == list(second.files)
    assert not any(f.startswith("llama2-7b/") for f in on_disk)
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]  # no partial folder left behind


def test_cli_to_dir_writes_the_tree_without_network(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request would fail
    main(
        [
            "push",
            "--repo",
            REPO,
            "--workdir",
            str(workdir),
            "--to-dir",
            str(tmp_path / "out"),
            "--student",
            "llama2-7b",
        ]
    )
    out = capsys.readouterr().out
    assert "llama2-7b (default)" in out and "reflections" in out
    card = DatasetCard.load(tmp_path / "out" / "README.md")
    assert [c["config_name"] for c in card.data.configs if c.get("default")] == ["llama2-7b"]
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card.text)
    assert images and all((tmp_path / "out" / p).is_file() for p in images)


def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["push", "--repo", REPO, "--workdir", str(tmp_path / "nowhere"), "--to-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reflections.parquet" in err[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["push", "--repo", "noslash", "--workdir", str(tmp_path), "--to-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2


@pytest.fixture(scope="module")
def one_empty(tmp_path_factory):
    """mistral-7b's selection keeps no row (as with a tiny teacher in paper mode); llama2-7b keeps some."""
    base = tmp_path_factory.mktemp("hub_tree_empty")
    return make_workdir(base / "work", empty=("mistral-7b",))


def test_a_student_that_kept_no_row_is_reported_but_not_a_loadable_config(one_empty, tmp_path, caplog):
    import datasets

    with caplog.at_level("WARNING", logger="recycled_datasets.hub.tree"):
        tree = write_release_tree(one_empty, tmp_path / "dataset", repo_id=REPO)
    assert any("mistral-7b" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert not any(f.startswith("mistral-7b/") and f.endswith(".parquet") for f in tree.files)
    assert "mistral-7b/report.json" in tree.files and tree.empty == ("mistral-7b",)
    card = DatasetCard.load(tree.root / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["llama2-7b", "reflections", "scores"]
    assert [c["config_name"] for c in card.data.configs if c.get("default")] == ["llama2-7b"]
    assert [i["config_name"] for i in card.data.dataset_info] == ["llama2-7b", "reflections", "scores"]
    # The body still has mistral-7b's section, saying plainly that nothing passed, with its report's numbers.
    section = card.text.split("### `mistral-7b`", 1)[1].split("### ", 1)[0]
    assert "No row passed the selection" in section and "0 of 6" in section
    assert "above_threshold: " in section and 'load_dataset("org/srecycled", "mistral-7b"' not in card.text
    cache = str(tmp_path / "cache")
    llama = datasets.load_dataset(str(tree.root), "llama2-7b", split="train", cache_dir=cache)
    expected = pq.read_table(one_empty / "students" / "llama2-7b" / "subset.parquet").to_pylist()
    assert llama.remove_columns(list(CHAT_COLUMNS)).to_list() == expected
    assert datasets.load_dataset(str(tree.root), split="train", cache_dir=cache).config_name == "llama2-7b"


def test_when_every_student_is_empty_reflections_is_the_default(one_empty, tmp_path):
    import datasets

    tree = write_release_tree(one_empty, tmp_path / "dataset", students=["mistral-7b"])
    card = DatasetCard.load(tree.root / "README.md")
    assert card.data.configs == [
        {
            "config_name": "reflections",
            "data_files": [{"split": "train", "path": "reflections/train-*"}],
            "default": True,
        },
        {"config_name": "scores", "data_files": [{"split": "train", "path": "scores/*/train-*"}]},
    ]
    assert tree.default_config == "reflections" and "No row passed the selection" in card.text
    default = datasets.load_dataset(str(tree.root), split="train", cache_dir=str(tmp_path / "cache"))
    assert default.config_name == "reflections" and len(default) == 4 * 6


def test_repushing_a_config_that_became_empty_deletes_its_data_on_the_repo(tmp_path):
    from hub_server import HubServer

    from recycled_datasets.hub import push_release

    token = "hf_test_write_token_0000"
    full = make_workdir(tmp_path / "full")
    emptied = make_workdir(tmp_path / "emptied", empty=("mistral-7b",))
    with HubServer(tokens={token: "write"}) as hub:
        push_release(repo_id=REPO, workdir=full, token=token, endpoint=hub.endpoint)
        result = push_release(
            repo_id=REPO, workdir=emptied, students=["mistral-7b"], token=token, endpoint=hub.endpoint
        )
        files = hub.state.files_at("dataset", REPO)
        assert "mistral-7b/train-00000-of-00001.parquet" in result.deleted
        assert "mistral-7b/train-00000-of-00001.parquet" not in files and "mistral-7b/report.json" in files
        card = DatasetCard(files["README.md"].decode())
        assert [c["config_name"] for c in card.data.configs] == ["llama2-7b", "reflections", "scores"]
        # A later push of the other config keeps the empty one's section, read back from its report on the repo.
        push_release(repo_id=REPO, workdir=full, students=["llama2-7b"], token=token, endpoint=hub.endpoint)
        card = DatasetCard(hub.state.files_at("dataset", REPO)["README.md"].decode())
    assert [c["config_name"] for c in card.data.configs if c.get("default")] == ["llama2-7b"]
    assert "No row passed the selection" in card.text.split("### `mistral-7b`", 1)[1]
