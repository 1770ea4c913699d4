"""The simulated provider enforces per-second buckets, reports x-ratelimit-* headers, and
goes down on command."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from promptq.sim_provider import SimConfig, build_app
from promptq.sim_provider.limits import Bucket, RateLimits, format_duration

CHAT = "/v1/chat/completions"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _calls(config: SimConfig, *requests: tuple[str, str, Any]) -> list[httpx.Response]:
    """Send requests in order to one app instance, in-process over ASGI."""

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=build_app(config))
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            return [await client.request(m, path, json=body) for m, path, body in requests]

    return asyncio.run(send())


def _chat(content: str = "hello", **extra: Any) -> tuple[str, str, Any]:
    return (
        "POST",
        CHAT,
        {"model": "m", "messages": [{"role": "user", "content": content}], **extra},
    )


def test_a_bucket_holds_one_second_of_refill_and_refills_per_second() -> None:
    clock = FakeClock()
    bucket = Bucket(per_minute=600, burst_seconds=1.0, clock=clock)  # 10/s, holds 10
    for _ in range(10):
        assert bucket.wait_for(1) == 0
        bucket.take(1)
    assert bucket.wait_for(1) == 0.1
    clock.now += 0.5
    assert bucket.wait_for(5) == 0
    assert bucket.remaining() == 300


def test_limits_refuse_with_the_wait_for_the_scarcer_limit() -> None:
    clock = FakeClock()
    limits = RateLimits.build(rpm=6000, tpm=600, burst_seconds=1.0, clock=clock)  # 10 tok/s
    limits.admit(10)
    try:
        limits.admit(5)
    except Exception as exc:
        assert exc.status == 429 and exc.kind == "tokens"
        assert exc.retry_after == 0.5
    else:
        raise AssertionError("the second call should have been refused")
    headers = limits.headers()
    assert headers["x-ratelimit-limit-requests"] == "6000"
    assert headers["x-ratelimit-limit-tokens"] == "600"
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-reset-tokens"] == "1s"


def test_durations_are_written_as_openai_writes_them() -> None:
    assert format_duration(0.0201) == "21ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(360) == "6m0s"


def test_requests_over_the_rpm_get_429_with_retry_after_and_headers() -> None:
    first, second = _calls(SimConfig(rpm=60), _chat("one"), _chat("two"))
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "60"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.status_code == 429
    assert 0 < float(second.headers["retry-after"]) <= 1
    assert int(second.headers["retry-after-ms"]) > 0
    assert second.json()["error"]["type"] == "requests"
    assert "x-ratelimit-reset-requests" in second.headers


def test_tokens_are_charged_as_prompt_plus_max_tokens() -> None:
    config = SimConfig(tpm=60 * 30)  # 30 tokens per second, a bucket of 30
    ok, refused = _calls(config, _chat("hi", max_tokens=20), _chat("hi", max_tokens=20))
    assert ok.status_code == 200 and refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"


def test_without_limits_there_are_no_ratelimit_headers() -> None:
    (response,) = _calls(SimConfig(), _chat())
    assert response.status_code == 200
    assert not [h for h in response.headers if h.startswith("x-ratelimit")]


def test_an_outage_can_be_started_and_ended_at_run_time() -> None:
    responses = _calls(
        SimConfig(),
        ("POST", "/_sim/config", {"down_for": 600}),
        _chat(),
        ("POST", "/_sim/config", {"down_for": 0}),
        _chat(),
        ("GET", "/_sim/stats", None),
    )
    down, up, stats = responses[1], responses[3], responses[4].json()
    assert down.status_code == 503 and "down for" in down.json()["error"]["message"]
    assert up.status_code == 200
    assert stats["by_status"] == {"200": 1, "503": 1}


def test_a_provider_started_down_answers_503_and_always_failing_answers_its_status() -> None:
    (down,) = _calls(SimConfig(down_for=600), _chat())
    (broken,) = _calls(SimConfig(fail_status=500), _chat())
    assert down.status_code == 503
    assert broken.status_code == 500


def test_limits_can_be_set_at_run_time() -> None:
    responses = _calls(SimConfig(), ("POST", "/_sim/config", {"rpm": 60}), _chat(), _chat())
    assert [r.status_code for r in responses[1:]] == [200, 429]


def test_the_calls_log_lists_each_call_in_arrival_order_with_status_and_prompt() -> None:
    # Given a provider enforcing 60 RPM with one request of burst
    config = SimConfig(rpm=60, burst_seconds=1.0)
    # When three chat requests arrive, then the log is read
    responses = _calls(
        config,
        _chat("first prompt"),
        _chat("second prompt"),
        _chat("x" * 200),
        ("GET", "/_sim/calls", None),
    )
    # Then it lists the three in order: the first served, the next two refused, with the
    # start of each prompt, times counted from the first
    calls = responses[-1].json()["calls"]
    assert [(status, tag) for _, status, tag in calls] == [
        (200, "first prompt"),
        (429, "second prompt"),
        (429, "x" * 80),
    ]
    assert calls[0][0] == 0 and calls[0][0] <= calls[1][0] <= calls[2][0]
