"""The score stage: the student's losses, IFD and r-IFD for every variant of every row of the build.

Done-ness is a digest of the inputs kept in ``scores.json`` (the student, template, scoring convention, dtype,
max length and every pair's text), so a changed reflection or setting rescores, and one scores table never
mixes two conventions. Finished sequences are checkpointed in
``scores.parquet.parts``, so a killed run resumes; a different setup under the same key starts it over.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from recycled_datasets.models import StudentSpec
from recycled_datasets.records import SCORE_COLUMNS, Pair
from recycled_datasets.scoring import ScoreConfig
from recycled_datasets.stages.base import Stage, StageStats
from recycled_datasets.stages.reflect import reflected_rows
from recycled_datasets.workdir import Workdir
from recycled_datasets.workdir.pairs import pairs_digest, pairs_of
from recycled_datasets.workdir.tables import read_scores_meta, write_scores

logger = logging.getLogger(__name__)


def student_record(spec: StudentSpec, settings: ScoreConfig, pairs: Sequence[Pair] = ()) -> dict[str, str]:
    """The student as report.json and scores.json name it (template, scoring convention and dtype as used)."""
    from recycled_datasets.scoring import scoring_of

    template = settings.template or spec.template
    return {
        "key": spec.key,
        "model": spec.model,
        "revision": spec.revision,
        "template": template,
        "scoring": scoring_of(settings, spec, template, pairs),
        "dtype": settings.dtype or spec.dtype,
        "base_model": spec.hub_id,
    }


@dataclass
class ScoreStage(Stage):
    """Scores of student ``spec`` for the rows ``ids`` (see the module docstring).

    Attributes:
        workdir: the workdir (its reflections must hold ``ids``).
        ids: this build's row ids, in order.
        spec: the student.
        settings: the scoring settings (template, dtype, batch, max length, device).

    A distributed run (``torchrun ... srecycle build`` or ``score``) gives each rank its share of the chunks: the
    scorer reads its rank and world size from torchrun's environment; rank 0 merges and writes.
    """

    name = "score"

    workdir: Workdir
    ids: list[str]
    spec: StudentSpec
    settings: ScoreConfig = field(default_factory=ScoreConfig)

    @functools.cached_property
    def _inputs(self) -> tuple[list[str], list[str], list[Pair], dict[str, Any]]:
        """The pairs to score and scores.json's record of them (read once: done() and the run share them)."""
        reflections, _ = reflected_rows(self.workdir, self.ids)
        ids, variants, pairs = pairs_of(reflections)
        meta = {
            "student": student_record(self.spec, self.settings, pairs),
            "max_length": self.settings.max_length,
            "pairs": len(pairs),
            "pairs_sha256": pairs_digest(pairs),
        }
        return ids, variants, pairs, meta

    def done(self) -> bool:
        return read_scores_meta(self.workdir, self.spec.key) == self._inputs[3]

    def reuse(self) -> StageStats:
        pairs = self._inputs[3]["pairs"]
        logger.info("%s: reusing the scores of %d pairs", self.spec.key, pairs)
        return StageStats(self.name, rows=pairs, reused=pairs)

    def _run(self) -> StageStats:
        import polars as pl

        from recycled_datasets.scoring import score_pairs

        ids, variants, pairs, meta = self._inputs
        key = self.spec.key
        if read_scores_meta(self.workdir, key) is not None:
            logger.info("%s: scores.json differs from this build (student, settings or reflections): rescoring", key)
        parts = self.workdir.student(key).parts
        record = meta["student"]
        config = replace(
            self.settings,
            template=record["template"],
            dtype=record["dtype"],
            scoring=record["scoring"],
            cache_dir=parts,
        )
        scored = score_pairs(pairs, self.spec, config, discard_other=True)  # the stage owns its parts folder
        if scored is None:  # another rank of a distributed run: rank 0 writes the scores
            return StageStats(self.name, rows=len(pairs), made=len(pairs))
        frame = pl.concat(
            [pl.DataFrame({"id": ids, "variant": variants}, schema={"id": pl.String, "variant": pl.String}), scored],
            how="horizontal",
        ).select("id", "variant", *SCORE_COLUMNS)
        write_scores(self.workdir, key, frame, meta)
        shutil.rmtree(parts, ignore_errors=True)  # the checkpoints are in scores.parquet now
        return StageStats(self.name, rows=len(pairs), made=len(pairs))
