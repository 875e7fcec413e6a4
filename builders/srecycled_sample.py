"""sRecycled sample: the project's own 30-row sample, small enough to build on a CPU in minutes."""

from __future__ import annotations

from .srecycled import SRecycled


class SRecycledSample(SRecycled):
    """The bundled ``recycled_datasets/data/sample.jsonl``: 30 rows written for this project (with and without
    input, short and long, a few deliberately weak), to try the method with the embedded model."""

    SOURCE = "sample"
    HOMEPAGE = "https://arxiv.org/abs/2402.10110"
    DESCRIPTION = (
        "sRecycled sample: the project's 30 sample rows rewritten by a teacher into four variants, and per "
        "student the variant it learns most from, selected by IFD and reverse IFD. For trying the method, not "
        "for training."
    )
