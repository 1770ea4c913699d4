"""The job lifecycle as data: every transition, the states it leaves and enters, the
webhook event it emits and the error code it leaves. promptq.jobs.transitions guards each
statement with these states, and docs/design.md draws the same table (a test checks it).

    (new) ──submit / create_line──▶ queued ──claim──▶ running ──succeed──▶ succeeded
                 refuse_line──▶ failed ◀──fail / fail_lost──┘
    queued ◀──release / requeue── running;  queued|running ──cancel──▶ cancelled
    queued ──cancel_lines──▶ cancelled;  queued ──expire_lines──▶ expired
    queued ──expire_queued──▶ expired (a native job's deadline passed before a worker took it)
    running ──expire──▶ expired (its deadline or batch window passed while it waited)

Adding a transition (waiting for a rate limit, a budget refusal, a cache hit ...): add a
`Transition` here and to `TRANSITIONS`, write its one guarded statement in
promptq/jobs/transitions.py (in the section of its kind), add its error code to
promptq/jobs/codes.py if it leaves one, and its arrow to the diagram in docs/design.md."""

from __future__ import annotations

from dataclasses import dataclass

from promptq.jobs.codes import JobErrorCode
from promptq.models import JobStatus

__all__ = [
    "CANCEL",
    "CANCEL_LINES",
    "CLAIM",
    "CREATE_LINE",
    "EXPIRE",
    "EXPIRE_LINES",
    "EXPIRE_QUEUED",
    "FAIL",
    "FAIL_LOST",
    "MARK_ENQUEUED",
    "REFUSE_LINE",
    "RELEASE",
    "RENEW",
    "REQUEUE",
    "RESEND",
    "RETRY",
    "SUBMIT",
    "SUCCEED",
    "TRANSITIONS",
    "WAIT",
    "Transition",
]

Q, R = JobStatus.QUEUED, JobStatus.RUNNING


@dataclass(frozen=True)
class Transition:
    """One kind of job state change."""

    #: The function in promptq.jobs.transitions that makes it (and its label in the docs).
    name: str
    #: The states a job may be in for the change to apply; empty for a new row.
    sources: tuple[JobStatus, ...]
    target: JobStatus
    #: The webhook event emitted for a job with a webhook_url, if any.
    event: str | None = None
    #: The error_code it leaves on the job, if it always leaves the same one.
    code: JobErrorCode | None = None
    #: Who makes it, and why.
    why: str = ""


SUBMIT = Transition("submit", (), Q, why="POST /v1/jobs stores a native job")
CREATE_LINE = Transition(
    "create_line",
    (),
    Q,
    why="a valid batch line becomes a job, already marked enqueued; its page's messages "
    "are sent after the commit",
)
REFUSE_LINE = Transition(
    "refuse_line", (), JobStatus.FAILED, why="a batch line that cannot run ends at once"
)
MARK_ENQUEUED = Transition("mark_enqueued", (Q,), Q, why="its message was sent to Redis")
RESEND = Transition("resend", (Q,), Q, why="Redis lost its data: send every queued job again")
CLAIM = Transition(
    "claim",
    (Q,),
    R,
    why="a worker takes the lease for one attempt (not on a native job past its deadline)",
)
RENEW = Transition("renew", (R,), R, why="the worker's heartbeat extends its leases")
RETRY = Transition("retry", (R,), R, why="a retryable error: the next attempt, same lease")
WAIT = Transition(
    "note_waiting",
    (R,),
    R,
    why="the job waits for provider capacity or a closed circuit; no attempt is used",
)
SUCCEED = Transition("succeed", (R,), JobStatus.SUCCEEDED, "job.succeeded", why="a result")
FAIL = Transition("fail", (R,), JobStatus.FAILED, "job.failed", why="a terminal error")
EXPIRE = Transition(
    "expire",
    (R,),
    JobStatus.EXPIRED,
    "job.expired",
    why="its deadline (or batch window) passed before it could be sent to its provider or engine",
)
RELEASE = Transition("release", (R,), Q, why="a clean shutdown hands the job back")
REQUEUE = Transition(
    "requeue",
    (R,),
    Q,
    code=JobErrorCode.WORKER_LOST,
    why="the sweeper: the lease expired with attempts left (lost_count + 1)",
)
FAIL_LOST = Transition(
    "fail_lost",
    (R,),
    JobStatus.FAILED,
    "job.failed",
    JobErrorCode.MAX_ATTEMPTS_EXCEEDED,
    why="the sweeper: the lease expired on the last attempt",
)
CANCEL = Transition(
    "cancel",
    (Q, R),
    JobStatus.CANCELLED,
    "job.cancelled",
    JobErrorCode.JOB_CANCELLED,
    why="POST /v1/jobs/{id}/cancel",
)
CANCEL_LINES = Transition(
    "cancel_lines",
    (Q,),
    JobStatus.CANCELLED,
    "job.cancelled",
    JobErrorCode.BATCH_CANCELLED,
    why="its batch is cancelled; running lines finish",
)
EXPIRE_LINES = Transition(
    "expire_lines",
    (Q,),
    JobStatus.EXPIRED,
    "job.expired",
    JobErrorCode.BATCH_EXPIRED,
    why="its batch's window passed; running lines finish",
)
EXPIRE_QUEUED = Transition(
    "expire_queued",
    (Q,),
    JobStatus.EXPIRED,
    "job.expired",
    JobErrorCode.DEADLINE_EXCEEDED,
    why="the sweeper, or the worker its message reached: a native job's deadline passed "
    "while it was queued",
)

#: Every transition, in the order of a job's life.
TRANSITIONS = (
    SUBMIT,
    CREATE_LINE,
    REFUSE_LINE,
    MARK_ENQUEUED,
    RESEND,
    CLAIM,
    RENEW,
    RETRY,
    WAIT,
    SUCCEED,
    FAIL,
    EXPIRE,
    RELEASE,
    REQUEUE,
    FAIL_LOST,
    CANCEL,
    CANCEL_LINES,
    EXPIRE_LINES,
    EXPIRE_QUEUED,
)
