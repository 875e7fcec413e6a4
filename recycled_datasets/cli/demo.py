"""Placeholder until its issue lands; the owner replaces this whole file."""

from recycled_datasets.errors import ConfigError


def demo() -> None:
    """Not built yet."""
    raise ConfigError("demo is not built yet")

