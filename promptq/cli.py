"""The `promptq` command."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from promptq import cli_ops
from promptq.cli_cost import BudgetOpt, PeriodOpt, apply_budget, register_cost_commands
from promptq.cli_keys import register_key_commands
from promptq.config import Settings, get_settings
from promptq.logs import configure_logging


class _Cli(typer.Typer):
    """The command: failures a user can fix are one line on stderr (see promptq.cli_errors)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        except Exception as exc:
            from promptq.cli_errors import debug_requested, fail

            if debug_requested():
                raise
            fail(exc)


app = _Cli(
    help="promptq: queue-backed asynchronous jobs for LLM prompts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Docstrings are wrapped at 100 columns in the source; markdown re-flows their
    # paragraphs to the terminal's width instead of breaking lines where the source does.
    rich_markup_mode="markdown",
)
worker_app = typer.Typer(help="Run a worker.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.command("gc")(cli_ops.gc)
app.command("flower")(cli_ops.flower)
register_key_commands(keys_app)
register_cost_commands(app, keys_app)

ApiUrl = Annotated[str, typer.Option(envvar="PROMPTQ_API_URL", help="promptq's API.")]
ApiKeyOpt = Annotated[str, typer.Option(envvar="PROMPTQ_API_KEY", help="Your API key.")]


@app.callback()
def _main(
    log_level: Annotated[str, typer.Option(envvar="PROMPTQ_LOG_LEVEL")] = "info",
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
) -> None:
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


def _worker_settings(kind: str, check: bool, metrics_port: int | None) -> Settings:
    """The settings a `kind` worker runs with. `--check` answers the health probe and exits
    here; `--metrics-port` starts the metrics server before the worker starts."""
    from promptq.workers.launch import check_workers

    settings = get_settings()
    if check:
        raise typer.Exit(check_workers(settings, kind))
    cli_ops.serve_metrics(settings, metrics_port)
    return settings


@worker_app.command("remote")
def worker_remote(
    concurrency: Annotated[int, typer.Option(help="Provider requests in flight.")] = 256,
    loglevel: str = "warning",
    check: CheckOpt = False,
    burst: BurstOpt = False,
    metrics_port: cli_ops.MetricsPort = None,
) -> None:
    """Run a remote worker (OpenAI-compatible and Anthropic providers)."""
    from promptq.workers.launch import run_remote_worker

    settings = _worker_settings("remote", check, metrics_port)
    run_remote_worker(settings, concurrency=concurrency, loglevel=loglevel, burst=burst)


@worker_app.command("gpu")
def worker_gpu(
    model: Annotated[str | None, typer.Option(help="The vllm model to serve.")] = None,
    loglevel: str = "warning",
    check: CheckOpt = False,
    burst: BurstOpt = False,
    metrics_port: cli_ops.MetricsPort = None,
) -> None:
    """Run a GPU worker: one vLLM engine for one model of the models file."""
    from promptq.workers.launch import run_gpu_worker

    settings = _worker_settings("gpu", check, metrics_port)
    run_gpu_worker(settings, model=model, loglevel=loglevel, burst=burst)


@app.command()
def scheduler(metrics_port: cli_ops.MetricsPort = None) -> None:
    """Run the sweeper: lease expiry, re-delivery, batch expiry and finalization."""
    from promptq.scheduler.service import run_scheduler

    settings = get_settings()
    cli_ops.serve_metrics(settings, metrics_port)
    asyncio.run(run_scheduler(settings))


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
    budget_usd: BudgetOpt = None,
    budget_period: PeriodOpt = None,
) -> None:
    """Create an API key and print it, and its webhook signing secret on stderr (both are
    shown only once)."""
    from promptq.db import Database
    from promptq.keys import create_key

    async def _create() -> tuple[str, str | None]:
        db = Database.from_settings(get_settings())
        try:
            async with db.session() as session:
                token, key = await create_key(
                    session, name, tenant=tenant, admin=admin, webhook_url=webhook_url
                )
                if budget_usd is not None:
                    await apply_budget(
                        session,
                        tenant=key.tenant,
                        api_key_id=key.id,
                        budget_usd=budget_usd,
                        period=budget_period,
                    )
        finally:
            await db.dispose()
        return token, key.webhook_secret

    token, secret = asyncio.run(_create())
    typer.echo(token)
    typer.echo(f"webhook signing secret (verify deliveries with it): {secret}", err=True)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the raw JSON object.")]


@app.command()
def submit(
    file: Path,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKeyOpt = "",
    model: Annotated[str | None, typer.Option(help="Use this model for every line.")] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=9)] = None,
    wait: Annotated[
        bool, typer.Option(help="Show progress until it finishes; exit 1 if any line failed.")
    ] = False,
    as_json: JsonOpt = False,
    max_cost_usd: Annotated[
        float | None,
        typer.Option(min=0, help="Refuse the file if its estimated cost is higher (USD)."),
    ] = None,
) -> None:
    """Submit a JSONL batch file; with --wait, show progress and a summary at the end."""
    from promptq.client import Client
    from promptq.progress import follow
    from promptq.submit import submit_file

    if not file.is_file():
        raise FileNotFoundError(2, "No such file", str(file))
    batch = submit_file(
        api_url, api_key, file, model=model, priority=priority, max_cost_usd=max_cost_usd
    )
    if not wait:
        typer.echo(json.dumps(batch, indent=2) if as_json else _created(batch))
        return
    client = Client(api_url, api_key)
    try:
        batch = follow(client, batch)
        typer.echo(json.dumps(batch, indent=2) if as_json else _batch_text(client, batch))
    finally:
        client.close()
    counts = batch["request_counts"]
    if batch["status"] != "completed" or counts["failed"] or counts.get("expired"):
        raise typer.Exit(1)


def _created(batch: dict[str, Any]) -> str:
    return (
        f"{batch['id']}  {batch['status']}  {batch['request_counts']['total']} requests\n"
        f"  follow it: promptq status {batch['id']}"
    )


def _batch_text(client: Any, batch: dict[str, Any]) -> str:
    """The batch's summary, with failures by code read from its error file."""
    from promptq.summary import batch_summary, failure_codes

    error_file = batch.get("error_file_id")
    lines = client.lines(error_file) if error_file else iter(())
    return batch_summary(batch, failure_codes(batch, lines))


@app.command()
def status(
    object_id: str,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKeyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Show a batch (batch_...) or a job (job_...): counts, failures by code, tokens, cost."""
    from promptq.client import Client
    from promptq.summary import job_summary

    client = Client(api_url, api_key)
    try:
        obj = client.get(object_id)
        if as_json:
            typer.echo(json.dumps(obj, indent=2))
        elif obj.get("object") == "batch":
            typer.echo(_batch_text(client, obj))
        else:
            typer.echo(job_summary(obj))
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


@app.command(
    "sim-provider",
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def sim_provider(ctx: typer.Context) -> None:
    """Serve the simulated provider (OpenAI and Anthropic shapes) for tests and benchmarks.

    Takes every option of `python -m promptq.sim_provider` (limits, outages, latency);
    `promptq sim-provider --help` lists them.
    """
    from promptq.sim_provider import main

    main(ctx.args, prog="promptq sim-provider")


@app.command()
def demo(
    documents: Annotated[int | None, typer.Option(help="Use only the first N documents.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("demo-results.jsonl"),
) -> None:
    """Run a bulk job end to end on this machine, with no configuration.

    An embedded Redis, a local database, the small real model on vLLM (on the GPU if there
    is one), and 200 news snippets summarised and classified through the API.
    """
    from promptq.demo import run_demo

    raise typer.Exit(run_demo(documents=documents, output=output))
