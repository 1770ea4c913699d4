"""A native job's deadline from POST /v1/jobs: `deadline` (RFC 3339) or `timeout_seconds`;
anything else is refused with `invalid_deadline` and names the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from promptq.deadline import job_deadline
from promptq.errors import InvalidRequest

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("deadline", "expected"),
    [
        ("2026-11-22T08:00:30Z", NOW + timedelta(seconds=30)),
        ("2026-11-22T09:00:30.5+01:00", NOW + timedelta(seconds=30.5)),
        ("2026-11-22 03:00:30-05:00", NOW + timedelta(seconds=30)),
    ],
)
def test_an_rfc3339_deadline_is_kept_in_utc(deadline: str, expected: datetime) -> None:
    assert job_deadline(deadline, None, NOW) == expected


def test_timeout_seconds_count_from_submission() -> None:
    assert job_deadline(None, 2.5, NOW) == NOW + timedelta(seconds=2.5)
    assert job_deadline(None, None, NOW) is None


@pytest.mark.parametrize(
    ("deadline", "timeout", "param"),
    [
        ("2026-11-22T08:00:30", None, "deadline"),  # no offset: which zone?
        ("tomorrow", None, "deadline"),
        ("2026-13-22T08:00:30Z", None, "deadline"),  # no 13th month
        ("2026-11-22T07:59:59Z", None, "deadline"),  # in the past
        ("2027-01-01T00:00:00Z", None, "deadline"),  # more than 30 days away
        (None, 0.0, "timeout_seconds"),
        (None, -1.0, "timeout_seconds"),
        (None, 31 * 86400.0, "timeout_seconds"),
        ("2026-11-22T08:00:30Z", 30.0, "deadline"),  # both
    ],
)
def test_a_bad_deadline_is_refused_with_its_code_and_field(
    deadline: str | None, timeout: float | None, param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        job_deadline(deadline, timeout, NOW)
    assert (refused.value.code, refused.value.http_status) == ("invalid_deadline", 400)
    assert refused.value.param == param
