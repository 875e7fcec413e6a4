"""Throughput of the teacher client against a server with realistic latencies, as a fraction of the ideal.

A server that answers C requests at once, each after a latency drawn from a long-tailed (lognormal)
distribution, can serve at most C / mean-latency requests per second. This script runs

- the reflect stage itself (sliding window sized from the server's /info, answers committed to the store),
- the reference code's approach: fixed batches of 10 requests sent together and awaited together
  (``asyncio.gather``), and fixed batches of C when C is not 10,

against the fixture server of the tests, and prints each one's requests/s as a fraction of that ideal, and the
ratio between them. Targets: the stage >= 0.90 of ideal and >= 1.5x the fixed batches at the same concurrency.

    python scripts/bench_teacher.py [--concurrency 10] [--rows 300] [--median 0.15] [--sigma 0.6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from recycled_datasets.records import assign_ids
from recycled_datasets.teacher import ReflectConfig, reflect_rows
from recycled_datasets.teacher.prompts import default_prompts

SERVER = Path(__file__).resolve().parents[1] / "tests" / "teacher_server.py"
MODEL = "fixture/teacher-7b"


def fixture(url: str, route: str) -> dict:
    with urllib.request.urlopen(f"{url}/fixture/{route}", timeout=30) as response:
        return json.load(response)


def measured(url: str) -> tuple[int, float, float]:
    """(requests, seconds from the first arrival to the last answer, mean latency served) since the last reset."""
    log = fixture(url, "log")
    events = [e for e in log["events"] if e[1] is not None]
    span = max(e[1] for e in events) - min(e[0] for e in events)
    return len(events), span, statistics.fmean(log["latencies"])


async def fixed_batches(url: str, model: str, prompts: list[str], batch: int, max_tokens: int) -> None:
    from huggingface_hub import AsyncInferenceClient

    async with AsyncInferenceClient(base_url=url, timeout=60) as client:
        for start in range(0, len(prompts), batch):
            group = prompts[start : start + batch]
            await asyncio.gather(
                *(
                    client.chat_completion(
                        [{"role": "user", "content": p}], model=model, max_tokens=max_tokens, temperature=0, seed=0
                    )
                    for p in group
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=10, help="requests the server serves at once (C)")
    parser.add_argument("--rows", type=int, default=300, help="source rows (3 calls each)")
    parser.add_argument("--median", type=float, default=0.15, help="median latency, seconds")
    parser.add_argument("--sigma", type=float, default=0.6, help="lognormal shape: larger means a longer tail")
    parser.add_argument("--batch", type=int, default=10, help="the reference approach's batch size")
    args = parser.parse_args()
    c = args.concurrency

    rows = assign_ids(
        [(f"Explain idea number {i} in plain words.", "", f"Idea {i} is this.") for i in range(args.rows)]
    )
    prompts = default_prompts()
    batch_prompts = [
        render(r.instruction, r.input, r.output + suffix)
        for r in rows
        for render, suffix in (
            (prompts.render_instruction, ""),
            (prompts.render_response, ""),
            (prompts.render_response, " "),
        )
    ]
    results: list[tuple[str, float, float]] = []
    # The server runs in its own process, as a real one would: it must not share the client's interpreter lock.
    command = [sys.executable, str(SERVER), "--concurrency", str(c), "--median", str(args.median)]
    # Two measured runs of 3 calls per row, plus warm-up, health checks and log reads: a bound with room.
    command += ["--sigma", str(args.sigma), "--max-requests", str(8 * args.rows + 200)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            config = ReflectConfig(teacher=url, store_dir=Path(tmp), max_new_tokens=256, progress=False)
            reflect_rows(rows[:2], config)  # warm up the client (first-request set-up) outside the measurement
            fixture(url, "reset")
            result = reflect_rows(rows[2:], config)
            n, span, mean = measured(url)
            if result.stats.retries:
                print(f"note: the stage retried {result.stats.retries} requests ({result.stats.retry_reasons})")
            results.append(("sliding window (srecycle)", n / span, c / mean))

        for batch in dict.fromkeys((args.batch, c)):
            fixture(url, "reset")
            asyncio.run(fixed_batches(url, MODEL, batch_prompts[: 3 * (args.rows - 2)], batch, 256))
            n, span, mean = measured(url)
            results.append((f"fixed batches of {batch} + gather", n / span, c / mean))
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"server: C={c} concurrent requests, lognormal latency (median {args.median} s, sigma {args.sigma})")
    print(f"{'approach':36} {'req/s':>8} {'ideal':>8} {'of ideal':>9}")
    for name, rate, ideal in results:
        print(f"{name:36} {rate:8.1f} {ideal:8.1f} {rate / ideal:9.2f}")
    ours = results[0][1] / results[0][2]
    for name, rate, ideal in results[1:]:
        print(f"sliding window / {name}: {ours / (rate / ideal):.2f}x")


if __name__ == "__main__":
    main()
