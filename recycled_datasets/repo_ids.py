"""Hub repo ids, checked by huggingface_hub's own validator (never a hand-written pattern)."""

from __future__ import annotations

from recycled_datasets.errors import ConfigError


def is_repo_id(text: str, *, namespaced: bool = True) -> bool:
    """Whether ``text`` is a valid Hub repo id; ``namespaced`` also asks for the ``owner/name`` form."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if namespaced and text.count("/") != 1:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def check_repo_id(text: str, *, what: str = "repo id", namespaced: bool = True) -> str:
    """``text`` if it is a valid Hub repo id, else a :class:`ConfigError` that says why and what to pass."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if namespaced and text.count("/") != 1:
        raise ConfigError(f"{what} {text!r} is not a Hub repo id: use the form owner/name (e.g. my-org/srecycled)")
    try:
        validate_repo_id(text)
    except HFValidationError as err:
        raise ConfigError(f"{what} {text!r} is not a Hub repo id: {err}") from None
    return text
