"""Placeholder until its issue lands; the owner replaces this whole file."""

from recycled_datasets.errors import ConfigError


def select() -> None:
    """Not built yet."""
    raise ConfigError("select is not built yet")


def build() -> None:
    """Not built yet."""
    raise ConfigError("build is not built yet")


def import_reflections() -> None:
    """Not built yet."""
    raise ConfigError("import-reflections is not built yet")

