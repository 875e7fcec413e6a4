"""The student scorer: IFD and r-IFD for many pairs, exact and fast (docs/method.md, section 3).

``score_pairs`` works through the pairs in fixed chunks: it plans the four sequences of each pair of a chunk
(deduplicated), scores the ones no checkpoint holds in length-sorted batches, and commits the chunk's rows, so
memory follows one chunk rather than the dataset. Under ``torchrun``/``accelerate launch`` each rank plans and
scores only its share of the chunks, balanced by their text length; a chunk's batches do not depend on the
number of ranks, so when rank 0 gathers the chunks the result equals a one-process run.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
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
        chunk_pairs: pairs planned, scored and committed together; ``None``: a 64th of the pairs, at least 64
            and at most 2048. The scorer holds one chunk's token ids at a time, a resumed run skips finished
            chunks without tokenizing them, and chunks are the unit ranks share. A sequence repeated in two
            chunks is scored in each.
    """

    template: str | None = None
    max_length: int = 2048
    dtype: str | None = None
    batch_tokens: int | None = None
    cache_dir: Path | None = None
    flush_seconds: float = 30.0
    device: str | None = None
    scoring: str | None = None
    chunk_pairs: int | None = None

    def __post_init__(self) -> None:
        if self.template is not None:
            validate_template(self.template)
        if self.scoring is not None and self.scoring not in SCORINGS:
            raise ConfigError(f"--scoring must be one of {', '.join(SCORINGS)}, not {self.scoring!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.max_length < 8:
            raise ConfigError(f"--max-length must be at least 8, not {self.max_length}")
        if self.chunk_pairs is not None and self.chunk_pairs < 1:
            raise ConfigError(f"chunk_pairs must be at least 1, not {self.chunk_pairs}")
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


def score_pairs(
    pairs: Sequence[Pair], student: StudentSpec, config: ScoreConfig | None = None, *, discard_other: bool = False
) -> pl.DataFrame | None:
    """Score every pair; one row per pair, in order, with the columns of ``records.SCORE_COLUMNS``.

    Returns ``None`` on ranks other than 0 of a distributed run (rank 0 returns the merged frame).
    A score that cannot be computed is null, with the reason in ``reason`` and ``status`` = "missing".
    Checkpoints of another setup in ``config.cache_dir`` are an error, or with ``discard_other`` removed.
    """
    from recycled_datasets.scoring.shards import ChunkStore, chunk_digest

    config = config or ScoreConfig()
    template = config.template or student.template
    dtype = config.dtype or student.dtype
    dist = dist_info()
    device = _device(config, dist)
    distributed = _init_distributed(dist, device)
    scoring = scoring_of(config, student, template, pairs)
    setup = _setup(student, template, dtype, config.max_length, scoring)
    size = config.chunk_pairs or chunk_pairs_for(len(pairs))
    chunks = [(lo, min(lo + size, len(pairs))) for lo in range(0, len(pairs), size)]

    temp_dir = None
    cache_dir = config.cache_dir
    if cache_dir is None:
        if distributed:
            raise ConfigError("a distributed run needs a cache_dir shared by all ranks (the output's .parts folder)")
        temp_dir = tempfile.mkdtemp(prefix="srecycle-score-")
        cache_dir = Path(temp_dir)
    try:
        if distributed:  # rank 0 writes the setup before the other ranks read it
            import torch.distributed as td

            if dist.main:
                ChunkStore(cache_dir, setup, discard_other=discard_other)
            td.barrier()
        store = ChunkStore(cache_dir, setup, write_setup=dist.main, discard_other=discard_other and dist.main)
        mine = shares([_weight(pairs[lo:hi]) for lo, hi in chunks], dist.world)[dist.rank]
        scorer = _ChunkScorer(student, config, template, dtype, scoring, device, dist, store)
        scorer.run([(i, *chunks[i]) for i in mine], pairs)
        if distributed:
            import torch.distributed as td

            td.barrier()
        frame = None
        if dist.main:
            frame = _collect(store, [(i, chunk_digest(pairs[lo:hi])) for i, (lo, hi) in enumerate(chunks)])
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

        td.barrier()  # rank 0 has read every chunk; the others may exit now
        td.destroy_process_group()
    return frame


def chunk_pairs_for(n_pairs: int) -> int:
    """Pairs per chunk: a 64th of them, within [64, 2048] (it depends on the pairs only, never on the ranks)."""
    return max(64, min(2048, -(-n_pairs // 64)))


def _weight(pairs: Sequence[Pair]) -> int:
    """A chunk's expected work: the characters its four passes per pair read (tokens are about a fixed share)."""
    return sum(
        2 * (len(p.instruction) + len(p.input) + len(p.output)) + sum(len(t.content) for t in p.context) for p in pairs
    )


def shares(weights: Sequence[int], world: int) -> list[list[int]]:
    """Chunk indices per rank, balanced by weight: heaviest chunk first to the least loaded rank (ties: lowest).

    Deterministic, so every rank computes the same shares without talking to the others; each rank's chunks
    are returned in index order.
    """
    loads = [0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for index in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        loads[rank] += weights[index]
        out[rank].append(index)
    return [sorted(s) for s in out]


def _collect(store: Any, chunks: list[tuple[int, str]]) -> pl.DataFrame:
    """Every chunk's rows, in order (rank 0, after every rank has finished its share)."""
    import polars as pl

    frames = []
    for index, digest in chunks:
        frame = store.load_result(index, digest)
        if frame is None:
            raise StoreError(f"chunk {index} of the pairs was never scored: the checkpoints are incomplete; rerun")
        frames.append(frame)
    return pl.concat(frames) if frames else _assemble([], {})


class _ChunkScorer:
    """Plans, scores and commits this rank's chunks one at a time: memory follows a chunk, not the dataset."""

    def __init__(
        self,
        student: StudentSpec,
        config: ScoreConfig,
        template: str,
        dtype: str,
        scoring: str,
        device: str,
        dist: DistInfo,
        store: Any,
    ):
        self.student = student
        self.config = config
        self.template = template
        self.dtype = dtype
        self.scoring = scoring
        self.device = device
        self.dist = dist
        self.store = store
        self.tokenizer = load_tokenizer(student)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.model: Any = None  # loaded at the first chunk with work: a fully resumed run never loads it

    def run(self, chunks: list[tuple[int, int, int]], pairs: Sequence[Pair]) -> None:
        import time

        from rich.progress import TextColumn

        from recycled_datasets.progress import progress
        from recycled_datasets.scoring.shards import chunk_digest

        total = sum(hi - lo for _, lo, hi in chunks)
        resumed = 0
        with progress(TextColumn("{task.fields[rates]}")) as bar:
            label = f"scoring (rank {self.dist.rank})" if self.dist.world > 1 else "scoring"
            task = bar.add_task(label, total=total, rates="", visible=self.dist.main)
            started, tokens, done_pairs = time.monotonic(), 0, 0
            for index, lo, hi in chunks:
                part = pairs[lo:hi]
                digest = chunk_digest(part)
                if self.store.load_result(index, digest) is not None:
                    self.store.drop_sequences(index)
                    resumed += 1
                    bar.update(task, advance=len(part))
                    continue
                for fraction, n_tokens in self._score_chunk(index, digest, part):
                    tokens += n_tokens
                    done_pairs += fraction
                    elapsed = max(time.monotonic() - started, 1e-9)
                    bar.update(
                        task,
                        advance=fraction,
                        rates=f"{done_pairs / elapsed:.1f} pairs/s {tokens / elapsed:.0f} tok/s",
                    )
        if resumed:
            logger.info("resuming: %d of %d chunks of rank %d already scored", resumed, len(chunks), self.dist.rank)
        logger.info("scored %d pairs in %d chunks on rank %d", total, len(chunks), self.dist.rank)

    def _score_chunk(self, index: int, digest: str, part: Sequence[Pair]) -> Iterator[tuple[float, int]]:
        """Score one chunk and commit its rows; yields (pairs' worth of progress, tokens) per batch."""
        from recycled_datasets.scoring.engine import batch_tokens_for, make_batches, score_batches
        from recycled_datasets.scoring.plan import Planner

        planner = Planner(self.tokenizer, self.template, self.config.max_length, self.scoring)
        plans = planner.plan(part)
        losses = self.store.load_sequences(index)
        todo = [job for key, job in planner.jobs.items() if key not in losses]
        batches = make_batches(todo, batch_tokens_for(self.device, self.config.batch_tokens))
        per_job = len(part) / max(len(todo), 1)
        if batches:
            if self.model is None:
                self.model = load_model(self.student, dtype=self.dtype, device=self.device)
            writer = self.store.sequences(index, self.config.flush_seconds)
            for batch, values in score_batches(self.model, batches, device=self.device, pad_id=self.pad_id):
                keys = [j.key for j in batch]
                writer.add(keys, values)
                losses.update(zip(keys, values, strict=True))
                yield len(batch) * per_job, sum(len(j.ids) for j in batch)
            writer.flush()
        else:
            yield float(len(part)), 0
        self.store.save_result(index, digest, _assemble(plans, losses))


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
