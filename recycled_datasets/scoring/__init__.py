"""The student scorer: IFD and r-IFD for many pairs, exact and fast (docs/method.md, section 3).

``score_pairs`` plans the four sequences of every pair (deduplicated), scores the ones no checkpoint holds
in length-sorted batches, and assembles one row per pair. Under ``torchrun``/``accelerate launch`` each
rank scores its share of the (globally planned) batches; rank 0 merges, so the result equals a one-process
run.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recycled_datasets.errors import ConfigError, StoreError
from recycled_datasets.models import DTYPES, StudentSpec, load_model, load_tokenizer, pretrained_path
from recycled_datasets.records import SCORE_COLUMNS, Pair
from recycled_datasets.scoring.plan import LOSS_NAMES
from recycled_datasets.templates import validate_template
from recycled_datasets.tokens import SCORINGS, resolve_scoring

if TYPE_CHECKING:
    import polars as pl

logger = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_MISSING = "missing"


@dataclass(frozen=True)
class ScoreConfig:
    """How a student scores pairs.

    Attributes:
        template: prompt format (docs/method.md, section 3); ``None`` uses the student's own.
        max_length: tokens per scored sequence, BOS included; longer ones are truncated on the right.
        dtype: ``bfloat16`` (default; the head and the loss in fp32) or ``float32`` (the reference's numbers).
        batch_tokens: padded tokens per forward pass; ``None`` picks 8192 on CPU and 65536 on GPU.
        cache_dir: where finished work is checkpointed so a killed run resumes; ``None`` keeps it in a
            temporary folder removed at the end (no resume).
        flush_seconds: how often finished work is committed to ``cache_dir``.
        device: ``cpu``, ``cuda``, ``cuda:1``...; ``None`` picks the rank's GPU when there is one.
        scoring: the token layout, ``reference`` (the reference script's, exactly) or ``split`` (the project's);
            ``None``: the student's, else :func:`recycled_datasets.tokens.resolve_scoring`'s default.
    """

    template: str | None = None
    max_length: int = 2048
    dtype: str | None = None
    batch_tokens: int | None = None
    cache_dir: Path | None = None
    flush_seconds: float = 30.0
    device: str | None = None
    scoring: str | None = None

    def __post_init__(self) -> None:
        if self.template is not None:
            validate_template(self.template)
        if self.scoring is not None and self.scoring not in SCORINGS:
            raise ConfigError(f"--scoring must be one of {', '.join(SCORINGS)}, not {self.scoring!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.max_length < 8:
            raise ConfigError(f"--max-length must be at least 8, not {self.max_length}")
        if self.batch_tokens is not None and self.batch_tokens < 16:
            raise ConfigError(f"--batch-tokens must be at least 16, not {self.batch_tokens}")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """This process's place under torchrun / accelerate launch (one process otherwise)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def _device(config: ScoreConfig, dist: DistInfo) -> str:
    if config.device:
        return config.device
    import torch

    return f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu"


def _setup(student: StudentSpec, template: str, dtype: str, max_length: int, scoring: str) -> dict[str, str | int]:
    return {
        "model": pretrained_path(student),
        "revision": student.revision,
        "template": template,
        "scoring": scoring,
        "dtype": dtype,
        "max_length": max_length,
    }


def scoring_of(config: ScoreConfig, student: StudentSpec, template: str, pairs: Sequence[Pair]) -> str:
    """The convention these pairs are scored with: the config's, else the student's, else the default."""
    return resolve_scoring(
        config.scoring, template, multi_turn=any(p.context for p in pairs), preferred=student.scoring or None
    )


def _init_distributed(dist: DistInfo, device: str) -> bool:
    if dist.world <= 1:
        return False
    import torch.distributed as td

    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return True


def score_pairs(pairs: Sequence[Pair], student: StudentSpec, config: ScoreConfig | None = None) -> pl.DataFrame | None:
    """Score every pair; one row per pair, in order, with the columns of ``records.SCORE_COLUMNS``.

    Returns ``None`` on ranks other than 0 of a distributed run (rank 0 returns the merged frame).
    A score that cannot be computed is null, with the reason in ``reason`` and ``status`` = "missing".
    """
    from recycled_datasets.scoring.engine import batch_tokens_for, make_batches
    from recycled_datasets.scoring.plan import Planner

    config = config or ScoreConfig()
    template = config.template or student.template
    dtype = config.dtype or student.dtype
    dist = dist_info()
    device = _device(config, dist)
    distributed = _init_distributed(dist, device)

    scoring = scoring_of(config, student, template, pairs)
    tokenizer = load_tokenizer(student)
    planner = Planner(tokenizer, template, config.max_length, scoring)
    plans = planner.plan(pairs)
    setup = _setup(student, template, dtype, config.max_length, scoring)

    temp_dir = None
    cache_dir = config.cache_dir
    if cache_dir is None:
        if distributed:
            raise ConfigError("a distributed run needs a cache_dir shared by all ranks (the output's .parts folder)")
        temp_dir = tempfile.mkdtemp(prefix="srecycle-score-")
        cache_dir = Path(temp_dir)
    try:
        store = _open_store(cache_dir, setup, dist, distributed, config.flush_seconds)
        todo = _todo(planner.jobs, store.load())
        batches = make_batches(todo, batch_tokens_for(device, config.batch_tokens))[dist.rank :: dist.world]
        if batches:
            model = load_model(student, dtype=dtype, device=device)
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            _run(model, batches, store, device, pad_id, len(pairs), len(planner.jobs), dist)
        store.flush()
        if distributed:
            import torch.distributed as td

            td.barrier()
        frame = _assemble(plans, store.load()) if dist.main else None
    except BaseException:
        if distributed:  # no barrier here: the other ranks may be gone; torchrun tears the group down
            import torch.distributed as td

            td.destroy_process_group()
        raise
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    if distributed:
        import torch.distributed as td

        td.barrier()  # rank 0 has read every shard; the others may exit now
        td.destroy_process_group()
    return frame


def _open_store(cache_dir: Path, setup: dict, dist: DistInfo, distributed: bool, flush_seconds: float) -> Any:
    """This rank's checkpoint shards; rank 0 writes the setup before the other ranks read it."""
    from recycled_datasets.scoring.shards import ShardStore

    if distributed:
        import torch.distributed as td

        if dist.main:
            ShardStore(cache_dir, setup, rank=0)
        td.barrier()
    return ShardStore(cache_dir, setup, rank=dist.rank, flush_seconds=flush_seconds)


def _todo(jobs: dict[str, Any], done: dict[str, float]) -> list:
    """The planned jobs no checkpoint holds yet, in plan order."""
    todo = [job for key, job in jobs.items() if key not in done]
    if done:
        logger.info("resuming: %d of %d sequences already scored", len(jobs) - len(todo), len(jobs))
    return todo


def _run(
    model: Any, batches: list, store: Any, device: str, pad_id: int, n_pairs: int, n_jobs: int, dist: DistInfo
) -> None:
    import time

    from rich.progress import TextColumn

    from recycled_datasets.progress import progress
    from recycled_datasets.scoring.engine import score_batches

    n_tokens = sum(len(j.ids) for b in batches for j in b)
    jobs_here = sum(len(b) for b in batches)
    per_job = n_pairs / max(n_jobs, 1)
    with progress(TextColumn("{task.fields[rates]}")) as bar:
        task = bar.add_task(
            f"scoring (rank {dist.rank})" if dist.world > 1 else "scoring",
            total=jobs_here,
            rates="",
            visible=dist.main,
        )
        started, tokens = time.monotonic(), 0
        for batch, losses in score_batches(model, batches, device=device, pad_id=pad_id):
            store.add([j.key for j in batch], losses)
            tokens += sum(len(j.ids) for j in batch)
            elapsed = max(time.monotonic() - started, 1e-9)
            done_jobs = bar.tasks[0].completed + len(batch)
            bar.update(
                task,
                advance=len(batch),
                rates=f"{done_jobs * per_job / elapsed:.1f} pairs/s {tokens / elapsed:.0f} tok/s",
            )
    logger.info("scored %d sequences (%d tokens) on rank %d", jobs_here, n_tokens, dist.rank)


def _assemble(plans: list, losses: dict[str, float]) -> pl.DataFrame:
    import polars as pl

    columns: dict[str, list] = {name: [] for name in SCORE_COLUMNS}
    for plan in plans:
        missing = [
            name for name, key in zip(LOSS_NAMES, plan.jobs, strict=True) if key is not None and key not in losses
        ]
        if missing:
            raise StoreError(
                f"{', '.join(missing)} of a pair were never scored: the checkpoints are incomplete; rerun"
            )
        values = [losses[key] if key is not None else None for key in plan.jobs]
        bad = [
            name
            for name, v, key in zip(LOSS_NAMES, values, plan.jobs, strict=True)
            if key is not None and not _finite(v)
        ]
        ifd_reason, rifd_reason = plan.ifd_reason, plan.rifd_reason
        if bad:
            reason = f"non-finite loss in {', '.join(bad)} (numeric overflow: retry with --dtype float32)"
            if any(b.startswith("loss_response") for b in bad):
                ifd_reason = ifd_reason or reason
            if any(b.startswith("loss_instruction") for b in bad):
                rifd_reason = rifd_reason or reason
        rc, rd, ic, id_ = (v if _finite(v) else None for v in values)
        ifd = math.exp(rc - rd) if ifd_reason is None and rc is not None and rd is not None else None
        rifd = math.exp(ic - id_) if rifd_reason is None and ic is not None and id_ is not None else None
        for name, value in zip(LOSS_NAMES, (rc, rd, ic, id_), strict=True):
            columns[name].append(value)
        columns["ifd"].append(ifd)
        columns["rifd"].append(rifd)
        columns["n_response_tokens"].append(plan.n_response)
        columns["n_instruction_tokens"].append(plan.n_instruction)
        columns["n_prompt_tokens"].append(plan.n_prompt)
        columns["n_reverse_prompt_tokens"].append(plan.n_reverse_prompt)
        ok = ifd is not None and rifd is not None
        columns["status"].append(STATUS_OK if ok else STATUS_MISSING)
        reasons = [f"ifd: {ifd_reason}" if ifd is None else None, f"rifd: {rifd_reason}" if rifd is None else None]
        columns["reason"].append("; ".join(r for r in reasons if r) or None)
    schema = {name: pl.Float64 for name in ("ifd", "rifd", *LOSS_NAMES)}
    schema |= {
        n: pl.Int32
        for n in ("n_response_tokens", "n_instruction_tokens", "n_prompt_tokens", "n_reverse_prompt_tokens")
    }
    schema |= {"status": pl.Utf8, "reason": pl.Utf8}
    return pl.DataFrame(columns, schema=schema).select(SCORE_COLUMNS)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


__all__ = ["ScoreConfig", "score_pairs", "scoring_of", "dist_info", "STATUS_OK", "STATUS_MISSING"]
