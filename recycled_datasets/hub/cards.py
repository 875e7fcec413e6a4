"""Cards through huggingface_hub: metadata in its card-data types, prose in the Jinja templates of ``model_cards/``.

The front matter is never written by hand: a ``DatasetCardData`` / ``ModelCardData`` (with ``EvalResult`` for
``model-index``) dumps it, so a value containing a colon or a quote cannot break the YAML that ``datasets`` and
the Hub parse, and ``DatasetCard.load`` / ``ModelCard.load`` read back exactly what was meant.

The templates keep their home in the top-level ``model_cards/`` folder and are installed as the data package
``recycled_datasets.model_cards`` (see pyproject.toml), so a wheel carries them without any link.
"""

from __future__ import annotations

from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from recycled_datasets.errors import ConfigError

if TYPE_CHECKING:
    from huggingface_hub import CardData, RepoCard

    Card = TypeVar("Card", bound=RepoCard)

DATASET_TEMPLATE = "dataset_card.md.j2"
MODEL_TEMPLATE = "model_card.md.j2"
_FOLDER = "model_cards"
_PACKAGE = "recycled_datasets.model_cards"


def template_dir() -> Traversable:
    """The folder of the card templates.

    A source checkout (run with ``PYTHONPATH`` or installed editable) reads its own ``model_cards/``, so edits to a
    template show at once and a second checkout never renders with the first one's files; an installed wheel reads
    the package ``recycled_datasets.model_cards`` through importlib.resources.
    """
    from importlib.resources import files

    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / _FOLDER / DATASET_TEMPLATE).is_file():
        return root / _FOLDER
    try:
        folder = files(_PACKAGE)
    except ModuleNotFoundError as err:
        raise ConfigError(
            f"card templates not found: no package {_PACKAGE} and no {root / _FOLDER}; reinstall recycled-datasets"
        ) from err
    if not folder.joinpath(DATASET_TEMPLATE).is_file():
        raise ConfigError(f"card templates missing from the installed {_PACKAGE}; reinstall recycled-datasets")
    return folder


def render_card(card_type: type[Card], card_data: CardData, template: str, **context: Any) -> Card:
    """``card_type.from_template(card_data, template_path=...)`` with the project's template and a strict Jinja.

    As in ``RepoCard.from_template``, the template sees ``card_data`` (the YAML block) and every metadata field, and
    ``context`` wins over a field of the same name. The environment differs on purpose: an undefined name raises
    instead of rendering as an empty cell, and block tags take their own line with them (``trim_blocks``), which the
    Markdown tables of the templates rely on.
    """
    import jinja2

    env = jinja2.Environment(
        autoescape=False,  # Markdown, not HTML
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    source = template_dir().joinpath(template).read_text(encoding="utf-8")
    variables = {**card_data.to_dict(), **context}
    text = env.from_string(source).render(card_data=card_data.to_yaml(), **variables)
    return card_type(text.rstrip("\n") + "\n")
