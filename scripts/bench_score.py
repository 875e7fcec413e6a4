"""Benchmark: the batched scorer against this machine's ceiling and against the naive per-pair fp32 loop.

The ceiling is a plain batched forward of the student's body (no output head, no bookkeeping) over the very
batches the scorer builds: same sequences, same padded shapes, same dtype. The scorer's throughput as a share
of it says how much the scorer spends beyond the transformer itself (the head, planning, checkpoints); the
speed-up over the naive loop (the reference code's way: batch 1, fp32, full logits, four passes per pair) says
what batching and the head-only path buy. The three are timed on interleaved chunks of rows, so load drift on
a shared machine hits all of them alike, and the machine's load is printed before and after: above 0.5 per
core the headline is withheld.

    python scripts/bench_score.py --rows 100                      # real Alpaca rows from ../shared/data, CPU
    python scripts/bench_score.py --rows 100 --cli                # `srecycle score` per row vs in-process
    python scripts/bench_score.py --student /models/llama-3.2-1b --device cuda --rows 2000 --chunk 500

On CUDA it also prints the model FLOPs utilisation against the GPU's bf16 peak (``--peak-tflops``) and the
projected hours for the full Alpaca and WizardLM on one GPU and on ``--gpus`` GPUs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_cherry_5pct.json"
MAX_LOAD_PER_CORE = 0.5
VARIANTS_PER_ROW = 4  # a full build scores ori, ins, res and both of every source row
FULL_SETS = {"alpaca": 52_002, "wizardlm": 70_000}
# Dense bf16 tensor peaks (TFLOP/s) by the name CUDA reports; others need --peak-tflops.
BF16_PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (Linux /proc/stat), or None where that is not readable."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    guest = sum(ticks[8:10])  # already counted in user and nice
    return (sum(ticks) - idle - guest) / os.sysconf("SC_CLK_TCK")


def _children_seconds() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def _own_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class LoadMeter:
    """The machine's load around a run: load averages, and the cores other processes kept busy meanwhile."""

    before: tuple[float, float, float]
    busy: float | None
    own: float
    started: float

    @classmethod
    def start(cls) -> LoadMeter:
        return cls(os.getloadavg(), _busy_seconds(), _own_seconds(), time.monotonic())

    def stop(self) -> dict[str, Any]:
        after = os.getloadavg()
        busy = _busy_seconds()
        wall = max(time.monotonic() - self.started, 1e-9)
        others = None
        if busy is not None and self.busy is not None:
            others = max(0.0, (busy - self.busy) - (_own_seconds() - self.own)) / wall
        n = cores()
        reasons = []
        if self.before[0] / n > MAX_LOAD_PER_CORE:
            reasons.append(f"load average {self.before[0]:.2f} before the run on {n} cores")
        if others is not None and others / n > MAX_LOAD_PER_CORE:
            reasons.append(f"other processes kept {others:.2f} of {n} cores busy during the run")
        if others is None and (after[0] - n) / n > MAX_LOAD_PER_CORE:  # no /proc/stat: this run counts as n
            reasons.append(f"load average {after[0]:.2f} after the run on {n} cores")
        return {
            "cores": n,
            "load_before": [round(v, 2) for v in self.before],
            "load_after": [round(v, 2) for v in after],
            "other_busy_cores": None if others is None else round(others, 2),
            "idle": not reasons,
            "not_idle_because": "; ".join(reasons) or None,
        }


def _model_flops(model: Any, jobs: list, head_positions: int) -> tuple[float, float]:
    """(body FLOPs, head FLOPs) of a forward over ``jobs``: 2 per weight per token plus causal attention."""
    config = model.config
    text = getattr(config, "text_config", None) or config
    embed = model.get_input_embeddings().weight.numel()
    body_params = sum(p.numel() for p in model.base_model.parameters()) - embed
    layers = text.num_hidden_layers
    attn_width = text.num_attention_heads * (
        getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    )
    body = sum(2 * body_params * len(j.ids) + 2 * layers * attn_width * len(j.ids) ** 2 for j in jobs)
    head = 2 * model.get_output_embeddings().weight.numel() * head_positions
    return float(body), float(head)


def _peak(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in BF16_PEAKS.items() if k in device_name), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="source rows (Alpaca form)")
    parser.add_argument("--rows", type=int, default=100, help="rows to score (with --cli: N, then 2N rows)")
    parser.add_argument("--student", default="smollm2-135m")
    parser.add_argument("--template", default="alpaca")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when available)")
    parser.add_argument("--chunk", type=int, default=25, help="rows per interleaved timing chunk")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop (no speed-up, no agreement)")
    parser.add_argument(
        "--cli", action="store_true", help="time `srecycle score` per row against the in-process scorer"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, for MFU")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs for the multi-GPU projection")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the real rows live in ../shared/data beside the repo)")
        return 0
    meter = LoadMeter.start()
    figures = cli_figures(args) if args.cli else scorer_figures(args)
    figures |= meter.stop()
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print()
    if not figures["idle"]:
        print(f"no headline: the machine was not idle ({figures['not_idle_because']}); rerun on an idle machine")
    elif args.cli:
        print(
            f"headline: srecycle score {figures['cli_ms_per_row']} ms/row, in-process {figures['inproc_ms_per_row']}"
            f" ms/row: ratio {figures['cli_over_inproc']}"
        )
    else:
        line = (
            f"headline: scorer {figures['scorer_tokens_per_s']} tok/s = {figures['share_of_ceiling']:.2f} of the"
            f" ceiling ({figures['ceiling_tokens_per_s']} tok/s)"
        )
        if "speedup" in figures:
            line += f", {figures['speedup']}x the naive loop"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def _setup(args: argparse.Namespace) -> tuple[Any, ...]:
    import torch

    from recycled_datasets.models import load_model, load_tokenizer, resolve_student
    from recycled_datasets.records import Pair
    from recycled_datasets.scoring import ScoreConfig, score_pairs
    from recycled_datasets.sources import read_source

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = resolve_student(args.student, template=args.template)
    rows = read_source(args.data, limit=args.rows * (2 if args.cli else 1)).rows
    pairs = [Pair(r.instruction, r.input, r.output) for r in rows]
    model = load_model(spec, dtype=args.dtype, device=device)  # loaded before timing: scoring is measured
    tokenizer = load_tokenizer(spec)
    config = ScoreConfig(max_length=args.max_length, dtype=args.dtype, batch_tokens=args.batch_tokens, device=device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    # One pair scored before any timing, so first-call costs (imports of polars and pyarrow, the head's fp32
    # copy, kernel set-up) fall on no side of the comparison.
    score_pairs(pairs[:1], spec, config)
    sync()
    return torch, device, spec, pairs, model, tokenizer, config, sync


def scorer_figures(args: argparse.Namespace) -> dict[str, Any]:
    torch, device, spec, pairs, model, tokenizer, config, sync = _setup(args)
    from recycled_datasets.models import load_model
    from recycled_datasets.scoring import score_pairs, scoring_of
    from recycled_datasets.scoring.engine import batch_tensors, batch_tokens_for, forward_hidden, make_batches
    from recycled_datasets.scoring.naive import naive_losses
    from recycled_datasets.scoring.plan import Planner

    naive_model = None if args.no_naive else load_model(spec, dtype="float32", device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    budget = batch_tokens_for(device, args.batch_tokens)
    scoring = scoring_of(config, spec, spec.template, pairs)  # the scorer's token layout, for every side
    seconds = {"ceiling": 0.0, "scorer": 0.0, "naive": 0.0}
    cpu = dict.fromkeys(seconds, 0.0)  # CPU seconds: steadier than wall time when others share the cores
    losses: dict[str, float] = {}
    plans, frames, all_jobs = [], [], []
    real = padded = scored = 0

    def ceiling(tensors: list) -> None:
        with torch.inference_mode():
            for ids, mask in tensors:
                forward_hidden(model, ids, mask)

    def scorer(part: list) -> None:
        frames.append(score_pairs(part, spec, config))

    def naive(part: list) -> None:
        naive_planner = Planner(tokenizer, spec.template, args.max_length, scoring)  # the naive side plans too
        naive_planner.plan(part)
        losses.update(naive_losses(naive_model, list(naive_planner.jobs.values()), device=device))

    for i, lo in enumerate(range(0, len(pairs), args.chunk)):
        part = pairs[lo : lo + args.chunk]
        # The ceiling's batches are the scorer's own: the same planner and batcher over the same chunk.
        planner = Planner(tokenizer, spec.template, args.max_length, scoring)
        plans.extend(planner.plan(part))
        jobs = list(planner.jobs.values())
        all_jobs.extend(jobs)
        batches = make_batches(jobs, budget)
        tensors = [tuple(t.to(device) for t in batch_tensors(b, pad_id)) for b in batches]
        real += sum(len(j.ids) for j in jobs)
        padded += sum(len(b) * max(len(j.ids) for j in b) for b in batches)
        scored += sum(j.n for j in jobs)

        sides = {"ceiling": partial(ceiling, tensors), "scorer": partial(scorer, part)}
        if naive_model is not None:
            sides["naive"] = partial(naive, part)
        names = list(sides)
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
            sync()
            started, own = time.perf_counter(), time.process_time()
            sides[name]()
            sync()
            seconds[name] += time.perf_counter() - started
            cpu[name] += time.process_time() - own
        done = lo + len(part)
        print(f"rows {done}/{len(pairs)}: " + ", ".join(f"{k} {seconds[k]:.1f} s" for k in names), flush=True)

    n = len(pairs)
    figures: dict[str, Any] = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "torch_threads": torch.get_num_threads(),
        "student": spec.key,
        "dtype": args.dtype,
        "template": spec.template,
        "scoring": scoring,
        "rows": n,
        "chunk_rows": args.chunk,
        "sequences": len(all_jobs),
        "tokens": real,
        "padded_tokens": padded,
        "padding_waste": round(padded / real - 1, 4),
        "head_positions": scored,
        "ceiling_seconds": round(seconds["ceiling"], 2),
        "scorer_seconds": round(seconds["scorer"], 2),
        "ceiling_tokens_per_s": round(real / seconds["ceiling"], 1),
        "scorer_tokens_per_s": round(real / seconds["scorer"], 1),
        "share_of_ceiling": round(seconds["ceiling"] / seconds["scorer"], 3),
        "share_of_ceiling_cpu_time": round(cpu["ceiling"] / cpu["scorer"], 3),
        "scorer_ms_per_row": round(1000 * seconds["scorer"] / n, 1),
    }
    if naive_model is not None:
        figures |= {
            "naive_fp32_seconds": round(seconds["naive"], 2),
            "naive_ms_per_row": round(1000 * seconds["naive"] / n, 1),
            "speedup": round(seconds["naive"] / seconds["scorer"], 2),
            "speedup_cpu_time": round(cpu["naive"] / cpu["scorer"], 2),
        }
        figures |= _agreement(plans, losses, frames)
    name = figures["device"]
    peak = _peak(name, args.peak_tflops) if device.startswith("cuda") or args.peak_tflops else None
    if peak:
        body, head = _model_flops(model, all_jobs, scored)
        figures |= {
            "peak_tflops": peak,
            "ceiling_mfu": round(body / seconds["ceiling"] / (peak * 1e12), 4),
            "scorer_mfu": round((body + head) / seconds["scorer"] / (peak * 1e12), 4),
        }
    elif device.startswith("cuda"):
        figures["mfu"] = f"unknown bf16 peak for {name}: pass --peak-tflops"
    # Projections: every source row is scored as four variants, each taken as long as this sample's pairs.
    per_pair = seconds["scorer"] / n
    figures["tokens_per_pair"] = round(real / n, 1)
    for key, total in FULL_SETS.items():
        hours = total * VARIANTS_PER_ROW * per_pair / 3600
        figures[f"projected_hours_{key}_{total}_rows_1_device"] = round(hours, 2)
        figures[f"projected_hours_{key}_{total}_rows_{args.gpus}_devices"] = round(hours / args.gpus, 2)
    return figures


def _agreement(plans: list, losses: dict[str, float], frames: list) -> dict[str, Any]:
    import polars as pl

    frame = pl.concat(frames)

    def ratio(cond: str | None, direct: str | None) -> float | None:
        return math.exp(losses[cond] - losses[direct]) if cond and direct else None

    naive_ifd = [ratio(p.jobs[0], p.jobs[1]) for p in plans]
    naive_rifd = [ratio(p.jobs[2], p.jobs[3]) for p in plans]

    def compare(fast: list, naive: list) -> tuple[float, float, float]:
        both = [(f, n) for f, n in zip(fast, naive, strict=True) if f is not None and n is not None]
        max_abs = max(abs(f - n) for f, n in both)
        max_rel = max(abs(f - n) / n for f, n in both)
        agree = sum((f < 1) == (n < 1) for f, n in both) / len(both)
        return max_abs, max_rel, agree

    ifd_abs, ifd_rel, ifd_agree = compare(frame["ifd"].to_list(), naive_ifd)
    rifd_abs, rifd_rel, rifd_agree = compare(frame["rifd"].to_list(), naive_rifd)
    return {
        "max_abs_ifd_diff": round(ifd_abs, 6),
        "max_rel_ifd_diff": round(ifd_rel, 6),
        "max_abs_rifd_diff": round(rifd_abs, 6),
        "max_rel_rifd_diff": round(rifd_rel, 6),
        "ifd_lt1_agreement": ifd_agree,
        "rifd_lt1_agreement": rifd_agree,
    }


def cli_figures(args: argparse.Namespace) -> dict[str, Any]:
    """Per-row cost of `srecycle score` against the in-process scorer, both as time(2N rows) - time(N rows).

    The difference cancels what does not grow with the rows (interpreter and import start-up, model load), so
    the two per-row figures should agree; their ratio is the CLI's own per-row overhead.
    """
    torch, device, spec, pairs, model, tokenizer, config, sync = _setup(args)
    from recycled_datasets.scoring import score_pairs

    n = args.rows
    seconds: dict[tuple[str, int], float] = {}
    cpu: dict[tuple[str, int], float] = {}  # CPU seconds: steadier than wall time when others share the cores
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="bench-score-cli-") as tmp:
        for k in (n, 2 * n):
            command = [
                sys.executable, "-m", "recycled_datasets", "score", str(args.data), "--student", args.student,
                "--template", args.template, "--dtype", args.dtype, "--max-length", str(args.max_length),
                "--limit", str(k), "--output", str(Path(tmp) / f"cli-{k}.parquet"),
            ]  # fmt: skip
            if args.batch_tokens:
                command += ["--batch-tokens", str(args.batch_tokens)]
            started, kids = time.perf_counter(), _children_seconds()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            seconds[("cli", k)] = time.perf_counter() - started
            cpu[("cli", k)] = _children_seconds() - kids
            if done.returncode != 0:
                raise SystemExit(f"srecycle score failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            sync()
            started, own = time.perf_counter(), time.process_time()
            score_pairs(pairs[:k], spec, config)
            sync()
            seconds[("inproc", k)] = time.perf_counter() - started
            cpu[("inproc", k)] = time.process_time() - own
            print(f"{k} rows: cli {seconds[('cli', k)]:.1f} s, in-process {seconds[('inproc', k)]:.1f} s", flush=True)
    cli = (seconds[("cli", 2 * n)] - seconds[("cli", n)]) / n
    inproc = (seconds[("inproc", 2 * n)] - seconds[("inproc", n)]) / n
    cli_cpu = (cpu[("cli", 2 * n)] - cpu[("cli", n)]) / n
    inproc_cpu = (cpu[("inproc", 2 * n)] - cpu[("inproc", n)]) / n
    return {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "torch_threads": torch.get_num_threads(),
        "student": spec.key,
        "dtype": args.dtype,
        "template": spec.template,
        **{f"{side}_seconds_{k}_rows": round(v, 2) for (side, k), v in seconds.items()},
        "cli_ms_per_row": round(1000 * cli, 1),
        "inproc_ms_per_row": round(1000 * inproc, 1),
        "cli_over_inproc": round(cli / inproc, 3),
        "cli_fixed_seconds": round(seconds[("cli", n)] - n * cli, 2),
        "cli_cpu_ms_per_row": round(1000 * cli_cpu, 1),
        "inproc_cpu_ms_per_row": round(1000 * inproc_cpu, 1),
        "cli_over_inproc_cpu": round(cli_cpu / inproc_cpu, 3),
    }


if __name__ == "__main__":
    sys.exit(main())
