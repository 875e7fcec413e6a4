"""Cards from Jinja templates: the YAML metadata is built as data here, the prose lives in ``model_cards/``.

Metadata is dumped with PyYAML rather than written in the template, so a value containing a colon or a quote
can never break the front matter that ``datasets`` and the Hub parse. The templates sit in the top-level
``model_cards/`` folder of the repository; an installed package carries the same files in
``recycled_datasets/hub/model_cards`` (a link to that folder, packaged as package data).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recycled_datasets.errors import ConfigError

_TEMPLATE_FOLDER = "model_cards"


def template_dir() -> Path:
    """Where the card templates are: the checkout's ``model_cards/`` first, then the installed copy."""
    here = Path(__file__).resolve().parent
    candidates = (here.parents[1] / _TEMPLATE_FOLDER, here / _TEMPLATE_FOLDER)
    for candidate in candidates:
        if (candidate / "dataset_card.md.j2").is_file():
            return candidate
    raise ConfigError(
        "card templates not found (looked in " + ", ".join(str(c) for c in candidates) + "); reinstall the package"
    )


def yaml_block(metadata: Mapping[str, Any]) -> str:
    """Front-matter YAML in the given key order, wide enough that long values stay on one line."""
    import yaml

    return yaml.safe_dump(dict(metadata), sort_keys=False, allow_unicode=True, width=10_000).rstrip("\n")


def render_card(template: str, metadata: Mapping[str, Any], **context: Any) -> str:
    """Render ``template`` (a file name in :func:`template_dir`) with ``metadata`` as its front matter."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        autoescape=False,  # Markdown, not HTML
        undefined=jinja2.StrictUndefined,  # a missing value is a bug, not an empty cell
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    text = env.get_template(template).render(card_data=yaml_block(metadata), **context)
    return text.rstrip("\n") + "\n"
