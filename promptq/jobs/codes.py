"""Every `error_code` a job can end with (or carry while it is retried), in one place.

The table in docs/errors.md lists the same codes; tests/unit/test_error_codes.py keeps the
two in step. A new way for a job to fail gets a member here first."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["JobErrorCode"]


class JobErrorCode(StrEnum):
    """Why a job ended without a result, or why its last attempt failed."""

    # -- set by promptq's own transitions (promptq.jobs.transitions) --------------------
    #: Its worker was lost while running it; left on a re-queued job (run alone once it
    #: was lost twice).
    WORKER_LOST = "worker_lost"
    #: Its worker was lost on every attempt: it may crash workers (a poison prompt).
    MAX_ATTEMPTS_EXCEEDED = "max_attempts_exceeded"
    #: The client cancelled the job.
    JOB_CANCELLED = "job_cancelled"
    #: Its batch was cancelled before this line ran.
    BATCH_CANCELLED = "batch_cancelled"
    #: Its batch's completion window ended before this line ran (or while it waited for
    #: provider capacity or a closed circuit).
    BATCH_EXPIRED = "batch_expired"
    #: The native job's deadline passed before it could be sent to its provider.
    DEADLINE_EXCEEDED = "deadline_exceeded"
    #: The job or line names a model the models file does not list.
    MODEL_NOT_FOUND = "model_not_found"

    # -- cost control (promptq.workers.spending) ----------------------------------------
    #: The key's budget has too little left for the job's maximum cost this period.
    BUDGET_EXCEEDED = "budget_exceeded"
    #: The job names a router and none of its models can take it.
    NO_MODEL_FITS = "no_model_fits"

    # -- a batch input line that cannot run (promptq.files) -----------------------------
    #: The line is not JSON.
    INVALID_JSON = "invalid_json"
    #: The line is not a JSON object, holds an unstorable value, or the engine refused it.
    INVALID_REQUEST = "invalid_request"
    #: The line has no custom_id.
    MISSING_CUSTOM_ID = "missing_custom_id"
    #: An earlier line has the same custom_id.
    DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
    #: The line's method is not POST.
    INVALID_METHOD = "invalid_method"
    #: The line's url is not supported, or is not the batch's endpoint.
    INVALID_URL = "invalid_url"
    #: The line's body is not an object, has no messages, or fails a check of POST /v1/jobs.
    INVALID_BODY = "invalid_body"
    #: The line's body has no model.
    MISSING_MODEL = "missing_model"
    #: The line's custom_id is longer than 512 characters.
    CUSTOM_ID_TOO_LONG = "custom_id_too_long"
    #: The line's body.model is longer than 200 characters.
    MODEL_TOO_LONG = "model_too_long"
    #: The line is longer than max_line_bytes (read in pieces, never whole).
    LINE_TOO_LONG = "line_too_long"

    # -- a remote provider's answer (promptq.workers.remote_worker) ---------------------
    #: The provider answered 429 (retried, honouring Retry-After).
    RATE_LIMITED = "rate_limited"
    #: The provider answered 408, 409 or 5xx (retried).
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    #: The provider refused the request (another 4xx; not retried).
    PROVIDER_ERROR = "provider_error"
    #: The provider did not answer in time (retried).
    PROVIDER_TIMEOUT = "provider_timeout"
    #: The provider could not be reached (retried).
    PROVIDER_UNREACHABLE = "provider_unreachable"
    #: The provider's answer was not the expected JSON (retried).
    PROVIDER_BAD_RESPONSE = "provider_bad_response"

    # -- the vLLM engine (promptq.workers.vllm_engine) ----------------------------------
    #: The engine was shut down while the request ran (retried).
    ENGINE_CLOSED = "engine_closed"
    #: The engine process died (retried).
    ENGINE_DEAD = "engine_dead"
    #: The engine is overloaded (retried).
    ENGINE_BUSY = "engine_busy"
    #: The engine failed the request (retried).
    ENGINE_ERROR = "engine_error"
    #: The prompt does not fit the model's context.
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    #: The model takes text content only.
    UNSUPPORTED_CONTENT = "unsupported_content"
    #: A parameter the engine does not support (e.g. n > 1).
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
