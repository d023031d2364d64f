"""Exceptions of the Socket.IO application API::

SocketIOError
├── ConnectRefused      raised by a connect handler to refuse (CONNECT_ERROR)
├── NotConnected        the sid is unknown, or its socket is not connected now
└── CallTimeout         (also a TimeoutError) no acknowledgement in time
"""

from __future__ import annotations

from typing import Any

__all__ = ["CallTimeout", "ConnectRefused", "NotConnected", "SocketIOError"]


class SocketIOError(Exception):
    pass


class ConnectRefused(SocketIOError):
    """Raise in a connect handler to refuse; the client gets CONNECT_ERROR with ``data``.

    ``data`` is sent as is when it is a dict (a ``message`` is added if missing); a string
    becomes ``{"message": data}``.
    """

    def __init__(self, data: dict[str, Any] | str | None = None) -> None:
        if data is None:
            payload: dict[str, Any] = {"message": "Connection refused"}
        elif isinstance(data, str):
            payload = {"message": data}
        else:
            payload = dict(data)
            payload.setdefault("message", "Connection refused")
        super().__init__(payload["message"])
        self.data = payload


class NotConnected(SocketIOError):
    pass


class CallTimeout(SocketIOError, TimeoutError):
    pass
