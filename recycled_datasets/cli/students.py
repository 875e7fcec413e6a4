"""Placeholder until its issue lands; the owner replaces this whole file."""

from recycled_datasets.errors import ConfigError


def students() -> None:
    """Not built yet."""
    raise ConfigError("students is not built yet")

