"""Placeholder until its issue lands; the owner replaces this whole file."""

from recycled_datasets.errors import ConfigError


def push() -> None:
    """Not built yet."""
    raise ConfigError("push is not built yet")


def push_model() -> None:
    """Not built yet."""
    raise ConfigError("push-model is not built yet")

