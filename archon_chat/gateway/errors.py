"""The gateway's refusals, one exception carrying the contract's code and HTTP status.

::

    GatewayError            (code, detail, status, retry_after)
      raised for bad input and refused requests; REST maps ``status`` (and
      ``retry_after`` seconds to ``Retry-After``), Socket.IO sends an ``error`` event
      with ``code`` to the one socket
"""

from __future__ import annotations

from actors.chat.messages import ErrorCode

_STATUS = {
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.SESSION_FULL: 409,
    ErrorCode.SESSION_BUSY: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.INTERNAL_ERROR: 503,
}

_DETAIL = {
    ErrorCode.SESSION_NOT_FOUND: "Session not found",
    ErrorCode.SESSION_FULL: "Session has reached its message limit",
    ErrorCode.SESSION_BUSY: "Too many messages waiting for a reply; try again shortly",
    ErrorCode.RATE_LIMITED: "Too many messages; slow down",
    ErrorCode.UNAUTHORIZED: "Missing or wrong API key",
    ErrorCode.TOKEN_EXPIRED: "Token expired",
}


class GatewayError(Exception):
    def __init__(
        self,
        code: ErrorCode,
        detail: str | None = None,
        status: int | None = None,
        *,
        retry_after: float | None = None,
    ):
        self.code = code
        self.retry_after = retry_after
        self.detail = detail or _DETAIL.get(code, code.value.replace("_", " ").capitalize())
        self.status = status or _STATUS.get(code, 400)
        super().__init__(self.detail)

    def body(self) -> dict[str, str]:
        return {"detail": self.detail, "code": self.code.value}


def invalid(detail: str) -> GatewayError:
    return GatewayError(ErrorCode.INVALID_REQUEST, detail)
