"""Placeholder until its issue lands; the owner replaces this whole file."""

from recycled_datasets.errors import ConfigError


def finetune() -> None:
    """Not built yet."""
    raise ConfigError("finetune is not built yet")

