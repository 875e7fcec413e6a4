"""Throughput of the teacher client against a server with realistic latencies, as a fraction of the ideal.

A server that answers C requests at once, each after a latency drawn from a long-tailed (lognormal)
distribution, can serve at most C / mean-latency requests per second. This script runs

- the reflect stage itself (sliding window sized from the server's /info, answers committed to the store),
- the reference code's approach: fixed batches of 10 requests sent together and awaited together
  (``asyncio.gather``), and fixed batches of C when C is not 10,

against the fixture server of the tests, and prints each one's requests/s as a fraction of that ideal, and the
ratio between them. Targets: the stage >= 0.90 of ideal and >= 1.5x the fixed batches at the same concurrency.

With ``--local`` it measures the in-process (embedded) teacher instead: generated tokens per second of its
left-padded batched ``generate`` at each batch size, against plain one-request-at-a-time ``generate``, on the
real reflection prompts of the bundled sample (greedy, the demo's settings). Only tokens up to each reply's end
count, so the padding a batch drags along is not mistaken for work.

    python scripts/bench_teacher.py [--concurrency 10] [--rows 300] [--median 0.15] [--sigma 0.6]
    python scripts/bench_teacher.py --local [--prompts 16] [--max-new-tokens 64] [--batch-sizes 4,8,16]
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


def local_throughput(n_prompts: int, max_new_tokens: int, batch_sizes: list[int]) -> None:
    """Tokens/s of the local teacher's batches against one request at a time (see the module doc)."""
    import time

    import torch

    from recycled_datasets.stages.source import load_source
    from recycled_datasets.teacher.local import LocalTeacher

    prompts = default_prompts()
    rows = load_source("sample").rows
    texts = [
        render(r.instruction, r.input, r.output)
        for r in rows
        for render in (prompts.render_instruction, prompts.render_response)
    ][:n_prompts]
    teacher = LocalTeacher()
    started = time.perf_counter()
    asyncio.run(teacher.start())
    print(
        f"model load: {time.perf_counter() - started:.1f} s ({teacher.teacher_id}, {torch.get_num_threads()} threads)"
    )
    inputs = [teacher.prepare(t, max_new_tokens=max_new_tokens, temperature=0.0, seed=0)["inputs"] for t in texts]
    tokenizer, model = teacher.tokenizer, teacher._model
    teacher._generate(inputs[:1], 4, 0.0, 0)  # warm-up outside the measurement

    # Wall seconds are the figure on an idle machine; CPU seconds of the process keep the ratio honest when
    # other jobs share the cores (they are not a wall time once torch runs several threads).
    results: list[tuple[str, int, float, float]] = []
    started, cpu = time.perf_counter(), time.process_time()
    tokens = 0
    for text in inputs:  # plain generate, one request at a time, no padding
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        new = out[0, ids["input_ids"].shape[1] :].tolist()
        tokens += next((i for i, t in enumerate(new) if t == tokenizer.eos_token_id), len(new))
    results.append(("plain generate, 1 at a time", tokens, time.perf_counter() - started, time.process_time() - cpu))
    for size in batch_sizes:
        started, cpu = time.perf_counter(), time.process_time()
        tokens = 0
        for start in range(0, len(inputs), size):
            tokens += sum(n for _, n, _ in teacher._generate(inputs[start : start + size], max_new_tokens, 0.0, 0))
        results.append(
            (f"local teacher, batches of {size}", tokens, time.perf_counter() - started, time.process_time() - cpu)
        )
    asyncio.run(teacher.close())

    print(f"{len(inputs)} reflection prompts of the sample, up to {max_new_tokens} new tokens each, greedy")
    print(f"{'approach':34} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'vs plain':>9} {'tokens/CPU-s':>13}")
    base = results[0][1] / results[0][2]
    for name, n, seconds, cpu_seconds in results:
        rate = n / seconds
        print(f"{name:34} {n:7d} {seconds:8.1f} {rate:9.1f} {rate / base:8.2f}x {n / cpu_seconds:13.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=10, help="requests the server serves at once (C)")
    parser.add_argument("--rows", type=int, default=300, help="source rows (3 calls each)")
    parser.add_argument("--median", type=float, default=0.15, help="median latency, seconds")
    parser.add_argument("--sigma", type=float, default=0.6, help="lognormal shape: larger means a longer tail")
    parser.add_argument("--batch", type=int, default=10, help="the reference approach's batch size")
    parser.add_argument("--local", action="store_true", help="measure the embedded in-process teacher instead")
    parser.add_argument("--prompts", type=int, default=16, help="--local: reflection prompts to generate for")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="--local: new tokens per prompt")
    parser.add_argument("--batch-sizes", default="4,8,16", help="--local: comma-separated batch sizes")
    args = parser.parse_args()
    if args.local:
        local_throughput(args.prompts, args.max_new_tokens, [int(b) for b in args.batch_sizes.split(",")])
        return
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
