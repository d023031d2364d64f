"""Engine.IO v4 / Socket.IO v5, sans-IO: state machines fed bytes and ``now``, never a socket.

- :mod:`.engineio`: :class:`EngineSession` (handshake, polling, websocket, upgrade, heartbeat)
  and :func:`parse_request`.
- :mod:`.socketio`: :class:`SocketIOConnection` (namespaces, events, acks, binary) and the
  packet encoders.
- :mod:`.codecs`: the typed door to python-socketio's packet codec.
- :mod:`.errors`: :class:`ProtocolError` and its tree (peer faults, with HTTP status hints).

Everything here is synchronous and deterministic: no function is a checkpoint, none can be
cancelled, and time only moves when a caller passes a later ``now``.
"""

from __future__ import annotations

from .codecs import Frame
from .engineio import EngineConfig, EngineSession, SessionState, Transport, parse_request
from .errors import ProtocolError
from .socketio import SocketIOConnection

__all__ = [
    "EngineConfig",
    "EngineSession",
    "Frame",
    "ProtocolError",
    "SessionState",
    "SocketIOConnection",
    "Transport",
    "parse_request",
]
