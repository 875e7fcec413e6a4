"""The scorer at scale: chunked planning, rank shares balanced by text, distributed runs equal to one process,
a killed distributed run resumed, damaged checkpoints scored again, the CPU head's pass size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from recycled_datasets.records import Pair
from recycled_datasets.scoring import ScoreConfig, score_pairs, shares
from recycled_datasets.scoring import plan as plan_module
from recycled_datasets.scoring.engine import HEAD_CHUNK, head_sub

SCRIPT = Path(__file__).with_name("score_ranks.py")
# Pairs of very different lengths, so shares by count and shares by text differ; two repeat earlier ones.
PAIRS = [
    Pair(f"Question {i}: name a colour.", "", ("A long answer that goes on. " * (1 + 6 * (i % 4))) + f"Red {i}.")
    for i in range(22)
] + [Pair("Question 0: name a colour.", "", "A long answer that goes on. Red 0.")] * 2


def test_shares_balance_the_text_not_the_count():
    weights = [100, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 90]
    two = shares(weights, 2)
    assert sorted(two[0] + two[1]) == list(range(12))
    loads = [sum(weights[i] for i in s) for s in two]
    assert max(loads) - min(loads) <= max(weights[1:11])  # within one small chunk of even
    assert all(s == sorted(s) for s in two)
    assert shares(weights, 2) == two  # every rank computes the same shares
    assert shares([5, 5], 3) == [[0], [1], []]  # more ranks than chunks: some get nothing


def test_the_scorer_plans_one_chunk_at_a_time_and_equals_one_big_chunk(tiny_llama_dir, tmp_path, monkeypatch):
    from recycled_datasets.models import resolve_student

    student = resolve_student(str(tiny_llama_dir), template="alpaca", dtype="float32")
    sizes = []
    real = plan_module.Planner.plan

    def counting(self, part):  # noqa: ANN001, ANN202
        sizes.append(len(part))
        return real(self, part)

    monkeypatch.setattr(plan_module.Planner, "plan", counting)
    small = score_pairs(PAIRS, student, ScoreConfig(max_length=128, chunk_pairs=5))
    assert sizes == [5, 5, 5, 5, 4]  # never more than a chunk of pairs tokenized at once
    whole = score_pairs(PAIRS, student, ScoreConfig(max_length=128, chunk_pairs=1000))
    assert small.height == len(PAIRS)
    assert small["status"].to_list() == whole["status"].to_list()
    assert small["n_response_tokens"].to_list() == whole["n_response_tokens"].to_list()
    assert "ok" in small["status"].to_list()
    for name in ("ifd", "rifd"):
        for a, b in zip(small[name], whole[name], strict=True):
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-5)


def test_a_damaged_chunk_checkpoint_is_scored_again_not_fatal(tiny_llama_dir, tmp_path, caplog):
    from recycled_datasets.models import resolve_student

    student = resolve_student(str(tiny_llama_dir), template="alpaca", dtype="float32")
    config = ScoreConfig(max_length=128, chunk_pairs=8, cache_dir=tmp_path / "parts")
    first = score_pairs(PAIRS, student, config)
    chunk = sorted((tmp_path / "parts").glob("chunk-00001-*.parquet"))
    assert len(chunk) == 1 and len(list((tmp_path / "parts").glob("chunk-*.parquet"))) == 3
    chunk[0].write_bytes(b"not parquet")
    again = score_pairs(PAIRS, student, config)
    assert again.equals(first)
    assert "chunk-00001" in caplog.text and "scoring that chunk again" in caplog.text


def _write_pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"instruction": p.instruction, "input": p.input, "output": p.output} for p in PAIRS]))
    return path


def _score(tmp_path: Path, name: str, student: Path, *, ranks: int, crash_rank: int | None = None, cache=None):
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    cache = cache or folder / "parts"
    out = folder / "scores.parquet"
    args = [str(_write_pairs(tmp_path)), str(student), str(cache), str(out), "3"]
    args += [str(crash_rank)] if crash_rank is not None else []
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    done = subprocess.run(
        [*launcher, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    planned = {
        int(p.name.split("-")[1]): [int(n) for n in p.read_text().split()] for p in cache.parent.glob("planned-*")
    }
    return done, out, planned


@pytest.mark.slow
def test_two_ranks_plan_only_their_share_and_write_what_one_process_writes(tmp_path, tiny_llama_dir):
    one, single, planned_one = _score(tmp_path, "one", tiny_llama_dir, ranks=1)
    assert one.returncode == 0, one.stderr[-3000:]
    two, multi, planned_two = _score(tmp_path, "two", tiny_llama_dir, ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert pl.read_parquet(multi).equals(pl.read_parquet(single))
    # Each rank tokenized its own chunks only, and the two shares cover the pairs once.
    assert sum(planned_one[0]) == len(PAIRS)
    assert sorted(planned_two) == [0, 1] and sum(planned_two[0]) + sum(planned_two[1]) == len(PAIRS)
    assert planned_two[0] and planned_two[1]


@pytest.mark.slow
def test_a_killed_distributed_run_resumes_and_equals_one_process(tmp_path, tiny_llama_dir):
    one, single, _ = _score(tmp_path, "one", tiny_llama_dir, ranks=1)
    assert one.returncode == 0, one.stderr[-3000:]
    cache = tmp_path / "two" / "parts"
    killed, multi, planned_killed = _score(tmp_path, "two", tiny_llama_dir, ranks=2, crash_rank=1, cache=cache)
    assert killed.returncode != 0 and not multi.exists()
    finished = sorted(cache.glob("chunk-*.parquet"))
    assert finished, "rank 1 commits a chunk before it dies"
    for f in (tmp_path / "two").glob("planned-*"):
        f.unlink()
    resumed, multi, planned = _score(tmp_path, "two", tiny_llama_dir, ranks=2, cache=cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert pl.read_parquet(multi).equals(pl.read_parquet(single))
    # The finished chunks were not tokenized again.
    n_chunks = -(-len(PAIRS) // 3)
    assert sum(len(v) for v in planned.values()) == n_chunks - len(finished)


def test_the_cpu_head_pass_follows_the_vocabulary():
    assert head_sub(49_152) == 8  # SmolLM2: the measured best
    assert head_sub(2_048) == 192  # a small vocabulary: more positions per pass
    assert head_sub(256_000) == 1
    assert head_sub(10) == HEAD_CHUNK


def test_the_cpu_head_gives_the_same_losses_whatever_its_pass_size(tiny_llama_dir):
    import torch

    from recycled_datasets.models import load_model, resolve_student
    from recycled_datasets.scoring.engine import HeadAdapter

    model = load_model(resolve_student(str(tiny_llama_dir), template="alpaca", dtype="float32"), dtype="float32")
    head = HeadAdapter(model, "cpu")
    hidden = torch.randn(50, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, model.config.vocab_size, (50,), generator=torch.Generator().manual_seed(1))
    results = []
    for sub in (1, 8, 50):
        head.sub = sub
        results.append(head.nll(hidden, target))
    assert torch.equal(results[0], results[1]) and torch.equal(results[1], results[2])


SAMPLE_REFLECTIONS = Path(__file__).parents[1] / "recycled_datasets" / "data" / "sample_reflections"


def _srecycle(*args: str | Path, ranks: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    return subprocess.run(
        [*launcher, "-m", "recycled_datasets", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_torchrun_build_scores_on_two_ranks_and_writes_what_one_process_writes(tmp_path, tiny_llama_dir):
    workdirs = {}
    for name in ("one", "two"):
        workdirs[name] = tmp_path / name
        done = _srecycle("import-reflections", SAMPLE_REFLECTIONS, "--workdir", workdirs[name], "--quiet")
        assert done.returncode == 0, done.stderr
    common = ["--student", tiny_llama_dir, "--name", "tiny", "--template", "alpaca", "--dtype", "float32"]
    common += ["--keep-unreflected"]
    one = _srecycle("build", "--workdir", workdirs["one"], *common)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _srecycle("build", "--workdir", workdirs["two"], *common, ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    # 30 rows = 120 pairs = two chunks of 64: one per rank.
    assert "scored 64 pairs in 1 chunks on rank 0" in two.stderr
    assert "scored 56 pairs in 1 chunks on rank 1" in two.stderr

    def files(root: Path) -> dict[str, bytes]:
        return {
            p.relative_to(root).as_posix(): p.read_bytes()
            for folder in (root / "students" / "tiny", root / "dataset")
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    assert files(workdirs["two"]) == files(workdirs["one"])
    assert not (workdirs["two"] / "students" / "tiny" / "scores.parquet.parts").exists()


@pytest.mark.slow
def test_torchrun_build_before_the_teacher_pass_is_one_line_and_changes_nothing(tmp_path, tiny_llama_dir):
    workdir = tmp_path / "work"
    done = _srecycle(
        "build", "--workdir", workdir, "--source", "sample", "--teacher", "http://127.0.0.1:9",
        "--student", tiny_llama_dir, "--name", "tiny", "--template", "alpaca", ranks=2,
    )  # fmt: skip
    assert done.returncode != 0
    assert "under torchrun the ranks only score" in done.stderr and "srecycle reflect SOURCE" in done.stderr
    assert not (workdir / "reflections.parquet").exists()
