"""Serving the simulated provider over HTTP, and its command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvicorn

from promptq.sim_provider.app import build_app
from promptq.sim_provider.config import SimConfig


def serve(host: str, port: int, config: SimConfig) -> None:
    """Run the simulated provider on host:port until interrupted (blocking)."""
    # No access log: at zero latency the benchmark would spend its time logging.
    uvicorn.run(build_app(config), host=host, port=port, access_log=False, log_level="info")


def _argument_parser() -> argparse.ArgumentParser:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(
        prog="python -m promptq.sim_provider", description="Run promptq's simulated LLM provider."
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_ms)
    parser.add_argument("--output-tokens", type=int, default=defaults.output_tokens)
    parser.add_argument("--fail-429-rate", type=float, default=defaults.fail_429_rate)
    parser.add_argument("--fail-500-rate", type=float, default=defaults.fail_500_rate)
    parser.add_argument("--retry-after", type=float, default=defaults.retry_after)
    parser.add_argument("--api-key", default=defaults.api_key)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--rpm", type=int, default=None, help="enforced requests per minute")
    parser.add_argument("--tpm", type=int, default=None, help="enforced tokens per minute")
    parser.add_argument("--burst-seconds", type=float, default=defaults.burst_seconds)
    parser.add_argument("--down-for", type=float, default=0.0, help="503 for the first N s")
    parser.add_argument("--down-status", type=int, default=defaults.down_status)
    parser.add_argument("--fail-status", type=int, default=None, help="always answer this")
    parser.add_argument("--slow-ms", type=float, default=0.0, help="extra latency")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = _argument_parser()
    args = parser.parse_args(argv)
    try:
        config = SimConfig(
            latency_ms=args.latency_ms,
            output_tokens=args.output_tokens,
            fail_429_rate=args.fail_429_rate,
            fail_500_rate=args.fail_500_rate,
            retry_after=args.retry_after,
            api_key=args.api_key,
            seed=args.seed,
            rpm=args.rpm,
            tpm=args.tpm,
            burst_seconds=args.burst_seconds,
            down_for=args.down_for,
            down_status=args.down_status,
            fail_status=args.fail_status,
            slow_ms=args.slow_ms,
        )
    except ValueError as exc:
        parser.error(str(exc))
    serve(args.host, args.port, config)
