"""The GPU worker's throughput against raw vLLM, in one run on the same prompts and engine:

1. raw vLLM: offline `LLM.generate` on every prompt at once, in a child process that builds
   the engine, times only the `generate` call and exits (its engine is gone before promptq's
   loads);
2. promptq: a fresh database, a private Redis, `promptq api`, `promptq scheduler` and
   `promptq worker gpu`; once the worker has logged `worker.ready` (its engine loaded), a
   batch of the same prompts is created and timed until it is `completed`.

Both sides get the same chat messages rendered with the model's chat template, greedy
sampling (temperature 0), the same max_tokens, and the engine options of one models-file
entry (max_num_seqs, max_model_len, dtype, KV cache size, enforce_eager), so output token
totals are comparable; the figure is output tokens per second, promptq / raw.

    .venv/bin/python bench/gpu_throughput.py [--prompts 1000] [--max-tokens 64]

Results: a table on stdout and bench/out/gpu-throughput-<date>.json; logs in
bench/out/logs-gpu/.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from common import (
    Child,
    CpuMeter,
    api_client,
    free_port,
    group_process_cpu,
    load_average,
    machine_busy_seconds,
    machine_info,
    make_api_key,
    raise_on_sigterm,
    source_state,
    temp_database,
    upload,
    wait_batch,
    wait_http,
    wait_until,
)
from pipeline import spawn, start_redis

from promptq.constants import BROKER_EPOCH_KEY

MODEL = "bench-llm"  # the models-file name of the model
OUT_DIR = Path(__file__).resolve().parent / "out"
GIB = 1 << 30


# --- inputs ----------------------------------------------------------------------------------

_TOPICS = [
    "photosynthesis",
    "compound interest",
    "the water cycle",
    "TCP handshakes",
    "inflation",
    "vaccines",
    "black holes",
    "supply chains",
    "recursion",
    "plate tectonics",
    "jazz",
    "the Roman Republic",
    "solar panels",
    "database indexes",
    "sleep",
    "coral reefs",
]
_ASKS = [
    "Explain {t} to a twelve-year-old.",
    "What is {t}? Answer in two sentences.",
    "Give three surprising facts about {t}.",
    "Write a short poem about {t}.",
    "List the pros and cons of {t} as bullet points.",
    "How would you teach {t} in a five-minute lesson?",
]
_REPORT = (
    "the company reported quarterly revenue growth across all regions while costs rose "
    "slightly customers in europe and asia ordered more units than expected the board "
    "approved a new plan to expand the warehouse network and hire engineers margins "
    "improved because of lower shipping prices and a stronger product mix analysts "
    "expect demand to slow next year as interest rates stay high"
)
_WORDS = _REPORT.split(" ")


def _document(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 20))]
        out.append(f"{' '.join(words).capitalize()} in {rng.randint(2001, 2026)}.")
    return " ".join(out)


def prompt_texts(count: int, seed: int = 7) -> list[str]:
    """`count` user messages of varied length: short questions and documents to summarise
    (about 10 to 400 prompt tokens after the chat template)."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        if i % 2:
            texts.append(rng.choice(_ASKS).format(t=rng.choice(_TOPICS)))
        else:
            doc = _document(rng, rng.choice([1, 2, 3, 5, 8, 13, 20]))
            texts.append(f"Summarise this report (#{i}) in one sentence.\n\n{doc}")
    return texts


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def write_batch_file(path: Path, texts: list[str], max_tokens: int) -> None:
    with path.open("w") as fh:
        for i, text in enumerate(texts):
            body = {
                "model": MODEL,
                "messages": messages(text),
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            line = {"custom_id": f"p-{i}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(json.dumps({**line, "body": body}) + "\n")


def models_toml(args: argparse.Namespace) -> str:
    """The one models-file entry both sides take their engine options from."""
    lines = [
        "[[models]]",
        f'name = "{MODEL}"',
        'backend = "vllm"',
        f"source = {json.dumps(args.source)}",
        f"max_num_seqs = {args.max_num_seqs}",
        f"max_model_len = {args.max_model_len}",
        f'dtype = "{args.dtype}"',
        f"enforce_eager = {'true' if args.eager else 'false'}",
    ]
    if args.kvcache_gib:
        lines.append(f"cpu_kvcache_gib = {args.kvcache_gib}")  # applied only without a GPU
    if args.gpu_memory_utilization:
        lines.append(f"gpu_memory_utilization = {args.gpu_memory_utilization}")
    return "\n".join(lines) + "\n"


def engine_spec(models_file: Path, home: Path) -> dict[str, Any]:
    """promptq's own EngineOptions for the entry, as a dict (what the raw side is built from)."""
    from dataclasses import asdict

    from promptq.catalog import load_catalog
    from promptq.config import Settings
    from promptq.workers.gpu_worker import engine_options

    entry = load_catalog(models_file)[MODEL]
    return asdict(engine_options(entry, Settings(home=home, models_file=models_file)))


# --- part 1: raw vLLM, in a child process ------------------------------------------------------


def llm_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    """`LLM(...)` keyword arguments for promptq's EngineOptions, as promptq's engine maps them
    (vllm_engine._engine_args), without its priority scheduling: a plain offline run."""
    from vllm.platforms import current_platform

    kwargs: dict[str, Any] = {
        "model": options["model_path"],
        "max_num_seqs": options["max_num_seqs"],
        "dtype": options["dtype"],
        "seed": options["seed"],
        "enforce_eager": options["enforce_eager"],
    }
    if options["max_model_len"] is not None:
        kwargs["max_model_len"] = options["max_model_len"]
    if options["gpu_memory_utilization"] is not None:
        kwargs["gpu_memory_utilization"] = options["gpu_memory_utilization"]
    if options["cpu_kvcache_gib"] is not None and current_platform.is_cpu():
        kwargs["kv_cache_memory_bytes"] = int(options["cpu_kvcache_gib"] * GIB)
    return kwargs


_ROLES = {"VLLM::EngineCor": "engine core", "VLLM::Worker": "model runner"}


def by_role(cpu: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds keyed `comm:pid` summed by what the process is: vLLM's engine core, its
    model runner, or the process that started them ("main")."""
    out: dict[str, float] = {}
    for name, seconds in cpu.items():
        role = _ROLES.get(name.rsplit(":", 1)[0], "main")
        out[role] = round(out.get(role, 0.0) + seconds, 2)
    return out


def per_runner_cpu(result: Mapping[str, Any], cpu: Mapping[str, float]) -> float | None:
    """Output tokens per CPU second of vLLM's model-runner process: on a shared CPU-only
    machine, a figure that other users' load changes less than the wall-clock rate."""
    runner = cpu.get("model runner")
    return round(result["output_tokens"] / runner, 1) if runner else None


def _cpu_reading() -> dict[str, Any]:
    return {"machine": machine_busy_seconds(), "procs": group_process_cpu(os.getpgrp())}


def _cpu_used(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, float]:
    """CPU seconds per process of this process group (this one, vLLM's engine core) and of
    everything else on the machine, between two readings."""
    used = {
        name: round(after["procs"][name] - before["procs"].get(name, 0.0), 2)
        for name in after["procs"]
    }
    used = by_role(used)
    machine = after["machine"] - before["machine"]
    used["other processes"] = round(max(0.0, machine - sum(used.values())), 2)
    return used


def raw_child_main(spec_path: Path, out_path: Path) -> None:
    """Build `LLM` from the spec, render and tokenize the prompts as promptq does, and time
    one `LLM.generate` call over all of them."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = json.loads(spec_path.read_text())
    kwargs = llm_kwargs(spec["engine"])
    started = time.perf_counter()
    llm = LLM(**kwargs)
    load_s = time.perf_counter() - started
    config = llm.llm_engine.vllm_config
    tokenizer: Any = llm.get_tokenizer()
    max_len = int(config.model_config.max_model_len)
    prompts, params = [], []
    for text in spec["texts"]:
        # As VllmEngine._prompt_ids: the template writes the special tokens itself.
        rendered = tokenizer.apply_chat_template(
            messages(text), tokenize=False, add_generation_prompt=True
        )
        ids = [int(t) for t in tokenizer.encode(str(rendered), add_special_tokens=False)]
        prompts.append(TokensPrompt(prompt_token_ids=ids))
        room = max_len - len(ids)
        params.append(SamplingParams(temperature=0.0, max_tokens=min(spec["max_tokens"], room)))
    load = load_average()
    before = _cpu_reading()
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    cpu = _cpu_used(before, _cpu_reading())
    result = {
        "engine_kwargs": kwargs,
        "engine_load_s": round(load_s, 1),
        "resolved": {
            "max_num_seqs": config.scheduler_config.max_num_seqs,
            "max_model_len": max_len,
            "dtype": str(config.model_config.dtype),
            "kv_cache_blocks": config.cache_config.num_gpu_blocks,
            "block_size": config.cache_config.block_size,
            "scheduling_policy": str(config.scheduler_config.policy),
        },
        "prompts": len(prompts),
        "prompt_tokens": sum(len(p["prompt_token_ids"]) for p in prompts),
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "generate_s": round(elapsed, 3),
        "load_1min_at_start": load,
        "cpu_s": cpu,
        "completions": [
            {"tokens": len(o.outputs[0].token_ids), "text": o.outputs[0].text} for o in outputs
        ],
    }
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(out_path)  # the parent stops this process once the file is there
    # Without this, interpreter exit waits forever for the engine process to end.
    llm.llm_engine.engine_core.shutdown()


def run_raw(
    spec: Mapping[str, Any], work_dir: Path, log_dir: Path, timeout: float
) -> dict[str, Any]:
    """The raw baseline in its own process: its engine is gone when this returns."""
    spec_path, out_path = work_dir / "raw-spec.json", work_dir / "raw-result.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)  # the previous round's
    args = [sys.executable, str(Path(__file__).resolve()), "--raw-child", str(spec_path)]
    args += ["--raw-out", str(out_path)]
    proc = Child("raw-vllm", args, {}, log_dir)
    try:
        wait_until(lambda: out_path.exists() or not proc.alive(), timeout, "raw vLLM", interval=0.5)
        with suppress(TimeoutError):  # it shuts its engine down; else it is stopped below
            wait_until(lambda: not proc.alive(), 60, "raw vLLM to exit", interval=0.5)
    finally:
        proc.stop()
        # The engine's processes hold the accelerator's memory until they are gone.
        wait_until(lambda: not group_process_cpu(proc.pid), 60, "raw vLLM's engine to exit")
    if not out_path.exists():
        raise RuntimeError(f"raw vLLM failed:\n{proc.log_text()[-4000:]}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    result["output_tokens_per_s"] = round(result["output_tokens"] / result["generate_s"], 1)
    result["output_tokens_per_runner_cpu_s"] = per_runner_cpu(result, result["cpu_s"])
    return result


# --- part 2: promptq --------------------------------------------------------------------------


def start_gpu_worker(stack: ExitStack, env: Mapping[str, str], log_dir: Path, name: str) -> Child:
    """`promptq worker gpu`, returned once its engine is loaded and Celery consumes."""
    args = ["worker", "gpu", "--model", MODEL]
    proc = spawn(stack, Child.promptq(name, args, env, log_dir))
    wait_until(
        lambda: "worker.ready" in proc.log_text() or not proc.alive(),
        1800,
        "GPU worker",
        interval=0.5,
    )
    if not proc.alive():
        raise RuntimeError(f"the GPU worker exited:\n{proc.log_text()[-4000:]}")
    return proc


@contextmanager
def py_spy(pid: int, seconds: float, out: Path) -> Iterator[None]:
    """py-spy on `pid` and its children (vLLM's engine core) while the block runs."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    args = [exe, "record", "--pid", str(pid), "--nonblocking", "--subprocesses", "--threads"]
    args += ["-r", "50", "-d", str(int(seconds)), "--format", "raw", "-o", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        try:
            proc.wait(seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_output(client: Any, file_id: str) -> dict[str, dict[str, Any]]:
    response = client.get(f"/v1/files/{file_id}/content")
    response.raise_for_status()
    out = {}
    for line in response.text.splitlines():
        row = json.loads(line)
        body = row["response"]["body"]
        out[row["custom_id"]] = {
            "tokens": body["usage"]["completion_tokens"],
            "text": body["choices"][0]["message"]["content"],
        }
    return out


def run_promptq(
    args: argparse.Namespace, env: Mapping[str, str], batch_file: Path, log_dir: Path, tag: str
) -> dict[str, Any]:
    """API, scheduler and one GPU worker on a fresh database; one batch, create to completed."""
    prompts = args.prompts
    with ExitStack() as stack:
        db_url = stack.enter_context(temp_database(prefix="benchgpu"))
        redis_proc, redis_port = start_redis(stack, log_dir)
        env = {
            **env,
            "PROMPTQ_DATABASE_URL": db_url,
            "PROMPTQ_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        }
        port = free_port()
        api = spawn(stack, Child.promptq(f"api{tag}", ["api", "--port", str(port)], env, log_dir))
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz")
        scheduler = spawn(stack, Child.promptq(f"scheduler{tag}", ["scheduler"], env, log_dir))
        broker = redis.Redis(port=redis_port)
        # A first sweep that finds no broker epoch re-publishes every queued job: wait for it.
        wait_until(lambda: bool(broker.exists(BROKER_EPOCH_KEY)), 60, "the scheduler's first sweep")
        load_started = time.perf_counter()
        worker = start_gpu_worker(stack, env, log_dir, f"gpu-worker{tag}")
        worker_start_s = time.perf_counter() - load_started
        procs = {"api": api, "scheduler": scheduler, "gpu worker": worker, "redis": redis_proc}
        print(f"  pids: {', '.join(f'{n} {p.pid}' for n, p in procs.items())}", flush=True)
        with api_client(url, make_api_key(db_url, "bench-gpu")) as client:
            file_id, upload_s = upload(client, batch_file)
            load = load_average()
            meter = CpuMeter(procs)
            split_before = group_process_cpu(worker.pid)
            with ExitStack() as profiling:
                if args.py_spy:
                    out = OUT_DIR / f"gpu-throughput-pyspy{tag}.txt"
                    profiling.enter_context(py_spy(worker.pid, args.py_spy, out))
                start = time.perf_counter()
                response = client.post(
                    "/v1/batches",
                    json={
                        "input_file_id": file_id,
                        "endpoint": "/v1/chat/completions",
                        "completion_window": "24h",
                    },
                )
                response.raise_for_status()
                # Polled twice a second: each GET summarises the batch's jobs, CPU that the
                # engine would otherwise get; the error is under 0.5 s of a minutes-long run.
                done = wait_batch(client, response.json()["id"], args.timeout, procs, interval=0.5)
                elapsed = time.perf_counter() - start
                cpu = meter.used()
                split_after = group_process_cpu(worker.pid)
            completions = _read_output(client, done["output_file_id"] or "")
    counts = done["request_counts"]
    if done["status"] != "completed" or counts["completed"] != prompts:
        raise RuntimeError(f"batch ended {done['status']} {counts}")
    split = {
        name: round(split_after[name] - split_before.get(name, 0.0), 2) for name in split_after
    }
    output_tokens = int(done["usage"]["output_tokens"])
    return {
        "chunk_size": int(env.get("PROMPTQ_CHUNK_SIZE", 32)),
        "env": {k: v for k, v in env.items() if k not in ("PROMPTQ_DATABASE_URL",)},
        "worker_start_to_ready_s": round(worker_start_s, 1),
        "upload_s": round(upload_s, 3),
        "create_to_completed_s": round(elapsed, 3),
        "prompts": prompts,
        "prompt_tokens": int(done["usage"]["input_tokens"]),
        "output_tokens": output_tokens,
        "output_tokens_per_s": round(output_tokens / elapsed, 1),
        "load_1min_at_start": load,
        "cpu_s": cpu,
        "gpu_worker_cpu_by_process_s": by_role(split),
        "output_tokens_per_runner_cpu_s": per_runner_cpu(
            {"output_tokens": output_tokens}, by_role(split)
        ),
        "completions": [completions[f"p-{i}"] for i in range(prompts)],
    }


# --- comparison and report -------------------------------------------------------------------


def agreement(raw: Mapping[str, Any], mine: Mapping[str, Any]) -> dict[str, Any]:
    """How many prompts got the same text and the same token count on both sides."""
    pairs = list(zip(raw["completions"], mine["completions"], strict=True))
    return {
        "same_text": sum(a["text"] == b["text"] for a, b in pairs),
        "same_token_count": sum(a["tokens"] == b["tokens"] for a, b in pairs),
        "prompts": len(pairs),
    }


def _cpu_line(cpu: Mapping[str, float], seconds: float) -> str:
    return ", ".join(f"{name} {used:.1f}s ({used / seconds:.0%})" for name, used in cpu.items())


def _raw_rows(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (
            f"[{raw['round']}] raw vLLM, LLM.generate",
            f"{raw['output_tokens_per_s']:.1f} output tok/s "
            f"({raw['output_tokens']} tokens in {raw['generate_s']:.1f} s; "
            f"engine load {raw['engine_load_s']:.0f} s)",
        ),
        ("  prompt tokens", str(raw["prompt_tokens"])),
        ("  CPU (share of wall)", _cpu_line(raw["cpu_s"], raw["generate_s"])),
        ("  output tokens per runner CPU s", str(raw["output_tokens_per_runner_cpu_s"])),
        ("  load average at start", f"{raw['load_1min_at_start']:.2f}"),
    ]


def _promptq_rows(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    wall = run["create_to_completed_s"]
    rows = [
        (
            f"[{run['round']}] promptq, chunk size {run['chunk_size']}",
            f"{run['output_tokens_per_s']:.1f} output tok/s "
            f"({run['output_tokens']} tokens in {wall:.1f} s; "
            f"worker start to ready {run['worker_start_to_ready_s']:.0f} s)",
        ),
        ("  prompt tokens", str(run["prompt_tokens"])),
        ("  CPU (share of wall)", _cpu_line(run["cpu_s"], wall)),
        ("  GPU worker by process", _cpu_line(run["gpu_worker_cpu_by_process_s"], wall)),
        ("  output tokens per runner CPU s", str(run["output_tokens_per_runner_cpu_s"])),
        ("  load average at start", f"{run['load_1min_at_start']:.2f}"),
    ]
    if "ratio" in run:
        same = run["agreement"]
        rows.append(
            (
                "  same output as raw",
                f"{same['same_text']}/{same['prompts']} texts, "
                f"{same['same_token_count']}/{same['prompts']} token counts",
            )
        )
        rows.append(("  promptq / raw (same round)", f"{run['ratio']:.3f}"))
        if "runner_cpu_ratio" in run:
            rows.append(("  same, per runner CPU second", f"{run['runner_cpu_ratio']:.3f}"))
    return rows


def summary_rows(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    runs = sorted(
        results["raw_runs"] + results["promptq_runs"],
        key=lambda r: (r["round"], "generate_s" not in r),
    )
    for run in runs:
        rows += _raw_rows(run) if "generate_s" in run else _promptq_rows(run)
    if "best_ratio" in results:
        rows.append(("promptq / raw (best of each)", f"{results['best_ratio']:.3f}"))
    return rows


def print_summary(results: Mapping[str, Any]) -> None:
    rows = summary_rows(results)
    width = max(len(name) for name, _ in rows)
    m = results["machine"]
    print(
        f"\n{results['prompts']} prompts, max_tokens {results['max_tokens']}, "
        f"engine {results['engine']}, {m['nproc']} CPUs ({m['cpu_model']}), "
        f"{results['date']}, {results['source']}"
    )
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _out_path(day: str) -> Path:
    out, n = OUT_DIR / f"gpu-throughput-{day}.json", 1
    while out.exists():
        n += 1
        out = OUT_DIR / f"gpu-throughput-{day}-{n}.json"
    return out


def parse_env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("PROMPTQ_"):
        raise argparse.ArgumentTypeError(f"{text!r} is not PROMPTQ_NAME=VALUE")
    return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--eager", action="store_true", help="enforce_eager (faster load)")
    parser.add_argument("--dtype", default="auto", help="auto: the built-in model's own dtype")
    parser.add_argument(
        "--kvcache-gib", type=float, default=2.0, help="cpu_kvcache_gib (ignored with a GPU)"
    )
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument(
        "--source", default="smollm2-135m", help="a built-in model, a directory or an HF id"
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        action="append",
        help="PROMPTQ_CHUNK_SIZE (repeatable: one promptq run, one engine load, each); "
        "default promptq's own",
    )
    parser.add_argument(
        "--env", type=parse_env, action="append", default=[], help="PROMPTQ_X=V for promptq"
    )
    parser.add_argument("--parts", default="raw,promptq", help="raw,promptq (in that order)")
    parser.add_argument(
        "--home",
        type=Path,
        default=Path.home() / ".cache" / "promptq",
        help="PROMPTQ_HOME (where built-in models are converted and cached)",
    )
    parser.add_argument("--py-spy", type=float, default=0, help="profile the worker N seconds")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate raw and promptq N times (shared machine)"
    )
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--raw-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--raw-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_all(args: argparse.Namespace, log_dir: Path, work_dir: Path, out: Path) -> dict[str, Any]:
    """Every round; the results so far are written to `out` after each run (a run on a shared
    machine may be stopped half way)."""
    models_file = work_dir / "models.toml"
    models_file.write_text(models_toml(args))
    engine = engine_spec(models_file, args.home)
    texts = prompt_texts(args.prompts)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).date().isoformat(),
        "command": " ".join([".venv/bin/python", "bench/gpu_throughput.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "source": source_state(OUT_DIR.parent.parent),
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "models_file": models_file.read_text(),
        "engine": {k: v for k, v in engine.items() if k != "model_path"},
        "raw_runs": [],
        "promptq_runs": [],
    }
    batch_file = work_dir / "batch.jsonl"
    write_batch_file(batch_file, texts, args.max_tokens)
    env = {
        "PROMPTQ_MODELS_FILE": str(models_file),
        "PROMPTQ_HOME": str(args.home),
        "PROMPTQ_LOG_LEVEL": "info",
        **dict(args.env),
    }
    parts = args.parts.split(",")
    for round_no in range(1, args.rounds + 1):
        if "raw" in parts:
            print(f"[{round_no}] raw vLLM, {args.prompts} prompts (load first) ...", flush=True)
            spec = {"engine": engine, "texts": texts, "max_tokens": args.max_tokens}
            raw = run_raw(spec, work_dir, log_dir, args.timeout)
            results["raw_runs"].append({"round": round_no, **raw})
            save(compare(results), out)
        for chunk in args.chunk_size or [None] if "promptq" in parts else []:
            run_env = {**env, "PROMPTQ_CHUNK_SIZE": str(chunk)} if chunk else env
            tag = f"-r{round_no}" + (f"-c{chunk}" if chunk else "")
            print(f"[{round_no}] promptq, chunk size {chunk or 'default'} ...", flush=True)
            run = run_promptq(args, run_env, batch_file, log_dir, tag)
            results["promptq_runs"].append({"round": round_no, **run})
            save(compare(results), out)
    return compare(results)


def compare(measured: Mapping[str, Any]) -> dict[str, Any]:
    """The results with each promptq run compared to the raw run of its round (the nearest in
    time, so under about the same machine load) and the best of each side; the completions
    reduced to their token counts."""
    results = copy.deepcopy(dict(measured))
    raws = {r["round"]: r for r in results["raw_runs"]}
    for run in results["promptq_runs"]:
        raw = raws.get(run["round"])
        if raw is not None:
            run["agreement"] = agreement(raw, run)
            run["ratio"] = round(run["output_tokens_per_s"] / raw["output_tokens_per_s"], 3)
            mine = run["output_tokens_per_runner_cpu_s"]
            theirs = raw["output_tokens_per_runner_cpu_s"]
            if mine and theirs:
                run["runner_cpu_ratio"] = round(mine / theirs, 3)
    if raws and results["promptq_runs"]:
        best_raw = max(raws.values(), key=lambda r: r["output_tokens_per_s"])
        best = max(results["promptq_runs"], key=lambda r: r["output_tokens_per_s"])
        ratio = best["output_tokens_per_s"] / best_raw["output_tokens_per_s"]
        results["best_ratio"] = round(ratio, 3)
    for run in results["raw_runs"] + results["promptq_runs"]:
        run["completion_tokens"] = [c["tokens"] for c in run.pop("completions")]
    return results


def save(results: Mapping[str, Any], out: Path) -> None:
    out.write_text(json.dumps(results, indent=2) + "\n")


def main() -> int:
    args = parse_args()
    if args.raw_child:
        raw_child_main(args.raw_child, args.raw_out)
        return 0
    raise_on_sigterm()
    log_dir = OUT_DIR / "logs-gpu"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    out = _out_path(datetime.now(UTC).date().isoformat())
    out.write_text("{}\n")  # claims the name
    with tempfile.TemporaryDirectory(prefix="promptq-gpu-bench-") as tmp:
        results = run_all(args, log_dir, Path(tmp), out)
    print_summary(results)
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
