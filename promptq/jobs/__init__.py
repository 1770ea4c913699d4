"""Jobs: the lifecycle (lifecycle.py), its one writer (transitions.py), the error codes a
job can end with (codes.py), and a job as a worker holds it, with its deadline
(attempt.py)."""

from __future__ import annotations

from promptq.jobs.attempt import ClaimedJob, Deadline, Finished, JobFailure, JobOutcome
from promptq.jobs.codes import JobErrorCode
from promptq.jobs.lifecycle import TRANSITIONS, Transition
from promptq.jobs.transitions import (
    cancel,
    cancel_lines,
    claim,
    expire_lines,
    expire_queued,
    mark_enqueued,
    note_waiting,
    record_failure,
    record_finished,
    record_success,
    release,
    renew,
    requeue_expired,
    resend,
    retry,
    store_lines,
    submit,
)

__all__ = [
    "TRANSITIONS",
    "ClaimedJob",
    "Deadline",
    "Finished",
    "JobErrorCode",
    "JobFailure",
    "JobOutcome",
    "Transition",
    "cancel",
    "cancel_lines",
    "claim",
    "expire_lines",
    "expire_queued",
    "mark_enqueued",
    "note_waiting",
    "record_failure",
    "record_finished",
    "record_success",
    "release",
    "renew",
    "requeue_expired",
    "resend",
    "retry",
    "store_lines",
    "submit",
]
