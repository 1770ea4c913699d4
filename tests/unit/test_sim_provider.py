"""The simulated provider answers like OpenAI and Anthropic, deterministically, and fails on cue."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from promptq.sim_provider import SimConfig, build_app

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


class _Provider:
    """A simulated provider app called in-process over httpx's ASGI transport."""

    def __init__(self, config: SimConfig) -> None:
        self.app = build_app(config)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(send())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


def _client(**config: Any) -> _Provider:
    return _Provider(SimConfig(**config))


def _chat(client: _Provider, content: str, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", None)
    body = {"model": "sim-model", "messages": [{"role": "user", "content": content}], **extra}
    return client.post(CHAT, json=body, headers=headers)


def _anthropic(client: _Provider, content: str, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", None)
    body = {
        "model": "claude-sim",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }
    return client.post(MESSAGES, json=body, headers=headers)


def _reply(response: httpx.Response) -> str:
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


# --- OpenAI chat completions -----------------------------------------------------------------


def test_same_request_gets_the_same_reply_and_usage() -> None:
    # Given a provider with the default output length of 16 tokens
    client = _client()

    # When the same prompt is sent twice
    first = _chat(client, "Summarise the quarterly report please")
    second = _chat(client, "Summarise the quarterly report please")

    # Then both replies are identical chat.completion objects with 16 words of content
    assert first.status_code == second.status_code == 200
    body = first.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "sim-model"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert _reply(first) == _reply(second)
    assert len(_reply(first).split()) == 16
    # 5 words in the prompt + 1 for the message
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 16, "total_tokens": 22}


def test_different_prompts_get_different_replies() -> None:
    # Given a provider
    client = _client()

    # When two different prompts are sent
    first = _chat(client, "classify this email")
    second = _chat(client, "classify that email")

    # Then the replies differ
    assert _reply(first) != _reply(second)


def test_max_tokens_cuts_the_reply_with_finish_reason_length() -> None:
    # Given a provider that would write 16 tokens
    client = _client(output_tokens=16)

    # When the request allows only 5 (through either field name)
    legacy = _chat(client, "write a poem", max_tokens=5)
    current = _chat(client, "write a poem", max_completion_tokens=5)

    # Then the reply is 5 words long and ends for length, a prefix of the full reply
    full = _reply(_chat(client, "write a poem"))
    for response in (legacy, current):
        assert response.json()["choices"][0]["finish_reason"] == "length"
        assert response.json()["usage"]["completion_tokens"] == 5
        assert _reply(response).split() == full.split()[:5]


def test_tokens_directive_sets_the_reply_length_for_that_prompt() -> None:
    # Given a provider with 16 output tokens
    client = _client(output_tokens=16)

    # When a prompt asks for 40 tokens
    response = _chat(client, "long answer please [[sim:tokens=40]]")

    # Then the reply has 40 words and stopped naturally
    assert len(_reply(response).split()) == 40
    assert response.json()["usage"]["completion_tokens"] == 40
    assert response.json()["choices"][0]["finish_reason"] == "stop"


def test_stop_string_cuts_the_reply() -> None:
    # Given the reply a prompt normally gets
    client = _client()
    full = _reply(_chat(client, "tell me a story"))
    stop = " " + full.split()[3]

    # When the same prompt is sent with a stop string taken from that reply
    response = _chat(client, "tell me a story", stop=[stop])

    # Then the reply ends before the stop string
    cut = _reply(response)
    assert full.startswith(cut)
    assert stop not in cut
    assert len(cut.split()) <= 3
    assert response.json()["choices"][0]["finish_reason"] == "stop"
    assert response.json()["usage"]["completion_tokens"] == len(cut.split())


def test_models_are_listed_in_openai_shape() -> None:
    # Given a provider
    client = _client()

    # When the models are listed
    response = client.get("/v1/models")

    # Then the answer is an OpenAI list of models
    assert response.status_code == 200
    assert response.json()["object"] == "list"
    assert response.json()["data"][0]["object"] == "model"


def test_bad_json_and_missing_messages_are_openai_400s() -> None:
    # Given a provider
    client = _client()

    # When the body is not JSON, and when it has no messages
    not_json = client.post(CHAT, content=b"{nope", headers={"content-type": "application/json"})
    no_messages = client.post(CHAT, json={"model": "sim-model"})

    # Then both are 400 invalid_request_error in OpenAI's error shape
    for response in (not_json, no_messages):
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert no_messages.json()["error"]["param"] == "messages"


# --- scripted faults -------------------------------------------------------------------------


def test_fail_429x2_fails_twice_with_retry_after_then_succeeds() -> None:
    # Given a prompt scripted to be rate limited twice, retrying after 0.2 s
    client = _client()
    prompt = "summarise [[sim:fail=429x2]] [[sim:retry_after=0.2]]"

    # When it is sent three times
    responses = [_chat(client, prompt) for _ in range(3)]

    # Then the first two are 429 with Retry-After 0.2, and the third succeeds
    assert [r.status_code for r in responses] == [429, 429, 200]
    for rejected in responses[:2]:
        assert rejected.headers["retry-after"] == "0.2"
        assert rejected.json()["error"]["code"] == "rate_limit_exceeded"
        assert rejected.json()["error"]["message"].startswith("simulated provider error 429: ")
    assert len(_reply(responses[2]).split()) == 16


def test_fail_429_without_retry_after_directive_uses_the_configured_one() -> None:
    # Given a provider configured to ask for 3 s between retries
    client = _client(retry_after=3.0)

    # When a prompt scripted to fail once is sent
    response = _chat(client, "hello [[sim:fail=429x1]]")

    # Then the Retry-After header says 3 seconds
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"


def test_fail_500x3_fails_three_times_then_succeeds() -> None:
    # Given a prompt scripted to hit a server error three times
    client = _client()

    # When it is sent four times
    responses = [_chat(client, "extract names [[sim:fail=500x3]]") for _ in range(4)]

    # Then three 500 server errors come before a success
    assert [r.status_code for r in responses] == [500, 500, 500, 200]
    assert responses[0].json()["error"]["type"] == "server_error"


def test_status_400_fails_every_time_with_a_stable_message() -> None:
    # Given a prompt scripted to be a bad request
    client = _client()

    # When it is sent three times
    responses = [_chat(client, "poison [[sim:status=400]]") for _ in range(3)]

    # Then every answer is the same 400
    for response in responses:
        assert response.status_code == 400
        assert response.json()["error"] == {
            "message": "simulated provider error 400: Invalid request: simulated bad request",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }


def test_sleep_directive_delays_the_reply() -> None:
    # Given a prompt scripted to take 0.2 s
    client = _client()

    # When it is sent
    started = time.monotonic()
    response = _chat(client, "slow one [[sim:sleep=0.2]]")

    # Then the reply arrives, no sooner than 0.2 s later
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.19


def test_malformed_directive_is_a_400_that_names_it() -> None:
    # Given a provider
    client = _client()

    # When a prompt carries a misspelt fail directive
    response = _chat(client, "oops [[sim:fail=429times2]]")

    # Then the request is refused with a message naming the problem
    assert response.status_code == 400
    assert "fail='429times2'" in response.json()["error"]["message"]


def test_random_failures_follow_the_configured_rates_and_seed() -> None:
    # Given providers that always rate limit, always fail, or fail half the time with one seed
    always_429 = _client(fail_429_rate=1.0, retry_after=2.5)
    always_500 = _client(fail_500_rate=1.0)
    half = [_client(fail_500_rate=0.5, seed=7) for _ in range(2)]

    # When prompts are sent to each
    rate_limited = _chat(always_429, "hi")
    failed = _chat(always_500, "hi")
    sequences = [[_chat(client, f"p{i}").status_code for i in range(20)] for client in half]

    # Then the rates hold, and the same seed gives the same sequence of failures
    assert rate_limited.status_code == 429
    assert rate_limited.headers["retry-after"] == "2.5"
    assert failed.status_code == 500
    assert sequences[0] == sequences[1]
    assert set(sequences[0]) == {200, 500}


def test_config_rejects_impossible_rates() -> None:
    # Given/When failure rates that add up to more than 1, Then the config is refused
    with pytest.raises(ValueError, match="failure rates"):
        SimConfig(fail_429_rate=0.7, fail_500_rate=0.7)


# --- Anthropic messages ----------------------------------------------------------------------


def test_anthropic_message_has_the_messages_api_shape() -> None:
    # Given a provider
    client = _client(output_tokens=10)

    # When a Messages API request with a system prompt is sent
    response = _anthropic(client, "classify this ticket", system="You are terse.")

    # Then the answer is an Anthropic message with 10 words of text and its usage
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "message"
    assert body["id"].startswith("msg_")
    assert body["role"] == "assistant"
    assert body["model"] == "claude-sim"
    assert body["content"][0]["type"] == "text"
    assert len(body["content"][0]["text"].split()) == 10
    assert body["stop_reason"] == "end_turn"
    assert body["stop_sequence"] is None
    # 3 prompt words + 3 system words + 1 message
    assert body["usage"] == {"input_tokens": 7, "output_tokens": 10}


def test_anthropic_max_tokens_is_required() -> None:
    # Given a provider
    client = _client()

    # When a Messages API request omits max_tokens
    body = {"model": "claude-sim", "messages": [{"role": "user", "content": "hi"}]}
    response = client.post(MESSAGES, json=body)

    # Then it is a 400 invalid_request_error in Anthropic's error shape
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in response.json()["error"]["message"]


def test_anthropic_max_tokens_and_stop_sequences_end_the_reply() -> None:
    # Given the reply a prompt normally gets
    client = _client()
    full = _anthropic(client, "draft an answer").json()["content"][0]["text"]
    stop = " " + full.split()[2]

    # When it is capped at 4 tokens, and when it is sent with a stop sequence
    capped = _anthropic(client, "draft an answer", max_tokens=4).json()
    stopped = _anthropic(client, "draft an answer", stop_sequences=[stop]).json()

    # Then the reasons are max_tokens and stop_sequence, naming the sequence
    assert capped["stop_reason"] == "max_tokens"
    assert capped["usage"]["output_tokens"] == 4
    assert stopped["stop_reason"] == "stop_sequence"
    assert stopped["stop_sequence"] == stop
    assert stop not in stopped["content"][0]["text"]


def test_anthropic_scripted_errors_use_anthropic_types() -> None:
    # Given prompts scripted to be rate limited once and to be not found
    client = _client()

    # When they are sent to the Messages API
    limited = _anthropic(client, "a [[sim:fail=429x1]] [[sim:retry_after=0.5]]")
    missing = _anthropic(client, "b [[sim:status=404]]")
    overloaded = _anthropic(client, "c [[sim:status=500]]")

    # Then the errors carry Anthropic's types, and the 429 a Retry-After
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert limited.headers["retry-after"] == "0.5"
    assert missing.status_code == 404
    assert missing.json() == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "simulated provider error 404: Not found: simulated missing model",
        },
    }
    assert overloaded.json()["error"]["type"] == "api_error"


# --- auth and stats --------------------------------------------------------------------------


def test_api_key_is_required_in_each_apis_own_header() -> None:
    # Given a provider with an API key
    client = _client(api_key="sk-sim")

    # When requests come without, with a wrong, and with the right key
    openai_missing = _chat(client, "hi")
    openai_ok = _chat(client, "hi", headers={"Authorization": "Bearer sk-sim"})
    anthropic_wrong = _anthropic(client, "hi", headers={"x-api-key": "nope"})
    anthropic_ok = _anthropic(client, "hi", headers={"x-api-key": "sk-sim"})

    # Then the keyless and wrong ones get 401 in their API's shape, the others succeed
    assert openai_missing.status_code == 401
    assert openai_missing.json()["error"]["code"] == "invalid_api_key"
    assert anthropic_wrong.status_code == 401
    assert anthropic_wrong.json()["error"]["type"] == "authentication_error"
    assert openai_ok.status_code == anthropic_ok.status_code == 200


def test_stats_count_requests_by_endpoint_and_status_until_reset() -> None:
    # Given a provider that has answered a mix of requests
    client = _client()
    for _ in range(3):
        _chat(client, "again [[sim:fail=429x2]]")
    _anthropic(client, "hello")
    client.get("/v1/models")

    # When the stats are read, then reset, then read again
    counts = ("total", "by_endpoint", "by_status")
    stats = {k: v for k, v in client.get("/_sim/stats").json().items() if k in counts}
    client.post("/_sim/reset")
    after_reset = {k: v for k, v in client.get("/_sim/stats").json().items() if k in counts}
    retried = _chat(client, "again [[sim:fail=429x2]]")

    # Then they count every request, and a reset zeroes them and the scripted failures
    assert stats == {
        "total": 5,
        "by_endpoint": {CHAT: 3, MESSAGES: 1, "/v1/models": 1},
        "by_status": {"200": 3, "429": 2},
    }
    assert after_reset == {"total": 0, "by_endpoint": {}, "by_status": {}}
    assert retried.status_code == 429


# --- the real server -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_ready(base_url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, "the simulated provider exited early"
        try:
            httpx.get(f"{base_url}/_sim/stats", timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("the simulated provider did not start listening")


def test_module_serves_real_http(tmp_path: Path) -> None:
    # Given the provider started as `python -m promptq.sim_provider` with a key and 8 tokens
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "promptq.sim_provider", "--port", str(port)]
    command += ["--output-tokens", "8", "--api-key", "sk-real"]
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_ready(base_url, server)

        # When a chat completion is requested over real HTTP
        response = httpx.post(
            f"{base_url}{CHAT}",
            json={"model": "m", "messages": [{"role": "user", "content": "hello there"}]},
            headers={"Authorization": "Bearer sk-real"},
            timeout=10.0,
        )

        # Then the reply has the configured 8 words
        assert response.status_code == 200, (tmp_path / "server.log").read_text()
        assert len(_reply(response).split()) == 8
    finally:
        server.terminate()
        server.wait(timeout=10)
