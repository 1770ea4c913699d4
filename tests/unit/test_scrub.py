"""The credential scrubber: provider error text loses anything that looks like a secret and
keeps the rest readable."""

from __future__ import annotations

import pytest

from promptq.scrub import REDACTED, scrub_credentials


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Invalid header Authorization: Bearer abcdefghijklmnop1234", "abcdefghijklmnop1234"),
        ('{"headers": {"authorization": "Bearer sk-live-0123456789abcdef"}}', "0123456789abcdef"),
        ("x-api-key: sk-ant-api03-AbCdEf0123456789xyz was rejected", "AbCdEf0123456789xyz"),
        ("Incorrect API key provided: sk-proj-aaaaBBBBccccDDDD1234.", "aaaaBBBBccccDDDD1234"),
        ("bad request ?api_key=s3cr3tvalue&model=x", "s3cr3tvalue"),
        ('{"client_secret": "hunter2hunter2"}', "hunter2hunter2"),
        ("fetch https://user:pa55word@internal.example/v1 failed", "pa55word"),
        ("key AKIAIOSFODNN7EXAMPLE is not allowed", "AKIAIOSFODNN7EXAMPLE"),
        (
            "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abcdefghijkl expired",
            "eyJzdWIiOiIxMjM0In0",
        ),
        ("password=correct-horse", "correct-horse"),
    ],
)
def test_credentials_are_removed(text: str, secret: str) -> None:
    scrubbed = scrub_credentials(text)
    assert secret not in scrubbed
    assert REDACTED in scrubbed


def test_a_known_secret_is_removed_wherever_it_appears() -> None:
    scrubbed = scrub_credentials("echo: my-odd-key-value!", known=["my-odd-key-value!", None])
    assert scrubbed == f"echo: {REDACTED}"


@pytest.mark.parametrize(
    "text",
    [
        "The model `gpt-sim` does not exist or you do not have access to it.",
        "Rate limit reached for requests per min (RPM): Limit 3, Used 3.",
        "This model's maximum context length is 8192 tokens; your messages had 9000.",
        "max_tokens must be at least 1, got 0",
    ],
)
def test_ordinary_error_text_is_kept(text: str) -> None:
    assert scrub_credentials(text) == text
