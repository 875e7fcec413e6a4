"""Benchmark: the batched scorer against the naive per-pair fp32 loop (the reference code's way).

Both score the same rows with the same model and token layout. Prints, from one run: the speed ratio per row,
the largest |IFD| and |r-IFD| differences, and the share of rows whose IFD < 1 (and r-IFD < 1) verdicts
agree. Targets (issue 2): >= 3x on a 2-core CPU in bf16 with >= 99% IFD<1 agreement; >= 20x on a GPU.

    python scripts/bench_score.py                       # 200 real Alpaca rows from ../shared/data, CPU, bf16
    python scripts/bench_score.py --student /models/llama-3.2-1b --device cuda --rows 1000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_cherry_5pct.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="source rows (Alpaca form)")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--student", default="smollm2-135m")
    parser.add_argument("--template", default="alpaca")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when available)")
    parser.add_argument("--chunk", type=int, default=50, help="rows per alternating timing chunk")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the real rows live in ../shared/data beside the repo)")
        return 0

    import torch

    from recycled_datasets.models import load_model, load_tokenizer, resolve_student
    from recycled_datasets.records import Pair
    from recycled_datasets.scoring import ScoreConfig, score_pairs
    from recycled_datasets.scoring.naive import naive_losses
    from recycled_datasets.scoring.plan import Planner
    from recycled_datasets.sources import read_source

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = resolve_student(args.student, template=args.template)
    rows = read_source(args.data, limit=args.rows).rows
    pairs = [Pair(r.instruction, r.input, r.output) for r in rows]

    # Load both models before timing: the comparison is of scoring, not of loading.
    naive_model = load_model(spec, dtype="float32", device=device)
    load_model(spec, dtype=args.dtype, device=device)
    tokenizer = load_tokenizer(spec)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    # The two are timed on alternating chunks of rows, so a change in machine load during the run (these
    # machines are shared) falls on both sides alike instead of biasing the ratio.
    config = ScoreConfig(max_length=args.max_length, dtype=args.dtype, batch_tokens=args.batch_tokens, device=device)
    planner = Planner(tokenizer, spec.template, args.max_length)
    plans = planner.plan(pairs)
    losses: dict[str, float] = {}
    frames = []
    naive_seconds = fast_seconds = 0.0
    for lo in range(0, len(pairs), args.chunk):
        chunk_planner = Planner(tokenizer, spec.template, args.max_length)
        started = time.perf_counter()
        chunk_planner.plan(pairs[lo : lo + args.chunk])
        losses.update(naive_losses(naive_model, list(chunk_planner.jobs.values()), device=device))
        sync()
        naive_seconds += time.perf_counter() - started
        started = time.perf_counter()
        frames.append(score_pairs(pairs[lo : lo + args.chunk], spec, config))
        sync()
        fast_seconds += time.perf_counter() - started
        print(f"rows {lo + len(frames[-1])}/{len(pairs)}: naive {naive_seconds:.0f} s, scorer {fast_seconds:.0f} s")
    import polars as pl

    frame = pl.concat(frames)

    def ratio(cond: int, direct: int, plan) -> float | None:  # noqa: ANN001
        a, b = plan.jobs[cond], plan.jobs[direct]
        return math.exp(losses[a] - losses[b]) if a and b else None

    naive_ifd = [ratio(0, 1, p) for p in plans]
    naive_rifd = [ratio(2, 3, p) for p in plans]
    fast_ifd, fast_rifd = frame["ifd"].to_list(), frame["rifd"].to_list()

    def compare(fast: list, naive: list) -> tuple[float, float, float]:
        both = [(f, n) for f, n in zip(fast, naive, strict=True) if f is not None and n is not None]
        max_abs = max(abs(f - n) for f, n in both)
        max_rel = max(abs(f - n) / n for f, n in both)
        agree = sum((f < 1) == (n < 1) for f, n in both) / len(both)
        return max_abs, max_rel, agree

    ifd_abs, ifd_rel, ifd_agree = compare(fast_ifd, naive_ifd)
    rifd_abs, rifd_rel, rifd_agree = compare(fast_rifd, naive_rifd)
    tokens = sum(len(j.ids) for j in planner.jobs.values())
    figures = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "cpu_threads": torch.get_num_threads(),
        "student": spec.key,
        "dtype": args.dtype,
        "rows": len(pairs),
        "sequences": len(planner.jobs),
        "tokens": tokens,
        "naive_fp32_seconds": round(naive_seconds, 2),
        "scorer_seconds": round(fast_seconds, 2),
        "naive_ms_per_row": round(1000 * naive_seconds / len(pairs), 1),
        "scorer_ms_per_row": round(1000 * fast_seconds / len(pairs), 1),
        "speedup": round(naive_seconds / fast_seconds, 2),
        "max_abs_ifd_diff": ifd_abs,
        "max_rel_ifd_diff": ifd_rel,
        "max_abs_rifd_diff": rifd_abs,
        "ifd_lt1_agreement": ifd_agree,
        "rifd_lt1_agreement": rifd_agree,
    }
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
