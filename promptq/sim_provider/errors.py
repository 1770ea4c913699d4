"""The simulated provider's error, and the stable messages of the failures it fakes."""

from __future__ import annotations

# Stable reasons after "simulated provider error <status>: ", so tests can match messages.
_REASONS: dict[int, str] = {
    400: "Invalid request: simulated bad request",
    401: "Authentication failed: simulated invalid API key",
    403: "Permission denied: simulated forbidden request",
    404: "Not found: simulated missing model",
    422: "Unprocessable entity: simulated validation failure",
    429: "Rate limit exceeded: simulated rate limit",
    500: "Internal server error: simulated server failure",
    502: "Bad gateway: simulated upstream failure",
    503: "Service unavailable: simulated overload",
    529: "Overloaded: simulated overload",
}


class SimError(Exception):
    """An error response, rendered in the shape of whichever API the request used."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.kind = kind  # a 429's limit: "requests" or "tokens"


def simulated_error(status: int, retry_after: float, detail: str = "") -> SimError:
    """Build the error a directive or a random failure asks for."""
    reason = _REASONS.get(status, f"Error: simulated status {status}")
    return SimError(
        status,
        f"simulated provider error {status}: {reason}{detail}",
        retry_after=retry_after if status == 429 else None,
    )
