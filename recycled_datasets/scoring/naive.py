"""The baseline the scorer is measured against: the reference code's way, one sequence at a time.

One pair, four forward passes, batch 1, full-vocabulary logits, fp32, the loss from the model's own
``labels=`` path. It shares only the token layout with the scorer (same jobs), so it checks the fast path's
arithmetic, not its own. Kept in the package for ``scripts/bench_score.py`` and the exactness tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recycled_datasets.scoring.plan import Job


def naive_losses(model: Any, jobs: Sequence[Job], *, device: str = "cpu") -> dict[str, float]:
    """Mean target NLL of each job, computed one sequence at a time with full logits."""
    import torch

    out: dict[str, float] = {}
    with torch.inference_mode():
        for job in jobs:
            ids = torch.tensor([job.ids], dtype=torch.long, device=device)
            labels = torch.full_like(ids, -100)
            labels[0, job.start : job.start + job.n] = ids[0, job.start : job.start + job.n]
            out[job.key] = float(model(input_ids=ids, labels=labels).loss)
    return out
