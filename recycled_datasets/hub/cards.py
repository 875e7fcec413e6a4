"""Cards through huggingface_hub: metadata in its card-data types, prose in the Jinja templates of ``model_cards/``.

The front matter is never written by hand: a ``DatasetCardData`` / ``ModelCardData`` (with ``EvalResult`` for
``model-index``) dumps it, so a value containing a colon or a quote cannot break the YAML that ``datasets`` and
the Hub parse, and ``DatasetCard.load`` / ``ModelCard.load`` read back exactly what was meant.

The templates keep their home in the top-level ``model_cards/`` folder and are installed as the data package
``recycled_datasets.model_cards`` (see pyproject.toml), so a wheel carries them without any link.
"""

from __future__ import annotations

import html
import json
import re
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


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#|~])")
_PLAIN = re.compile(r"^[A-Za-z0-9_ .:/@+=,%-]*$")  # names as they usually are: shown as they are


def text(value: object) -> str:
    """Text from outside the project (a model name a server reported, a path, a judge's name) as inert Markdown:
    one line, HTML escaped, every character that could open code, emphasis, a link or a table cell escaped."""
    one_line = " ".join(str(value).split())
    if _PLAIN.match(one_line):
        return one_line
    return _MARKDOWN.sub(r"\\\1", html.escape(one_line, quote=False))


def code(value: object) -> str:
    """:func:`text` shown as code: in backticks when it is a plain name, else escaped inside ``<code>`` (the text
    itself may hold backticks, which no code span can then enclose safely)."""
    one_line = " ".join(str(value).split())
    return f"`{one_line}`" if _PLAIN.match(one_line) else f"<code>{text(one_line)}</code>"


def python_str(value: object) -> str:
    """A Python string literal of ``value`` on one line, for the snippets in code blocks."""
    return json.dumps(str(value)).replace("<", "\\u003c").replace(">", "\\u003e").replace("`", "\\u0060")


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
    from recycled_datasets.repo_ids import is_repo_id

    # Everything that did not come from the project goes through these filters (see the templates).
    env.filters.update(text=text, code=code, python_str=python_str)
    env.tests["repo_id"] = is_repo_id
    source = template_dir().joinpath(template).read_text(encoding="utf-8")
    variables = {**card_data.to_dict(), **context}
    rendered = env.from_string(source).render(card_data=card_data.to_yaml(), **variables)
    return card_type(rendered.rstrip("\n") + "\n")
