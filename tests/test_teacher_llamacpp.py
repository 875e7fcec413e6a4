"""``srecycle reflect`` against a real third-party server: llama-cpp-python serving the SmolLM2 GGUF.

CI installs the server with ``pip install 'llama-cpp-python[server]'`` (it compiles llama.cpp once). The test
skips, saying why, when that package or the real Alpaca data is missing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from recycled_datasets.records import REFLECTION_COLUMNS, STATUS_FAILED, STATUS_OK, VARIANTS

CLI = [sys.executable, "-c", "from recycled_datasets.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def posts(log: Path) -> int:
    """Generation requests the server logged (uvicorn's access log, one line per request)."""
    return log.read_text(errors="replace").count('"POST /v1/chat/completions')


@pytest.fixture
def llama_server(tmp_path, alpaca_path):
    # alpaca_path (tests/conftest.py) skips first when ../shared/data is absent: nothing is started for nothing.
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        pytest.skip("llama-cpp-python[server] is not installed: pip install 'llama-cpp-python[server]'")
    from recycled_datasets.models import model_location, resolve_student

    folder, gguf = model_location(resolve_student("smollm2-135m"))
    port = free_port()
    log = tmp_path / "llama_server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(Path(folder) / gguf)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    with log.open("w") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"llama.cpp server exited:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet
            assert time.monotonic() < deadline, f"llama.cpp server not ready in 180 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url, log
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_reflect_20_alpaca_rows_with_llama_cpp_then_rerun_sends_nothing(alpaca_path, llama_server, tmp_path):
    url, log = llama_server
    out = tmp_path / "work" / "reflections.parquet"
    args = ["reflect", str(alpaca_path), "--limit", "20", "--teacher", f"{url}/v1", "--output", str(out)]
    args += ["--store", str(tmp_path / "work" / "teacher"), "--max-new-tokens", "64", "--concurrency", "2", "-q"]
    env = {**os.environ, "SRECYCLE_QUIET": "1"}

    first = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stderr
    table = pl.read_parquet(out)
    assert table.columns == list(REFLECTION_COLUMNS) and table.height == 20
    source = json.loads(alpaca_path.read_text())[:20]
    assert table["ori_instruction"].to_list() == [r["instruction"] for r in source]
    for variant in VARIANTS:
        assert all(table[f"{variant}_instruction"].str.len_chars() > 0)
        assert all(table[f"{variant}_output"].str.len_chars() > 0)
    for variant in VARIANTS[1:]:
        statuses = table[f"{variant}_status"]
        assert STATUS_FAILED not in statuses.to_list()
        # Every fallback says why; an ok variant carries no detail.
        assert (table[f"{variant}_detail"].is_null() == (statuses == STATUS_OK)).all()
    sent = posts(log)
    assert sent >= 60  # three calls per row at least (some replies are asked twice)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["teacher"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")  # the name the server reports

    again = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert posts(log) == sent  # the rerun sent zero requests
    assert re.search(r"requests sent\W+0 \(0 retries\)", again.stdout), again.stdout
    assert pl.read_parquet(out).equals(table)


def test_llama_cpp_is_built_for_a_portable_cpu_baseline():
    """The Makefile builds llama.cpp without native tuning: no AVX-512 or AMX code that a VM may trap (SIGILL)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.skip("llama-cpp-python is not installed: make test installs it")
    done = subprocess.run(
        [sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    info = done.stdout
    assert re.search(r"\bAVX2 = 1\b", info), info  # the x86-64 baseline it is built for
    assert re.findall(r"\b(AVX512\w*|AMX\w*|AVX_VNNI) = 1\b", info) == [], info
