"""A small Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1 only.

It speaks the subset of the Hub API that ``huggingface_hub`` (HfApi, hf_hub_download, HfFileSystem) and
``datasets.load_dataset`` use to create repos, commit, tag, list and download, so the real clients can be
pointed at it through ``HF_ENDPOINT`` and the publishing code runs unchanged. Repos live in memory with a
full commit history, so branches, tags and commit shas all resolve as revisions.

What it does not do: LFS/Xet storage (the preupload answer is always "regular", which the clients accept
for any file), pull requests, and access control beyond a token table (``tokens``: token -> "write"/"read").
Failures can be injected: ``fail_next_commits`` makes the commit endpoint read the whole upload and then
answer 500 without applying anything, as a Hub whose commit broke midway would.

The server answers at most ``max_requests`` requests (then 503) and every socket read has a timeout, so a
client bug cannot hang a test forever.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha(content: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    files: dict[str, bytes]
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch, tag (plain or refs/...) or full commit sha, as the Hub resolves revisions."""
        for prefix, table in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if revision.startswith(prefix):
                sha = table.get(revision[len(prefix) :])
                return self.commits.get(sha) if sha else None
        sha = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(sha)


class HubState:
    """Everything the fake Hub knows. Tests read it directly to check what was (not) committed."""

    def __init__(self, tokens: dict[str, str] | None = None, page_size: int = 3, max_requests: int = 5000):
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.tokens = dict(tokens or {})
        self.page_size = page_size
        self.max_requests = max_requests
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, no headers kept
        self.fail_next_commits = 0
        self._counter = 0

    def new_sha(self, seed: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{self._counter}:{seed}".encode()).hexdigest()

    def files_at(self, repo_type: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commit = self.repos[(repo_type, repo_id)].resolve(revision)
        if commit is None:
            raise KeyError(revision)
        return dict(commit.files)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30

    # ---- plumbing ---------------------------------------------------------------------------------------
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Silent: tests read ``HubState.requests`` instead of a log."""

    @property
    def state(self) -> HubState:
        return self.server.state

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False):
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        extra = {"X-Error-Message": message, **(headers or {})}
        if code:
            extra["X-Error-Code"] = code
        body = json.dumps({"error": message}).encode()
        self._send(status, b"" if self.command == "HEAD" else body, {"Content-Type": "application/json", **extra})

    def _body(self) -> bytes:
        return self._raw

    def _role(self) -> str | None:
        """'write', 'read', None (anonymous); raises _Denied(401) for an unknown token."""
        auth = self.headers.get("Authorization") or ""
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        role = self.state.tokens.get(token)
        if role is None:
            raise _Denied(401, "Invalid credentials in Authorization header")
        return role

    def _repo(self, repo_type: str, repo_id: str, *, write: bool) -> Repo:
        role = self._role()
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and role is None):
            raise _Denied(404 if role else 401, "Repository not found", "RepoNotFound")
        if write and role is None:
            raise _Denied(401, "You must be authenticated to write")
        if write and role != "write":
            raise _Denied(403, "Your token does not have write access to this repository")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _Denied(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _dispatch(self) -> None:
        # Read the whole body first, whatever the answer: a keep-alive connection must not carry leftovers.
        length = int(self.headers.get("Content-Length") or 0)
        self._raw = self.rfile.read(length) if length else b""
        with self.state.lock:
            self.state.requests.append((self.command, urlsplit(self.path).path))
            over = len(self.state.requests) > self.state.max_requests
        if over:
            self._error(503, "request budget of the test server exhausted")
            return
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        try:
            with self.state.lock:
                self._route(parts, query)
        except _Denied as denied:
            self._error(denied.status, denied.message, denied.code, denied.headers)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _dispatch  # noqa: N815 - stdlib naming

    # ---- routes -----------------------------------------------------------------------------------------
    def _route(self, parts: list[str], query: dict[str, list[str]]) -> None:
        method = self.command
        if parts[:1] == ["api"]:
            if parts[1:3] == ["repos", "create"] and method == "POST":
                return self._create_repo()
            if parts[1:2] == ["validate-yaml"] and method == "POST":
                self._body()
                return self._json(200, {"errors": [], "warnings": []})
            if parts[1:2] == ["whoami-v2"]:
                role = self._role()
                if role is None:
                    raise _Denied(401, "Invalid credentials in Authorization header")
                return self._json(200, {"type": "user", "name": "tester", "auth": {"accessToken": {"role": role}}})
            if len(parts) >= 4 and parts[1] in REPO_TYPES:
                repo_type, repo_id, rest = REPO_TYPES[parts[1]], "/".join(parts[2:4]), parts[4:]
                return self._repo_api(method, repo_type, repo_id, rest, query)
        else:
            repo_type = REPO_TYPES.get(parts[0], "model") if parts else "model"
            rest = parts[1:] if parts and parts[0] in REPO_TYPES else parts
            if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
                repo = self._repo(repo_type, "/".join(rest[:2]), write=False)
                return self._resolve(repo, rest[3], "/".join(rest[4:]))
        raise _Denied(404, f"not implemented by the test server: {method} {'/'.join(parts)}")

    def _create_repo(self) -> None:
        payload = json.loads(self._body() or b"{}")
        role = self._role()
        if role is None:
            raise _Denied(401, "You must be authenticated to create a repo")
        if role != "write":
            raise _Denied(403, "Your token cannot create repositories")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
        url = f"http://{self.headers.get('Host')}/{URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.state.repos:
            return self._json(409, {"error": "You already created this repo", "url": url})
        repo = Repo(repo_type, repo_id, bool(payload.get("private") or payload.get("visibility") == "private"))
        sha = self.state.new_sha(repo_id)
        initial = {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"}
        repo.commits[sha] = Commit(sha, None, "initial commit", initial, _now())
        repo.branches["main"] = sha
        self.state.repos[(repo_type, repo_id)] = repo
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str], query) -> None:
        if not rest and method == "GET":
            repo = self._repo(repo_type, repo_id, write=False)
            return self._info(repo, self._commit(repo, "main"))
        head, args = (rest[0], rest[1:]) if rest else ("", [])
        if head == "revision" and method == "GET":
            repo = self._repo(repo_type, repo_id, write=False)
            return self._info(repo, self._commit(repo, args[0]))
        if head == "refs" and method == "GET":
            repo = self._repo(repo_type, repo_id, write=False)

            def refs(kind: str, table: dict[str, str]) -> list[dict]:
                return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s} for n, s in sorted(table.items())]

            return self._json(
                200,
                {"branches": refs("heads", repo.branches), "tags": refs("tags", repo.tags), "converts": []},
            )
        if head == "tree" and method == "GET":
            repo = self._repo(repo_type, repo_id, write=False)
            return self._tree(repo, self._commit(repo, args[0]), "/".join(args[1:]), query)
        if head == "paths-info" and method == "POST":
            repo = self._repo(repo_type, repo_id, write=False)
            commit = self._commit(repo, args[0])
            form = parse_qs(self._body().decode())
            entries = [e for p in form.get("paths", []) if (e := _entry(commit, p.strip("/"))) is not None]
            return self._json(200, entries)
        if head == "preupload" and method == "POST":
            repo = self._repo(repo_type, repo_id, write=True)
            commit = self._commit(repo, args[0])
            files = json.loads(self._body())["files"]
            answer = [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha(commit.files[f["path"]]) if f["path"] in commit.files else None,
                }
                for f in files
            ]
            return self._json(200, {"files": answer, "commitOid": commit.sha})
        if head == "commit" and method == "POST":
            return self._commit_api(repo_type, repo_id, args[0])
        if head == "tag" and method == "POST":
            repo = self._repo(repo_type, repo_id, write=True)
            commit = self._commit(repo, args[0])
            tag = json.loads(self._body())["tag"]
            if tag in repo.tags:
                raise _Denied(409, f"Tag {tag} already exists")
            repo.tags[tag] = commit.sha
            return self._json(200, {"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": commit.sha})
        raise _Denied(404, f"not implemented by the test server: {method} {head}")

    def _info(self, repo: Repo, commit: Commit) -> None:
        siblings = [
            {"rfilename": p, "size": len(c), "blobId": git_blob_sha(c)} for p, c in sorted(commit.files.items())
        ]
        self._json(
            200,
            {
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.sha,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "lastModified": commit.date,
                "tags": [],
                "siblings": siblings,
            },
        )

    def _tree(self, repo: Repo, commit: Commit, path: str, query) -> None:
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        expand = (query.get("expand") or ["false"])[0].lower() in ("1", "true")
        cursor = int((query.get("cursor") or ["0"])[0])
        prefix = f"{path}/" if path else ""
        if path and path not in commit.files and not any(f.startswith(prefix) for f in commit.files):
            raise _Denied(404, f"{path} does not exist on {commit.sha}", "EntryNotFound")
        names: set[str] = set()
        for file in commit.files:
            if not file.startswith(prefix):
                continue
            pieces = file[len(prefix) :].split("/")
            for depth in range(1, len(pieces) + 1 if recursive else 2):
                names.add(prefix + "/".join(pieces[:depth]))
        entries = [_entry(commit, name, expand=expand) for name in sorted(names)]
        page = entries[cursor : cursor + self.state.page_size]
        headers = {}
        if cursor + self.state.page_size < len(entries):
            base = urlsplit(self.path)
            params = {k: v[0] for k, v in query.items() if k != "cursor"}
            params["cursor"] = str(cursor + self.state.page_size)
            link = f"http://{self.headers.get('Host')}{base.path}?" + "&".join(
                f"{k}={quote(v, safe='')}" for k, v in params.items()
            )
            headers["Link"] = f'<{link}>; rel="next"'
        self._json(200, page, headers)

    def _commit_api(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id, write=True)
        body = self._body()  # the whole upload is received before anything is decided
        if revision not in repo.branches:
            raise _Denied(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"] if lines and lines[0]["key"] == "header" else {}
        parent = self._commit(repo, revision)
        if header.get("parentCommit") and header["parentCommit"] != parent.sha:
            raise _Denied(412, "A commit has happened since the parent commit. Please pull first.")
        if self.state.fail_next_commits > 0:
            self.state.fail_next_commits -= 1
            raise _Denied(500, "Internal Error - the commit could not be applied")
        files = dict(parent.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                files[path] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if path not in files:
                    raise _Denied(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                for name in [f for f in files if f.startswith(path.rstrip("/") + "/")]:
                    del files[name]
            else:
                raise _Denied(400, f"operation {key} is not supported by the test server (no LFS storage)")
        sha = self.state.new_sha(repo_id + json.dumps(header))
        repo.commits[sha] = Commit(sha, parent.sha, header.get("summary", ""), files, _now())
        repo.branches[revision] = sha
        url = f"http://{self.headers.get('Host')}/{URL_PREFIX[repo_type]}{repo_id}/commit/{sha}"
        self._json(200, {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})

    def _resolve(self, repo: Repo, revision: str, path: str) -> None:
        commit = self._commit(repo, revision)
        headers = {"X-Repo-Commit": commit.sha}
        if path not in commit.files:
            raise _Denied(404, "Entry not found", "EntryNotFound", headers)
        content = commit.files[path]
        etag = git_blob_sha(content)
        headers.update({"ETag": f'"{etag}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"})
        status, body = 200, content
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            start_s, _, end_s = ranged[len("bytes=") :].partition("-")
            start = int(start_s or 0)
            end = min(int(end_s), len(content) - 1) if end_s else len(content) - 1
            if start >= len(content) and len(content) > 0:
                return self._send(416, b"", {"Content-Range": f"bytes */{len(content)}", **headers})
            status, body = 206, content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        self._send(status, body, headers, head=self.command == "HEAD")


class _Denied(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers


def _entry(commit: Commit, path: str, *, expand: bool = False) -> dict | None:
    """A tree / paths-info entry: a file with its blob oid and size, or a folder."""
    last = {"id": commit.sha, "title": commit.title, "date": commit.date}
    if path in commit.files:
        entry = {
            "type": "file",
            "path": path,
            "size": len(commit.files[path]),
            "oid": git_blob_sha(commit.files[path]),
        }
    elif any(f.startswith(path + "/") for f in commit.files):
        entry = {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}
    else:
        return None
    if expand:
        entry["lastCommit"] = last
    return entry


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: HubState):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class HubServer:
    """Start with ``with HubServer(...) as hub``; ``hub.endpoint`` is the base URL for ``HF_ENDPOINT``."""

    def __init__(self, tokens: dict[str, str] | None = None, page_size: int = 3):
        self.state = HubState(tokens, page_size=page_size)
        self._server = _Server(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


# ---- what the Hub tests share (the ``hub`` fixture is in hub_fixtures.py) ------------------------------------
WRITE_TOKEN = "hf_SENTINEL_write_token_do_not_leak_7f3a9c"
READ_TOKEN = "hf_read_only_token_1234"
REPO = "org/srecycled"


# ---- a synthetic workdir (the contract of COMMON.md), independent of the teacher and the scorer ---------------
def make_workdir(
    root,
    students=("llama2-7b", "mistral-7b"),
    rows: int = 6,
    license: str = "cc-by-nc-4.0",
    empty: tuple[str, ...] = (),
):
    """Write a small workdir with reflections, and per student scores, a subset and a report.

    Scores are made up but consistent: the subset holds exactly the rows whose chosen variant passes the
    thresholds, and the report's counts and quantiles are computed from the same numbers. Students named in
    ``empty`` score every variant above the IFD threshold, so their selection keeps no row.
    """
    import random
    from pathlib import Path

    import polars as pl
    import pyarrow as pa

    from recycled_datasets.records import REFLECTION_COLUMNS, SCORE_COLUMNS, VARIANTS
    from recycled_datasets.workdir import Workdir
    from recycled_datasets.workdir.pairs import pairs_digest, pairs_of
    from recycled_datasets.workdir.tables import write_reflections, write_scores, write_subset

    root = Path(root)
    (root / "students").mkdir(parents=True, exist_ok=True)
    ids = [f"row{i:04d}" for i in range(rows)]
    wide: dict[str, list] = {c: [] for c in REFLECTION_COLUMNS}
    text: dict[tuple[str, str], tuple[str, str, str]] = {}
    for i, rid in enumerate(ids):
        wide["id"].append(rid)
        wide["source_index"].append(i)
        for v in VARIANTS:
            ins = f"Instruction {i} ({v}): explain topic {i}." if v in ("ori", "res") else f"Harder instruction {i}."
            inp = f"context {i}" if v in ("ori", "res") and i % 2 == 0 else ""
            if v == "res":
                ins = f"Instruction {i} (ori): explain topic {i}."
            out = f"Answer {i} written for {v}, with detail."
            text[(rid, v)] = (ins, inp, out)
            wide[f"{v}_instruction"].append(ins)
            wide[f"{v}_input"].append(inp)
            wide[f"{v}_output"].append(out)
            if v != "ori":
                failed = v == "ins" and i == 1
                wide[f"{v}_status"].append("fell_back" if failed else "ok")
                wide[f"{v}_detail"].append("instruction: empty section" if failed else None)
    wd = Workdir(root)
    reflections = pl.from_arrow(pa.table(wide))
    meta = {
        "teacher": "meta-llama/Llama-3.1-70B-Instruct",
        "teacher_revision": "0123456789abcdef0123456789abcdef01234567",
        "prompt_version": "v1",
        "source": "alpaca_cherry_5pct.json",
        "rows": rows,
        "license": license,
    }
    write_reflections(wd, reflections, meta)
    _, _, pairs = pairs_of(reflections)
    for n, key in enumerate(students):
        rng = random.Random(f"{key}-{n}")
        score_rows = []
        scores: dict[tuple[str, str], tuple[float, float]] = {}
        for rid in ids:
            for v in VARIANTS:
                low = 1.05 if key in empty else 0.4
                ifd, rifd = round(rng.uniform(low, 1.3), 4), round(rng.uniform(0.5, 1.2), 4)
                scores[(rid, v)] = (ifd, rifd)
                score_rows.append((rid, v, ifd, rifd))
        table = {"id": [r[0] for r in score_rows], "variant": [r[1] for r in score_rows]}
        for col in SCORE_COLUMNS:
            if col == "ifd":
                table[col] = [r[2] for r in score_rows]
            elif col == "rifd":
                table[col] = [r[3] for r in score_rows]
            elif col == "status":
                table[col] = ["ok"] * len(score_rows)
            elif col == "reason":
                table[col] = pa.array([None] * len(score_rows), pa.string())
            elif col.startswith("n_"):
                table[col] = [10] * len(score_rows)
            else:
                table[col] = [1.0] * len(score_rows)
        student = {
            "key": key,
            "model": f"example/{key}",
            "revision": "fedcba9876543210fedcba9876543210fedcba98",
            "template": "vicuna",
            "dtype": "bfloat16",
            "base_model": None,
        }
        scores_meta = {
            "student": student,
            "max_length": 2048,
            "pairs": len(pairs),
            "pairs_sha256": pairs_digest(pairs),
        }
        write_scores(wd, key, pl.from_arrow(pa.table(table)), scores_meta)
        branches = {v: 0 for v in VARIANTS}
        drops: dict[str, int] = {}
        subset: dict[str, list] = {
            c: [] for c in ("instruction", "input", "output", "id", "variant", "ifd", "rifd", "student", "teacher")
        }
        for rid in ids:
            if scores[(rid, "ins")][0] > scores[(rid, "ori")][0]:
                final = "both" if scores[(rid, "both")][1] < scores[(rid, "ins")][1] else "ins"
            else:
                final = "res" if scores[(rid, "res")][1] < scores[(rid, "ori")][1] else "ori"
            branches[final] += 1
            ifd, rifd = scores[(rid, final)]
            if final in ("ins", "ori"):
                drops["paper_mode_unreflected"] = drops.get("paper_mode_unreflected", 0) + 1
                continue
            if not (ifd < 1 and rifd < 1):
                drops["above_threshold"] = drops.get("above_threshold", 0) + 1
                continue
            ins, inp, out = text[(rid, final)]
            for col, value in zip(subset, (ins, inp, out, rid, final, ifd, rifd, key, meta["teacher"]), strict=True):
                subset[col].append(value)
        schema = pa.schema([(c, pa.float64() if c in ("ifd", "rifd") else pa.string()) for c in subset])
        subset_frame = pl.from_arrow(pa.table(subset, schema=schema))

        def quantiles(values):
            values = sorted(values)
            if not values:
                return {p: None for p in ("p10", "p25", "p50", "p75", "p90")}
            pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
            return {"p10": pick(0.1), "p25": pick(0.25), "p50": pick(0.5), "p75": pick(0.75), "p90": pick(0.9)}

        report = {
            "student": student,
            "teacher": meta["teacher"],
            "prompt_version": "v1",
            "source": meta["source"],
            "mode": "paper",
            "rows_in": rows,
            "rows_kept": len(subset["id"]),
            "branches": branches,
            "drops": drops,
            "quantiles": {"ifd": quantiles(subset["ifd"]), "rifd": quantiles(subset["rifd"])},
            "top": None,
        }
        write_subset(wd, key, subset_frame, report)
    return root
