"""``datasets`` builders that make sRecycled data: ``download_and_prepare()`` runs the teacher, the student's
scores and the selection into a workdir (reusing what it holds) and yields the release's tables.

Installed as ``recycled_datasets.builders``::

    from recycled_datasets.builders import SRecycledSample

    builder = SRecycledSample(config_name="smollm2-135m", teacher="local", workdir="runs/sample", limit=3)
    builder.download_and_prepare()
    subset = builder.as_dataset("train")

One builder per dataset (:class:`SRecycledAlpaca`, :class:`SRecycledWizardLM`, :class:`SRecycledSample`)
and the generic :class:`SRecycled` for any source; the options are the fields of :class:`SRecycledConfig`.
"""

from .config import SRecycledConfig
from .srecycled import SRecycled
from .srecycled_alpaca import SRecycledAlpaca
from .srecycled_sample import SRecycledSample
from .srecycled_wizardlm import SRecycledWizardLM
from .stages import run_reflections, run_scores, run_student

__all__ = [
    "SRecycled",
    "SRecycledAlpaca",
    "SRecycledConfig",
    "SRecycledSample",
    "SRecycledWizardLM",
    "run_reflections",
    "run_scores",
    "run_student",
]
