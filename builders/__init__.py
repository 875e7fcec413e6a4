"""``datasets`` builders that read an sRecycled workdir (see ``srecycled.py``)."""

from builders.srecycled import (
    REFLECTIONS,
    SCORES,
    SRecycled,
    SRecycledAlpaca,
    SRecycledConfig,
    SRecycledGeneric,
    SRecycledWizardLM,
)

__all__ = [
    "REFLECTIONS",
    "SCORES",
    "SRecycled",
    "SRecycledAlpaca",
    "SRecycledConfig",
    "SRecycledGeneric",
    "SRecycledWizardLM",
]
