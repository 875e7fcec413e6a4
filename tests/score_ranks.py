"""Run by tests/test_scoring_ranks.py, alone or under torchrun: score the pairs of a JSON file with a student.

    python tests/score_ranks.py PAIRS.json STUDENT_DIR CACHE_DIR OUT.parquet CHUNK_PAIRS [CRASH_RANK]

Rank 0 writes the scores to OUT.parquet; every rank writes how many pairs it planned to CACHE_DIR/../planned-RANK.
With CRASH_RANK, that rank dies (``os._exit``, no clean-up, as a killed process) right after committing its
first chunk.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    pairs_file, student_dir, cache_dir, out, chunk_pairs = sys.argv[1:6]
    crash_rank = int(sys.argv[6]) if len(sys.argv) > 6 else None
    from recycled_datasets.models import resolve_student
    from recycled_datasets.records import Pair
    from recycled_datasets.scoring import ScoreConfig, dist_info, score_pairs, shards
    from recycled_datasets.scoring import plan as plan_module

    rank = dist_info().rank
    planned = Path(cache_dir).parent / f"planned-{rank}"
    real_plan = plan_module.Planner.plan

    def counting_plan(self, part):  # noqa: ANN001, ANN202
        with planned.open("a") as f:
            f.write(f"{len(part)}\n")
        return real_plan(self, part)

    plan_module.Planner.plan = counting_plan
    if crash_rank == rank:
        real_save = shards.ChunkStore.save_result

        def save_then_die(self, *args):  # noqa: ANN001, ANN202
            real_save(self, *args)
            os._exit(3)

        shards.ChunkStore.save_result = save_then_die

    pairs = [Pair(**p) for p in json.loads(Path(pairs_file).read_text())]
    student = resolve_student(student_dir, template="alpaca", dtype="float32")
    config = ScoreConfig(max_length=128, batch_tokens=256, chunk_pairs=int(chunk_pairs), cache_dir=Path(cache_dir))
    frame = score_pairs(pairs, student, config)
    if frame is not None:
        frame.write_parquet(out)


if __name__ == "__main__":
    main()
