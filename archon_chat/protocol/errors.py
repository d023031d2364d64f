"""Faults of the peer, as the Engine.IO / Socket.IO state machines report them.

Every exception raised by :mod:`archon_chat.protocol` because of what the peer sent is a
:class:`ProtocolError`; anything else escaping the package is a bug of ours. Each error
carries what the I/O shell needs to answer: an HTTP status hint, the Engine.IO error code
and message for the JSON body (``{"code": N, "message": "..."}``), and a websocket close
code::

    ProtocolError                      (400, code 3 "Bad request", close 1002)
    ├── UnknownTransport               (400, code 0 "Transport unknown")
    ├── UnknownSid                     (400, code 1 "Session ID unknown")
    ├── BadHandshakeMethod             (400, code 2 "Bad handshake method")
    ├── UnsupportedProtocolVersion     (400, code 5 "Unsupported protocol version")
    ├── Forbidden                      (403, code 4 "Forbidden")
    ├── TooManyRequests                (429, close 1013; ``retry_after_s``)
    ├── BadRequest                     (400, code 3 "Bad request")
    │   ├── PayloadTooLarge            (413, close 1009)
    │   ├── AlreadyUpgraded            (a second websocket for a session: accepted, closed)
    │   └── MalformedPacket            (undecodable Engine.IO or Socket.IO packet)
    └── InvalidState                   (a packet the current state does not allow)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AlreadyUpgraded",
    "BadHandshakeMethod",
    "BadRequest",
    "Forbidden",
    "InvalidState",
    "MalformedPacket",
    "PayloadTooLarge",
    "ProtocolError",
    "TooManyRequests",
    "UnknownSid",
    "UnknownTransport",
    "UnsupportedProtocolVersion",
]


class ProtocolError(Exception):
    """The peer broke the protocol; ``detail`` says how (for the log, never for the peer)."""

    status_hint: ClassVar[int] = 400
    code: ClassVar[int] = 3
    message: ClassVar[str] = "Bad request"
    close_code: ClassVar[int] = 1002

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.message)
        self.detail = detail or self.message
        # Set by whoever logs it, so one bad input makes one log line.
        self.logged = False

    def body(self) -> dict[str, int | str]:
        """The JSON body Engine.IO servers answer with."""
        return {"code": self.code, "message": self.message}


class UnknownTransport(ProtocolError):
    code = 0
    message = "Transport unknown"


class UnknownSid(ProtocolError):
    code = 1
    message = "Session ID unknown"


class BadHandshakeMethod(ProtocolError):
    code = 2
    message = "Bad handshake method"


class UnsupportedProtocolVersion(ProtocolError):
    code = 5
    message = "Unsupported protocol version"


class Forbidden(ProtocolError):
    status_hint = 403
    code = 4
    message = "Forbidden"
    close_code = 1008


class TooManyRequests(ProtocolError):
    """A client address is over a handshake budget or cap; it may retry later."""

    status_hint = 429
    message = "Too many requests"
    close_code = 1013

    def __init__(self, detail: str = "", retry_after_s: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class BadRequest(ProtocolError):
    pass


class PayloadTooLarge(BadRequest):
    status_hint = 413
    close_code = 1009


class MalformedPacket(BadRequest):
    pass


class AlreadyUpgraded(BadRequest):
    """A websocket for a session that already has one, or is probing one. The reference
    server accepts such a websocket and closes it at once (a refused handshake surfaces as
    an uncaught error in clients without an error listener); the shell does the same."""


class InvalidState(ProtocolError):
    pass
