"""Serving the simulated provider over HTTP, and its command line.

The command line is built from `SimConfig`'s fields, one option per field, and
`promptq sim-provider` hands its arguments to the same parser: a new setting of the
simulated provider is an option of both commands at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence

import uvicorn

from promptq.sim_provider.app import build_app
from promptq.sim_provider.config import SimConfig

DEFAULT_PORT = 9100

# One line of help per option that needs one; the option itself comes from the field.
_HELP = {
    "latency_ms": "latency of every answer",
    "output_tokens": "words in a reply",
    "fail_429_rate": "fraction of requests answered 429",
    "fail_500_rate": "fraction of requests answered 500",
    "retry_after": "Retry-After of a 429, in seconds",
    "api_key": "the bearer token requests must carry (none: any)",
    "seed": "seed of the random failures",
    "rpm": "enforced requests per minute",
    "tpm": "enforced tokens per minute",
    "burst_seconds": "seconds of refill the enforced buckets hold",
    "down_for": "answer --down-status for the first N seconds",
    "down_status": "the status of an outage",
    "fail_status": "always answer this status",
    "slow_ms": "extra latency of every answer",
}


def serve(host: str, port: int, config: SimConfig) -> None:
    """Run the simulated provider on host:port until interrupted (blocking)."""
    # No access log: at zero latency the benchmark would spend its time logging.
    uvicorn.run(build_app(config), host=host, port=port, access_log=False, log_level="info")


def _option_type(hint: object) -> type:
    # `int | None` -> int: None is the default, never typed on the command line.
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    chosen = args[0] if args else hint
    assert isinstance(chosen, type), f"unsupported SimConfig field type {hint!r}"
    return chosen


def argument_parser(prog: str = "python -m promptq.sim_provider") -> argparse.ArgumentParser:
    """The options of the simulated provider: --host, --port and one per SimConfig field."""
    parser = argparse.ArgumentParser(prog=prog, description="Run promptq's simulated LLM provider.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    hints = typing.get_type_hints(SimConfig)
    for field in dataclasses.fields(SimConfig):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=_option_type(hints[field.name]),
            default=field.default,
            help=_HELP.get(field.name, "") + " (default: %(default)s)",
        )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m promptq.sim_provider") -> None:
    """Parse the command line and serve until interrupted."""
    parser = argument_parser(prog)
    args = parser.parse_args(argv)
    try:
        config = SimConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SimConfig)})
    except ValueError as exc:
        parser.error(str(exc))
    serve(args.host, args.port, config)
