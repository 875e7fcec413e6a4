"""Model cards for fine-tuned checkpoints, and ``srecycle push-model`` against the loopback Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hub_server import HubServer
from huggingface_hub import ModelCard

from recycled_datasets.cli import main
from recycled_datasets.errors import HubError, InputError
from recycled_datasets.hub import push_model, write_model_card

TOKEN = "hf_model_write_token_42"


def _checkpoint(root: Path, **overrides) -> Path:
    root.mkdir(parents=True)
    record = {
        "base_model": "meta-llama/Llama-2-7b-hf",
        "dataset": "org/srecycled",
        "config": "llama2-7b",
        "dataset_revision": "v1.0",
        "template": "vicuna",
        "hyperparameters": {"learning_rate": 2e-5, "num_train_epochs": 3, "global_batch_size": 128},
        "license": "cc-by-nc-4.0",
        "train_loss": 1.2345,
        "eval_results": [
            {"task": "pairwise vs base", "dataset": "vicuna-80", "metric": "winning score", "value": 1.21}
        ],
        "student": "llama2-7b",
        **overrides,
    }
    (root / "srecycle_finetune.json").write_text(json.dumps(record))
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model.safetensors").write_bytes(b"\x00" * 64)
    (root / "optimizer.pt").write_bytes(b"resume state")
    (root / "checkpoint-10").mkdir()
    (root / "checkpoint-10" / "model.safetensors").write_bytes(b"\x01" * 8)
    return root


def test_model_card_points_back_to_the_data(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt")
    card = ModelCard.load(write_model_card(ckpt))
    data = card.data.to_dict()
    assert data["base_model"] == "meta-llama/Llama-2-7b-hf"
    assert data["base_model_relation"] == "finetune"
    assert data["datasets"] == ["org/srecycled"]
    assert data["license"] == "cc-by-nc-4.0"
    assert "srecycled" in data["tags"]
    assert "`llama2-7b`" in card.text and "`v1.0`" in card.text
    assert 'load_dataset("org/srecycled", "llama2-7b", split="train", revision="v1.0")' in card.text
    assert "`learning_rate` | `2e-05`" in card.text
    assert "| vicuna-80 |" in card.text.replace("| pairwise vs base ", "")
    assert "1.2345" in card.text


def test_local_dataset_folder_is_not_listed_as_a_hub_dataset(tmp_path):
    folder = tmp_path / "work" / "dataset"
    folder.mkdir(parents=True)
    ckpt = _checkpoint(tmp_path / "ckpt", dataset=str(folder), dataset_revision=None, eval_results=None)
    card = ModelCard.load(write_model_card(ckpt))
    assert "datasets" not in card.data.to_dict()
    assert "a local folder" in card.text and "No evaluation results" in card.text


def test_missing_or_invalid_record_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="srecycle_finetune.json"):
        write_model_card(tmp_path / "empty")
    ckpt = _checkpoint(tmp_path / "ckpt", base_model="")
    with pytest.raises(InputError, match="base_model"):
        write_model_card(ckpt)


def test_push_model_uploads_checkpoint_and_card_in_one_commit(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt")
    with HubServer(tokens={TOKEN: "write"}) as hub:
        result = push_model(
            checkpoint=ckpt, repo_id="org/llama2-7b-srecycled", tag="v1", token=TOKEN, endpoint=hub.endpoint
        )
        repo = hub.state.repos[("model", "org/llama2-7b-srecycled")]
        files = hub.state.files_at("model", "org/llama2-7b-srecycled")
        assert len(repo.commits) == 2  # the initial commit, then everything at once
        assert repo.tags["v1"] == result.commit_oid
        assert {"README.md", "config.json", "model.safetensors", "srecycle_finetune.json"} <= set(files)
        assert "optimizer.pt" not in files and not any(f.startswith("checkpoint-10/") for f in files)
        assert ModelCard(files["README.md"].decode()).data.base_model == "meta-llama/Llama-2-7b-hf"
        with pytest.raises(HubError, match="tag 'v1' already exists"):
            push_model(
                checkpoint=ckpt, repo_id="org/llama2-7b-srecycled", tag="v1", token=TOKEN, endpoint=hub.endpoint
            )


def test_cli_push_model_to_dir(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "ckpt")
    main(["push-model", str(ckpt), "--repo", "org/m", "--to-dir", str(tmp_path / "out")])
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["README.md", "config.json", "model.safetensors", "srecycle_finetune.json"]
    assert "finetune" in (tmp_path / "out" / "README.md").read_text()
    assert "org/m" in capsys.readouterr().out
