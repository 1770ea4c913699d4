"""The `promptq` command."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from promptq.config import get_settings
from promptq.logs import configure_logging

app = typer.Typer(
    help="promptq: queue-backed asynchronous jobs for LLM prompts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
worker_app = typer.Typer(help="Run a worker.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")

ApiUrl = Annotated[str, typer.Option(envvar="PROMPTQ_API_URL", help="promptq's API.")]
ApiKeyOpt = Annotated[str, typer.Option(envvar="PROMPTQ_API_KEY", help="Your API key.")]


@app.callback()
def _main(log_level: Annotated[str, typer.Option(envvar="PROMPTQ_LOG_LEVEL")] = "info") -> None:
    configure_logging(log_level)


@app.command()
def api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from promptq.api.app import create_app

    uvicorn.run(create_app(), host=host, port=port, log_level="warning")


CheckOpt = Annotated[
    bool, typer.Option("--check", help="Exit 0 if a worker of this kind beat recently, else 1.")
]
BurstOpt = Annotated[
    bool, typer.Option("--burst", help="Run the queued jobs, then exit (no broker needed).")
]


@worker_app.command("remote")
def worker_remote(
    concurrency: Annotated[int, typer.Option(help="Provider requests in flight.")] = 256,
    loglevel: str = "warning",
    check: CheckOpt = False,
    burst: BurstOpt = False,
) -> None:
    """Run a remote worker (OpenAI-compatible and Anthropic providers)."""
    from promptq.workers.launch import check_workers, run_remote_worker

    if check:
        raise typer.Exit(check_workers(get_settings(), "remote"))
    run_remote_worker(get_settings(), concurrency=concurrency, loglevel=loglevel, burst=burst)


@worker_app.command("gpu")
def worker_gpu(
    model: Annotated[str | None, typer.Option(help="The vllm model to serve.")] = None,
    loglevel: str = "warning",
    check: CheckOpt = False,
    burst: BurstOpt = False,
) -> None:
    """Run a GPU worker: one vLLM engine for one model of the models file."""
    from promptq.workers.launch import check_workers, run_gpu_worker

    if check:
        raise typer.Exit(check_workers(get_settings(), "gpu"))
    run_gpu_worker(get_settings(), model=model, loglevel=loglevel, burst=burst)


@app.command()
def scheduler() -> None:
    """Run the sweeper: lease expiry, re-delivery, batch expiry and finalization."""
    from promptq.scheduler.service import run_scheduler

    asyncio.run(run_scheduler(get_settings()))


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations (a SQLite file under PROMPTQ_HOME by default)."""
    from promptq.migrate import upgrade

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url, revision)
    typer.echo(f"database at {revision}")


@keys_app.command("create")
def keys_create(
    name: str,
    tenant: Annotated[str | None, typer.Option(help="Defaults to NAME.")] = None,
    admin: bool = False,
    webhook_url: str | None = None,
) -> None:
    """Create an API key and print it (it is shown only once)."""
    from promptq.db import Database
    from promptq.keys import create_key

    async def _create() -> str:
        db = Database.from_settings(get_settings())
        try:
            async with db.session() as session:
                token, _ = await create_key(
                    session, name, tenant=tenant, admin=admin, webhook_url=webhook_url
                )
        finally:
            await db.dispose()
        return token

    typer.echo(asyncio.run(_create()))


@app.command()
def submit(
    file: Path,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKeyOpt = "",
    model: Annotated[str | None, typer.Option(help="Use this model for every line.")] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=9)] = None,
    wait: bool = False,
) -> None:
    """Submit a JSONL batch file; with --wait, show progress until it finishes."""
    from promptq.submit import submit_file

    batch = submit_file(api_url, api_key, file, model=model, priority=priority, wait=wait)
    typer.echo(json.dumps(batch, indent=2))


@app.command()
def status(
    object_id: str, api_url: ApiUrl = "http://127.0.0.1:8000", api_key: ApiKeyOpt = ""
) -> None:
    """Show a batch or a job."""
    from promptq.client import Client

    client = Client(api_url, api_key)
    try:
        typer.echo(json.dumps(client.get(object_id), indent=2))
    finally:
        client.close()


@app.command()
def results(
    batch_id: str,
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("results.jsonl"),
    api_url: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKeyOpt = "",
) -> None:
    """Write a batch's output lines, then its error lines, to one JSONL file."""
    from promptq.submit import download_results

    lines = download_results(api_url, api_key, batch_id, output)
    typer.echo(f"{lines} lines written to {output}")


@app.command("sim-provider")
def sim_provider(
    port: int = 9100,
    host: str = "127.0.0.1",
    latency_ms: float = 0.0,
    output_tokens: int = 16,
    fail_429_rate: float = 0.0,
    fail_500_rate: float = 0.0,
    retry_after: float = 1.0,
    api_key: str | None = None,
    seed: int = 0,
) -> None:
    """Serve the simulated provider (OpenAI and Anthropic shapes) for tests and benchmarks."""
    from promptq.sim_provider import SimConfig, serve

    serve(
        host,
        port,
        SimConfig(
            latency_ms=latency_ms,
            output_tokens=output_tokens,
            fail_429_rate=fail_429_rate,
            fail_500_rate=fail_500_rate,
            retry_after=retry_after,
            api_key=api_key,
            seed=seed,
        ),
    )


@app.command()
def demo(
    documents: Annotated[int | None, typer.Option(help="Use only the first N documents.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("demo-results.jsonl"),
) -> None:
    """Run promptq end to end on one machine: embedded Redis, a local database, the small
    real model on vLLM, a bulk document job through the API."""
    from promptq.demo import run_demo

    raise typer.Exit(run_demo(documents=documents, output=output))
