"""The workdir contract: its layout, one schema per table, the config-name rule, the one atomic writer and
the release views. Every stage, the release tree, the ``datasets`` builders and fine-tuning read and write
workdir files through this package (docs/method.md, section 8).
"""

from recycled_datasets.workdir.layout import (
    REFLECTIONS_CONFIG,
    RESERVED_NAMES,
    SCORES_CONFIG,
    StudentFiles,
    Workdir,
    check_config_name,
)

__all__ = ["REFLECTIONS_CONFIG", "RESERVED_NAMES", "SCORES_CONFIG", "StudentFiles", "Workdir", "check_config_name"]
