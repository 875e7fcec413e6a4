"""Publishing to the Hub: one atomic commit per release, typed errors, and a token that never leaks.

A release is built locally first (the whole tree, card included), then sent as one ``create_commit``: the
Hub applies all of it or none of it, so a failure midway leaves the previous release as it was. Re-pushing
some configs reads the repo's current card and reports first, so the new card still describes every
config on the repo, and deletes only stale files inside the pushed configs' own folders. The commit names
the parent it was built on, so a concurrent push makes this one fail instead of silently mixing the two.

Every Hub call goes through :func:`hub_errors`, the one place where HTTP and network failures become
one-line :class:`HubError` messages. The token is passed to the client and nowhere else.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recycled_datasets.errors import ConfigError, HubError
from recycled_datasets.hub.tree import (
    PLOTS_DIR,
    REFLECTIONS_CONFIG,
    REPORT_FILE,
    ConfigEntry,
    ExistingRelease,
    config_prefixes,
    write_release_tree,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushResult:
    """What a push did: the commit (None when nothing changed), the tag, and the files it touched."""

    repo_id: str
    repo_type: str
    commit_oid: str | None
    commit_url: str | None
    tag: str | None
    configs: tuple[str, ...]
    added: tuple[str, ...]
    deleted: tuple[str, ...]


_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_tag(tag: str | None) -> str | None:
    """A version tag is a plain name (``v1.0``): no path parts, checked before anything is contacted."""
    if tag is not None and (not _TAG.match(tag) or ".." in tag):
        raise ConfigError(f"--tag must be a plain name such as v1.0 (letters, digits, '.', '_', '-'), got {tag!r}")
    return tag


def check_repo_id(repo_id: str) -> str:
    """``--repo`` is always ORG/NAME: a bare name would land in whichever account the token belongs to."""
    from recycled_datasets.repo_ids import check_repo_id as check

    return check(repo_id, what="--repo (ORG/NAME)")


def resolve_token(token: str | None) -> str:
    """The explicit token, else ``HF_TOKEN``, else the stored login; a push without one cannot succeed."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError("no Hub token: set HF_TOKEN or run `hf auth login` (a write token is needed to push)")
    return token


def _endpoint(endpoint: str | None) -> str | None:
    # Read at call time so HF_ENDPOINT set after huggingface_hub was imported still counts.
    return endpoint or os.environ.get("HF_ENDPOINT") or None


@contextmanager
def hub_errors(repo_id: str, *, action: str, token: str | None = None, endpoint: str | None = None) -> Iterator[None]:
    """Turn the client's HTTP and network failures into one-line HubErrors (the token is masked out)."""
    import httpx2
    from huggingface_hub import errors as hf

    prefix, where = f"{action} {repo_id}", endpoint or "the Hub"
    try:
        yield
    except hf.HfHubHTTPError as exc:
        status, detail = _status(exc), _server_message(exc)
        if isinstance(exc, hf.RevisionNotFoundError):
            reason = f"revision not found ({detail})"
        elif status == 401:
            reason = (
                "not authenticated (HTTP 401): the token is missing, invalid or expired; "
                "set HF_TOKEN or run `hf auth login`"
            )
        elif status == 403:
            reason = (
                "permission denied (HTTP 403): the token has no write access to this repo "
                "or organization; use a write token"
            )
        elif status == 404 or isinstance(exc, hf.RepositoryNotFoundError):
            reason = f"repo not found (HTTP {status}): check ORG/NAME and that the token can see it"
        elif status == 409:
            reason = f"name conflict (HTTP 409): {detail}"
        elif status == 412:
            reason = "the repo changed while this push was being prepared (HTTP 412); rerun it"
        else:
            reason = f"the Hub answered HTTP {status} ({detail}); nothing was changed, rerun it"
        raise HubError(_mask(f"{prefix}: {reason}", token), status=status) from exc
    except (httpx2.TransportError, hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError) as exc:
        message = f"{prefix}: cannot reach {where} ({type(exc).__name__}); check the network or HF_ENDPOINT"
        raise HubError(_mask(message, token)) from exc


def _status(exc) -> int | None:
    return exc.response.status_code if exc.response is not None else None


def _server_message(exc: Exception) -> str:
    message = getattr(exc, "server_message", None) or str(exc).splitlines()[0]
    return " ".join(str(message).split())[:200]


def _mask(message: str, token: str | None) -> str:
    return message.replace(token, "***") if token else message


def push_release(
    *,
    repo_id: str,
    workdir: Path,
    students: Sequence[str] | None = None,
    tag: str | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Publish the workdir's student configs (all, or ``students``) and ``reflections`` in one commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    from recycled_datasets.hub.tree import read_workdir

    check_repo_id(repo_id)
    check_tag(tag)
    read_workdir(Path(workdir), students)  # fail on a bad workdir before any network call
    token = resolve_token(token)
    api = HfApi(endpoint=_endpoint(endpoint), token=token, library_name="recycled-datasets")
    repo_type = "dataset"

    with tempfile.TemporaryDirectory(prefix="srecycle-push-") as tmp:
        with hub_errors(repo_id, action="push to", token=token, endpoint=api.endpoint):
            info = ensure_repo(api, repo_id, repo_type, private=private)
            remote_files = frozenset(s.rfilename for s in info.siblings or ())
            _check_tag_free(api, repo_id, repo_type, tag)
            existing = _existing_release(api, repo_id, info.sha, remote_files, Path(tmp) / "remote")
        tree = write_release_tree(
            Path(workdir), Path(tmp) / "tree", students=students, repo_id=repo_id, existing=existing
        )
        owned = tree.owned_prefixes()
        stale = sorted(f for f in remote_files if f.startswith(owned) and f not in tree.files)
        adds = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(tree.root / f)) for f in tree.files]
        operations: list[Any] = [*adds, *(CommitOperationDelete(path_in_repo=f) for f in stale)]
        message = f"Release {', '.join(tree.pushed)}" + (f" ({tag})" if tag else "")
        with hub_errors(repo_id, action="push to", token=token, endpoint=api.endpoint):
            commit = api.create_commit(
                repo_id,
                repo_type=repo_type,
                operations=operations,
                commit_message=message,
                commit_description=f"Configs in this commit: {', '.join(tree.pushed)}. Built by srecycle.",
                parent_commit=info.sha,
            )
            if tag is not None:
                api.create_tag(repo_id, tag=tag, revision=commit.oid, repo_type=repo_type, tag_message=message)
    logger.info("pushed %s to %s at %s", ", ".join(tree.pushed), repo_id, commit.oid)
    return PushResult(repo_id, repo_type, commit.oid, commit.commit_url, tag, tree.configs, tree.files, tuple(stale))


def ensure_repo(api, repo_id: str, repo_type: str, *, private: bool):
    """The repo's current head, creating the repo first if it does not exist (an existing one keeps its visibility).

    Looked up before creating, rather than ``create_repo(exist_ok=True)``: with a token that may not create repos
    in the namespace, that path answers 403 even when the repo exists and the token can write to it.
    """
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return api.repo_info(repo_id, repo_type=repo_type, revision="main")
    except RepositoryNotFoundError:
        logger.info("creating %s repo %s (%s)", repo_type, repo_id, "private" if private else "public")
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        return api.repo_info(repo_id, repo_type=repo_type, revision="main")


def _check_tag_free(api, repo_id: str, repo_type: str, tag: str | None, *, action: str = "push to") -> None:
    """Checked before the commit: a taken tag must not leave a new, untagged release behind."""
    if tag is not None and any(t.name == tag for t in api.list_repo_refs(repo_id, repo_type=repo_type).tags):
        raise HubError(f"{action} {repo_id}: name conflict: tag '{tag}' already exists; choose a new version tag")


def _existing_release(api, repo_id: str, sha: str, files: frozenset[str], tmp: Path) -> ExistingRelease:
    """The configs already on the repo, with their dataset_info, reports and plots, read from ``sha``."""
    from huggingface_hub import DatasetCard

    def download(path: str) -> str:
        return api.hf_hub_download(repo_id, path, repo_type="dataset", revision=sha, local_dir=tmp)

    def read_report(path: str) -> dict[str, Any]:
        return json.loads(Path(download(path)).read_text(encoding="utf-8"))

    def plots(name: str) -> tuple[str, ...]:
        return tuple(sorted(f for f in files if f.startswith(f"{PLOTS_DIR}/{name}/") and f.endswith(".png")))

    if "README.md" not in files:
        return ExistingRelease(files=files)
    data = DatasetCard.load(download("README.md")).data.to_dict()
    infos = {i.get("config_name", "default"): i for i in data.get("dataset_info") or () if isinstance(i, dict)}
    default_first = sorted(data.get("configs") or (), key=lambda c: not c.get("default", False))
    entries = []
    for config in default_first:
        name = config.get("config_name")
        if not name:
            continue
        info = infos.get(name, {"config_name": name})
        rows = sum(int(s.get("num_examples", 0)) for s in info.get("splits") or ())
        has_report = name != REFLECTIONS_CONFIG and f"{name}/{REPORT_FILE}" in files
        report = read_report(f"{name}/{REPORT_FILE}") if has_report else None
        entries.append(ConfigEntry(name=name, rows=rows, info=info, report=report, plots=plots(name)))
    # A student config that kept no row is not in the YAML (it is not loadable) but still has its report on the
    # repo: read it back so that its section stays in the card when another config is pushed.
    listed = {e.name for e in entries}
    for path in sorted(files):
        name, _, rest = path.partition("/")
        if rest != REPORT_FILE or name in listed or name == REFLECTIONS_CONFIG:
            continue
        report = read_report(path)
        if report.get("rows_kept") != 0:
            continue  # a report left outside the card by hand: not a config of this release
        entries.append(ConfigEntry(name=name, rows=0, info={"config_name": name}, report=report, plots=plots(name)))
    logger.info("repo %s already has configs: %s", repo_id, ", ".join(e.name for e in entries) or "none")
    return ExistingRelease(configs=tuple(entries), files=files)


__all__ = [
    "PushResult",
    "check_repo_id",
    "check_tag",
    "config_prefixes",
    "hub_errors",
    "push_release",
    "resolve_token",
]
