"""Benchmark: how a whole build grows with the rows, per stage, in seconds and peak memory (issue 22).

For each size N it writes N source rows (the real Alpaca rows of ../shared/data repeated, each repeat made
unique by " (variant k)" on its instruction; the bundled sample rows when ../shared/data is absent), starts a
fast fake OpenAI-compatible teacher on 127.0.0.1 and makes two tiny random Llama students (1 layer, hidden 32,
a 2,048-token BPE vocabulary trained on the rows). Then, every command in its own process so that its peak
RSS is its own (``os.wait4``):

- the real ``srecycle build`` on a fresh workdir (all stages), each stage's seconds and the process's peak RSS
  when the stage ends recorded in that process (``--measure``, below);
- a second student on that workdir (``srecycle build --student B``: score, select, release; no teacher);
- ``srecycle push --to-dir`` (the release exported as a repo folder; nothing is pushed, the Hub is offline).

It prints per N each step's seconds, ms per row and peak RSS, the growth from one N to the next (seconds per
row and peak RSS at N over the previous N) and the headline: the whole build's seconds per row at the last N
over the N before it (target <= 1.2) and its peak RSS at the last N (target < 3 GB). The machine's load is
printed before and after; the headline is withheld when the machine was not idle.

    python scripts/bench_scale.py --sizes 1000,3000             # a quick look
    python scripts/bench_scale.py                               # 1000, 10000, 52000 rows (the issue's sizes)
    python scripts/bench_scale.py --sizes 1000,10000 --json scale.json
    python scripts/bench_scale.py --no-second                   # the build only: half the time
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_score import ROOT, LoadMeter, cores  # noqa: E402  (the same idle check as the scoring benchmark)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_cherry_5pct.json"
TEACHER = "bench/fake-teacher"
TARGET_GROWTH = 1.2  # whole build: seconds per row at the last N over the N before
TARGET_PEAK_MB = 3000.0  # whole build: peak RSS at the last N (3 GB)
PROMPT_RE = re.compile(r"\[Instruction\]\n(.*?)\n(?:\n\[Input\]\n.*?\n)?\n\[Answer\]\n(.*)\n\nWork through", re.S)


# ---- the fake teacher ------------------------------------------------------------------------------------------


def fake_reply(prompt: str) -> str:
    """A reply that parses and passes the quality gates, a deterministic function of the prompt.

    The sections are as long as the row's own answer (scoring costs what real reflections would) and carry a
    digest of the prompt, so no two rows get the same text.
    """
    match = PROMPT_RE.search(prompt)
    instruction, answer = (match.group(1), match.group(2)) if match else (prompt[:80], prompt[-400:])
    digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:10]
    if "[New Instruction]" in prompt:
        topic = " ".join(instruction.split()[:6])  # never the whole original: the echo gate would refuse it
        return (
            "The instruction is vague and asks for little detail; the answer skips the reasoning.\n\n"
            f"[New Instruction] Give a detailed treatment of this topic with two worked examples and the "
            f"reasoning behind each: {topic} (case {digest}). [End]\n\n"
            f"[New Answer] {answer}\n\nTwo worked examples, case {digest}: each applies the idea above to a "
            "concrete situation and explains why every choice was made. [End]"
        )
    return (
        "The answer is correct in part but thin on detail.\n\n"
        f"[Better Answer] {answer}\n\nIn short (note {digest}): the points above, in order, each one checked. [End]"
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections
    wbufsize = 1 << 16  # one write per answer (no Nagle/delayed-ACK stalls on loopback)
    disable_nagle_algorithm = True
    timeout = 30  # a read blocks at most this long
    calls = 0
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {})
        elif self.path == "/v1/models":  # vLLM's form: the model and its context
            self._send(200, {"object": "list", "data": [{"id": TEACHER, "object": "model", "max_model_len": 8192}]})
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": f"no route {self.path}"})
            return
        prompt = body["messages"][-1]["content"]
        text = fake_reply(prompt)
        with _Handler.lock:
            _Handler.calls += 1
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        answer = {"id": "bench", "object": "chat.completion", "model": TEACHER, "choices": [choice]}
        self._send(200, answer | {"usage": usage})


class _Server(ThreadingHTTPServer):
    request_queue_size = 512
    daemon_threads = True


# ---- rows and students -----------------------------------------------------------------------------------------


def base_rows(data: Path) -> tuple[list[dict[str, str]], str]:
    """The rows to repeat, and a line saying where they came from."""
    if data.is_file():
        rows = json.loads(data.read_text(encoding="utf-8"))
        return rows, f"{len(rows)} real Alpaca rows from {data}"
    from recycled_datasets.stages.source import sample_path

    path = sample_path()
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows, f"FALLBACK: {data} not found; the project's {len(rows)} bundled sample rows ({path})"


def make_rows(base: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    """N rows: the base rows in turn, repeat k > 0 marked " (variant k)" on the instruction (unique rows)."""
    rows = []
    for i in range(n):
        row, k = base[i % len(base)], i // len(base)
        instruction = row["instruction"] + (f" (variant {k})" if k else "")
        rows.append({"instruction": instruction, "input": row.get("input", ""), "output": row["output"]})
    return rows


def make_students(texts: list[str], folders: list[Path]) -> None:
    """Tiny random Llamas (one per folder, seeds 0, 1, ...) sharing a 2,048-token byte-level BPE."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    for seed, folder in enumerate(folders):
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)


# ---- measured processes ----------------------------------------------------------------------------------------


# The child's own rusage, from a small process: a child forked from this one would count this process's peak
# RSS as its own (Linux keeps the pre-exec memory's high-water mark in the child's ru_maxrss).
WRAPPER = """import json, os, sys, time
started = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump([time.monotonic() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss], out)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(command: list[str], log: Path, timeout: float) -> dict[str, float]:
    """Run ``command`` (output to ``log``) and return its wall seconds, CPU seconds and own peak RSS (MB)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path)
    usage = log.with_suffix(".usage.json")
    wrapped = [sys.executable, "-S", "-c", WRAPPER, str(usage), *command]
    with log.open("w") as out:
        child = subprocess.Popen(
            wrapped, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
    try:
        code = child.wait(timeout=timeout)
    except BaseException as e:  # a timeout or Ctrl-C: the command has its own session, so it is ended here
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        if isinstance(e, subprocess.TimeoutExpired):
            raise SystemExit(
                f"timed out after {timeout:.0f} s: {' '.join(command)}\n{log.read_text()[-2000:]}"
            ) from None
        raise
    if code != 0:
        raise SystemExit(f"exit {code}: {' '.join(command)}\n{log.read_text()[-3000:]}")
    seconds, cpu, peak_kib = json.loads(usage.read_text())
    # ru_maxrss is in KiB on Linux
    return {"process_s": round(seconds, 3), "cpu_s": round(cpu, 2), "peak_mb": round(peak_kib * 1024 / 1e6, 1)}


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6, 1)  # ru_maxrss: KiB on Linux


def measure_main(result: Path, argv: list[str]) -> int:
    """``--measure RESULT ARGS...``: ``srecycle ARGS`` in this process, each stage's seconds and the process's
    peak RSS when the stage ends (RSS only grows, so the stage during which it rose is the one that used it)."""
    from recycled_datasets.cli import main as cli_main
    from recycled_datasets.stages.base import Stage

    records: dict[str, dict[str, Any]] = {}
    real = Stage.run

    def run(self: Stage) -> Any:
        start_mb = _peak_mb()
        stats = real(self)
        records[self.name] = {
            "stage_s": stats.seconds, "start_mb": start_mb, "peak_mb": _peak_mb(), "made": stats.made,
            "reused": stats.reused, "fallbacks": dict(stats.fallbacks),
        }  # fmt: skip
        return stats

    Stage.run = run  # type: ignore[method-assign]
    try:
        cli_main(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    result.write_text(json.dumps(records))
    return 0


def run_size(
    n: int, base: list[dict[str, str]], students: list[Path], url: str, tmp: Path, timeout: float, second: bool
) -> dict:
    """Every measured step at N rows: {step: figures}."""
    folder = tmp / f"n{n}"
    folder.mkdir()
    source = folder / "rows.json"
    source.write_text(json.dumps(make_rows(base, n)))
    steps: dict[str, dict[str, Any]] = {}
    me = [sys.executable, str(Path(__file__).resolve()), "--measure"]
    wd = str(folder / "build")
    options = ["--template", "alpaca", "--dtype", "float32", "--workdir", wd, "--quiet"]
    first = ["--source", str(source), "--student", str(students[0]), "--name", "tiny-a", "--teacher", url]
    builds = {
        "srecycle build (all)": ["build", *first, *options],
        "2nd student build": ["build", "--student", str(students[1]), "--name", "tiny-b", *options],
    }
    if not second:
        del builds["2nd student build"]
    for step, args in builds.items():
        result = folder / f"{step.split()[0]}.json"
        figures = measured([*me, str(result), *args], folder / f"{step.split()[0]}.log", timeout)
        prefix = "" if step.startswith("srecycle") else "2nd student: "
        for stage, detail in json.loads(result.read_text()).items():
            if stage == "reflect" and prefix:
                continue  # reused: the second student makes no teacher call
            steps[prefix + stage] = detail
        steps[step] = figures | {"stage_s": figures["process_s"]}
        print(f"  {n} rows: {step} {figures['process_s']:.1f} s, peak {figures['peak_mb']:.0f} MB", flush=True)
    export = [sys.executable, "-m", "recycled_datasets", "push", "--repo", "bench/srecycled-scale", "--workdir", wd,
              "--to-dir", str(folder / "export"), "--quiet"]  # fmt: skip
    steps["push --to-dir"] = measured(export, folder / "push.log", timeout)
    steps["push --to-dir"]["stage_s"] = steps["push --to-dir"]["process_s"]
    shutil.rmtree(folder)  # 52k rows' workdirs are large: one size on disk at a time
    for figures in steps.values():
        figures["ms_per_row"] = round(1000 * figures["stage_s"] / n, 3)
    return steps


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if found:
            return found.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return found.group(1).strip() if found else "unknown"


def _line(step: str, cells: list[Any], width: int) -> str:
    return f"{step:<22} " + " ".join(f"{'' if v is None else v:>{width}}" for v in cells)


def print_tables(per_n: dict[int, dict], growth: dict[str, dict]) -> None:
    keys = ("stage_s", "ms_per_row", "process_s", "cpu_s", "peak_mb", "start_mb")
    for n, steps in per_n.items():
        print(f"\n{n} rows\n" + _line("step", ["stage s", "ms/row", "process s", "cpu s", "peak MB", "start MB"], 10))
        for step, f in steps.items():
            print(_line(step, [f.get(k) for k in keys], 10))
    if growth:
        print("\ngrowth (figure at N over the figure at the previous N)")
        print(_line("step", [f"{pair} {what}" for pair in growth for what in ("s/row", "peak")], 16))
        for step in next(iter(per_n.values())):
            print(_line(step, [g[step][k] for g in growth.values() for k in ("s_per_row", "peak")], 16))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,52000", help="comma-separated row counts, ascending")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Alpaca JSON rows to repeat")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds any one command may take")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--no-second", action="store_true", help="skip the second student (half the time)")
    if sys.argv[1:2] == ["--measure"]:
        return measure_main(Path(sys.argv[2]), sys.argv[3:])
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    meter = LoadMeter.start()
    base, note = base_rows(args.data)
    print(note, flush=True)
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    per_n: dict[int, dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            students = [Path(tmp) / "student-a", Path(tmp) / "student-b"]
            texts = [f"{r['instruction']}\n{r.get('input', '')}\n{r['output']}" for r in base]
            make_students(texts, students)
            for n in sizes:
                calls = _Handler.calls
                per_n[n] = run_size(n, base, students, url, Path(tmp), args.timeout, not args.no_second)
                print(f"  {n} rows: {_Handler.calls - calls} teacher calls", flush=True)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    growth: dict[str, dict] = {}
    for prev, cur in zip(sizes, sizes[1:]):
        growth[f"{cur}/{prev}"] = {
            step: {
                "s_per_row": round((f["stage_s"] / cur) / (per_n[prev][step]["stage_s"] / prev), 3)
                if per_n[prev][step]["stage_s"] > 0 else None,
                "peak": round(f["peak_mb"] / per_n[prev][step]["peak_mb"], 3) if "peak_mb" in f else None,
            }
            for step, f in per_n[cur].items()
        }  # fmt: skip
    figures: dict[str, Any] = {"cpu_model": cpu_model(), "rows": note, "sizes": sizes, "per_n": per_n}
    figures |= {"growth": growth, "reflect_fallbacks": {n: s["reflect"]["fallbacks"] for n, s in per_n.items()}}
    figures |= meter.stop()
    print_tables(per_n, growth)
    print()
    for key in ("rows", "cpu_model", "cores", "load_before", "load_after", "other_busy_cores", "reflect_fallbacks"):
        print(f"{key:<18} {figures[key]}")
    build = "srecycle build (all)"
    if len(sizes) < 2:
        print("no headline: it needs two sizes")
    elif not figures["idle"]:
        print(f"no headline: the machine was not idle ({figures['not_idle_because']}); rerun on an idle machine")
    else:
        prev, cur = sizes[-2], sizes[-1]
        ratio, peak = growth[f"{cur}/{prev}"][build]["s_per_row"], per_n[cur][build]["peak_mb"]
        figures["headline"] = {"s_per_row_growth": ratio, "peak_mb": peak}
        print(
            f"headline: srecycle build s/row at {cur} over {prev}: {ratio} (target <= {TARGET_GROWTH}); "
            f"peak RSS at {cur}: {peak:.0f} MB (target < {TARGET_PEAK_MB:.0f} MB) on {cores()} cores"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
