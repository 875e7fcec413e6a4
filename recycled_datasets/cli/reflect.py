"""Placeholder until its issue lands; the owner replaces this whole file."""

from recycled_datasets.errors import ConfigError


def reflect() -> None:
    """Not built yet."""
    raise ConfigError("reflect is not built yet")

