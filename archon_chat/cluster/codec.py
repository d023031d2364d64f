"""What one gateway process sends another through Redis, as bytes.

Each node listens on one Redis channel of its own, which carries three kinds of message,
told apart by their first byte, then compact JSON (UTF-8; lone surrogates pass through, so
every Python string round-trips):

* ``B``, a :class:`Batch`: session events a node relays to another, each with its owner
  node and the owner's epoch (the fencing token of its lease, by which the receiver drops
  the events of a deposed owner). :class:`BatchWriter` builds one incrementally, so the
  publisher caps a PUBLISH at a number of bytes. Layout: ``B[[owner, ...], item, ...]``,
  an item being ``[owner_index, epoch, *event]``.
* ``Q``, a :class:`Request`: a command routed to a session's owner,
  ``Q[req_id, origin, kind, session_id, args]``.
* ``R``, its :class:`Reply`: ``R[req_id, ok, result]``.

An event is an array ``[kind, session_id, seq, *fields]`` with a one-letter kind (see
:data:`EVENT_KINDS`). Chunks are the hot path and stay tiny:
``["c", session_id, seq, message_id, content]``; ``ChunkStreamed.read_at`` is
process-local time, so it is not carried (``0.0`` on arrival).

Encoders trust their typed input (an unknown event class is a :class:`TypeError`, a
non-finite float a :class:`ValueError`: our bugs). Decoders trust nothing: any wrong
shape, type, unknown kind or enum value, non-finite number, or input over the caller's
``max_bytes`` raises :class:`CodecError` naming what was wrong, and no other exception
escapes them. Integers are JSON integers (not booleans, not floats) in
``[0, 2**63)``. Everything here is pure: no I/O, no clock.

Exceptions::

    ValueError
    └── CodecError
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from json.encoder import encode_basestring
from typing import Any, TypeVar

import trio

from actors.chat.messages import (
    AGENT_TYPES,
    AgentType,
    CancelReason,
    CancelTurn,
    ChatMessage,
    ChunkStreamed,
    ErrorCode,
    GetTurnState,
    MessageEmitted,
    MessageStatus,
    Sender,
    SessionEvent,
    StreamCompleted,
    SubmitMessage,
    SubmitOutcome,
    SubmitReply,
    TurnEnded,
    TurnFailed,
    TurnStarted,
    TurnState,
    TypingChanged,
)

#: An event's JSON form: ``[kind, session_id, seq, *fields]``.
EventJSON = list[Any]
#: One event of a batch: (owner node id, owner epoch, event).
OwnedEvent = tuple[str, int, SessionEvent]

MAX_INT = 2**63 - 1
BATCH = b"B"
REQUEST = b"Q"
REPLY = b"R"
#: Each event class's kind tag.
EVENT_KINDS: dict[type[SessionEvent], str] = {
    ChunkStreamed: "c",
    MessageEmitted: "m",
    StreamCompleted: "d",
    TypingChanged: "t",
    TurnFailed: "f",
    TurnStarted: "s",
    TurnEnded: "e",
}


class CodecError(ValueError):
    """Bytes or JSON that are not what a node sends: the message says what is wrong."""


# ---------------------------------------------------------------------------------------
# JSON in and out
# ---------------------------------------------------------------------------------------

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _refuse_constant(name: str) -> Any:
    raise CodecError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise CodecError(f"{text[:20]} is out of range")
    return value


_raw_decode = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_float=_finite_float
).raw_decode


def _dumps(prefix: str, obj: Any) -> bytes:
    return (prefix + _encode(obj)).encode("utf-8", "surrogatepass")


def _loads(data: bytes, start: int, what: str, max_bytes: int) -> Any:
    """The JSON value filling ``data`` from byte ``start`` (ASCII before it)."""
    if len(data) > max_bytes:
        raise CodecError(f"{what} of {len(data)} bytes is over the cap of {max_bytes}")
    try:
        text = data.decode("utf-8", "surrogatepass")
        obj, end = _raw_decode(text, start)
    except CodecError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CodecError(f"{what} is not JSON: {exc}") from None
    if end != len(text):
        raise CodecError(f"{what} has bytes after its JSON value")
    return obj


# ---------------------------------------------------------------------------------------
# Strict field readers
# ---------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return f"a {'list' if isinstance(value, list) else 'dict'}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise CodecError(f"{what} must be an integer in [0, 2**63), not {_show(value)}")
    return value


def _str(value: Any, what: str) -> str:
    if type(value) is not str:
        raise CodecError(f"{what} must be a string, not {_show(value)}")
    return value


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise CodecError(f"{what} must be true or false, not {_show(value)}")
    return value


def _list(value: Any, what: str, length: int | None = None) -> list[Any]:
    if type(value) is not list:
        raise CodecError(f"{what} must be an array, not {_show(value)}")
    if length is not None and len(value) != length:
        raise CodecError(f"{what} must have {length} items, not {len(value)}")
    return value


def _dict(value: Any, what: str, keys: frozenset[str] | None = None) -> dict[str, Any]:
    if type(value) is not dict:
        raise CodecError(f"{what} must be an object, not {_show(value)}")
    if keys is not None and value.keys() != keys:
        missing = ", ".join(sorted(keys - value.keys())) or "none"
        extra = ", ".join(islice((_show(k) for k in value if k not in keys), 5)) or "none"
        raise CodecError(
            f"{what} must have the keys {', '.join(sorted(keys))} "
            f"(missing: {missing}; extra: {extra})"
        )
    return value


_STATUSES = {m.value: m for m in MessageStatus}
_CODES = {m.value: m for m in ErrorCode}
_OUTCOMES = {m.value: m for m in SubmitOutcome}
_REASONS = {m.value: m for m in CancelReason}
_SENDERS: dict[str, Sender] = {"user": "user", "agent": "agent"}
_AGENT_TYPES: dict[str, AgentType] = {a: a for a in AGENT_TYPES}

E = TypeVar("E")


def _member(table: dict[str, E], value: Any, what: str) -> E:
    member = table.get(value) if type(value) is str else None
    if member is None:
        raise CodecError(f"{what} must be one of {sorted(table)}, not {_show(value)}")
    return member


# ---------------------------------------------------------------------------------------
# Messages and events
# ---------------------------------------------------------------------------------------

_MESSAGE_KEYS = frozenset(
    (
        "id",
        "session_id",
        "seq",
        "content",
        "sender",
        "timestamp",
        "agent_type",
        "status",
        "error",
        "client_message_id",
    )
)


def message_to_json(message: ChatMessage) -> dict[str, Any]:
    """``message`` as a JSON object with every field (``error``: ``[code, text]`` or null)."""
    return {
        "id": message.id,
        "session_id": message.session_id,
        "seq": message.seq,
        "content": message.content,
        "sender": message.sender,
        "timestamp": message.timestamp,
        "agent_type": message.agent_type,
        "status": message.status.value,
        "error": None if message.error is None else list(message.error),
        "client_message_id": message.client_message_id,
    }


def message_from_json(obj: Any) -> ChatMessage:
    """The :class:`ChatMessage` of :func:`message_to_json`; :class:`CodecError` if ``obj``
    is anything else."""
    m = _dict(obj, "message", _MESSAGE_KEYS)
    error = m["error"]
    if error is not None:
        pair = _list(error, "message error", 2)
        error = (_str(pair[0], "message error code"), _str(pair[1], "message error text"))
    return ChatMessage(
        id=_str(m["id"], "message id"),
        session_id=_str(m["session_id"], "message session_id"),
        seq=_int(m["seq"], "message seq"),
        content=_str(m["content"], "message content"),
        sender=_member(_SENDERS, m["sender"], "message sender"),
        timestamp=_str(m["timestamp"], "message timestamp"),
        agent_type=_member(_AGENT_TYPES, m["agent_type"], "message agent_type"),
        status=_member(_STATUSES, m["status"], "message status"),
        error=error,
        client_message_id=_opt_str(m["client_message_id"], "message client_message_id"),
    )


def encode_event(event: SessionEvent) -> EventJSON:
    """``event`` as ``[kind, session_id, seq, *fields]``. :class:`TypeError` for a class
    not in :data:`EVENT_KINDS`."""
    sid, seq = event.session_id, event.seq
    match event:
        case ChunkStreamed():
            return ["c", sid, seq, event.message_id, event.content]
        case MessageEmitted():
            return ["m", sid, seq, message_to_json(event.message)]
        case StreamCompleted():
            return ["d", sid, seq, event.message_id, event.status.value]
        case TypingChanged():
            return ["t", sid, seq, event.is_typing]
        case TurnFailed():
            return ["f", sid, seq, event.message_id, event.code.value, event.error]
        case TurnStarted():
            return ["s", sid, seq, event.message_id]
        case TurnEnded():
            code = None if event.code is None else event.code.value
            return [
                "e",
                sid,
                seq,
                event.message_id,
                event.status.value,
                code,
                event.first_chunk_latency_s,
            ]
    raise TypeError(f"no wire form for {type(event).__name__}")


def _opt_float(value: Any, what: str) -> float | None:
    if value is not None and type(value) is not float:
        raise CodecError(f"{what} must be a number with a fraction or null, not {_show(value)}")
    return value


def _chunk(f: list[Any]) -> ChunkStreamed:
    return ChunkStreamed(
        _str(f[1], "session_id"),
        _int(f[2], "seq"),
        _str(f[3], "chunk message_id"),
        _str(f[4], "chunk content"),
    )


def _emitted(f: list[Any]) -> MessageEmitted:
    return MessageEmitted(_str(f[1], "session_id"), _int(f[2], "seq"), message_from_json(f[3]))


def _completed(f: list[Any]) -> StreamCompleted:
    return StreamCompleted(
        _str(f[1], "session_id"),
        _int(f[2], "seq"),
        _str(f[3], "message_id"),
        _member(_STATUSES, f[4], "status"),
    )


def _typing(f: list[Any]) -> TypingChanged:
    return TypingChanged(_str(f[1], "session_id"), _int(f[2], "seq"), _bool(f[3], "is_typing"))


def _failed(f: list[Any]) -> TurnFailed:
    return TurnFailed(
        _str(f[1], "session_id"),
        _int(f[2], "seq"),
        _str(f[3], "message_id"),
        _member(_CODES, f[4], "code"),
        _str(f[5], "error"),
    )


def _started(f: list[Any]) -> TurnStarted:
    return TurnStarted(_str(f[1], "session_id"), _int(f[2], "seq"), _str(f[3], "message_id"))


def _ended(f: list[Any]) -> TurnEnded:
    return TurnEnded(
        _str(f[1], "session_id"),
        _int(f[2], "seq"),
        _str(f[3], "message_id"),
        _member(_STATUSES, f[4], "status"),
        None if f[5] is None else _member(_CODES, f[5], "code"),
        _opt_float(f[6], "first_chunk_latency_s"),
    )


#: kind -> (length of the array, builder)
_EVENT_DECODERS: dict[str, tuple[int, Callable[[list[Any]], SessionEvent]]] = {
    "c": (5, _chunk),
    "m": (4, _emitted),
    "d": (5, _completed),
    "t": (4, _typing),
    "f": (6, _failed),
    "s": (4, _started),
    "e": (7, _ended),
}


def decode_event(obj: Any) -> SessionEvent:
    """The event :func:`encode_event` made ``obj`` from; :class:`CodecError` if it is not
    one."""
    fields = _list(obj, "event")
    kind = fields[0] if fields else None
    entry = _EVENT_DECODERS.get(kind) if type(kind) is str else None
    if entry is None:
        raise CodecError(f"unknown event kind {_show(kind)}")
    length, build = entry
    if len(fields) != length:
        raise CodecError(f"event {kind!r} must have {length} items, not {len(fields)}")
    return build(fields)


def dumps_event(event: SessionEvent) -> bytes:
    """One event alone, as UTF-8 JSON (for a log entry)."""
    return _dumps("", encode_event(event))


def loads_event(data: bytes, *, max_bytes: int) -> SessionEvent:
    """The event of :func:`dumps_event`; :class:`CodecError` if ``data`` is not one or is
    longer than ``max_bytes``."""
    return decode_event(_loads(data, 0, "event", max_bytes))


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    """Events relayed from one node to another, in the order their owners emitted them."""

    events: tuple[OwnedEvent, ...]


class BatchWriter:
    """Builds one batch an event at a time, capped at ``max_bytes``.

    :meth:`add` refuses an event (returns ``False``, nothing added) when it would take the
    batch over the cap; the caller then sends :meth:`finish` and adds it to the next batch.
    The first event of a batch is always taken, so a batch over the cap holds exactly one
    (larger) event: the receiver's cap must allow the largest single event.
    """

    __slots__ = ("_items", "_max_bytes", "_owner_parts", "_owners", "_size")

    _EMPTY = len(b"B[[]]")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self._max_bytes = max_bytes
        self._owners: dict[str, int] = {}
        self._owner_parts: list[bytes] = []
        self._items: list[bytes] = []
        self._size = self._EMPTY

    def __len__(self) -> int:
        """Events in the batch so far."""
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes :meth:`finish` would return now."""
        return self._size

    def add(self, owner: str, epoch: int, event: SessionEvent) -> bool:
        """Append ``event`` of ``owner`` at ``epoch``; ``False`` (and nothing appended) if
        the batch would go over its cap."""
        index = self._owners.get(owner)
        owner_part = b""
        if index is None:
            index = len(self._owner_parts)
            owner_part = encode_basestring(owner).encode("utf-8", "surrogatepass")
        if type(event) is ChunkStreamed:  # the hot path: no intermediate list
            text = (
                f'[{index},{epoch},"c",{encode_basestring(event.session_id)},{event.seq},'
                f"{encode_basestring(event.message_id)},{encode_basestring(event.content)}]"
            )
        else:
            text = _encode([index, epoch, *encode_event(event)])
        item = text.encode("utf-8", "surrogatepass")
        grown = len(item) + 1
        if owner_part:
            grown += len(owner_part) + (1 if self._owner_parts else 0)
        if self._items and self._size + grown > self._max_bytes:
            return False
        if owner_part:
            self._owners[owner] = index
            self._owner_parts.append(owner_part)
        self._items.append(item)
        self._size += grown
        return True

    def finish(self) -> bytes:
        """The batch's bytes; the writer is empty again afterwards."""
        items = b"," + b",".join(self._items) if self._items else b""
        data = b"".join((b"B[[", b",".join(self._owner_parts), b"]", items, b"]"))
        self._owners = {}
        self._owner_parts = []
        self._items = []
        self._size = self._EMPTY
        return data


def encode_batch(events: Sequence[OwnedEvent]) -> bytes:
    """``events`` as one batch, however large."""
    writer = BatchWriter(sys.maxsize)
    for owner, epoch, event in events:
        writer.add(owner, epoch, event)
    return writer.finish()


def _batch_events(obj: Any) -> list[OwnedEvent]:
    items = _list(obj, "batch")
    if not items:
        raise CodecError("batch must start with its owners")
    owners = _list(items[0], "batch owners")
    for owner in owners:
        _str(owner, "batch owner")
    events: list[OwnedEvent] = []
    append = events.append
    for n in range(1, len(items)):
        item = items[n]
        if type(item) is not list or len(item) < 3:
            raise CodecError(f"batch item {n} must be an array [owner, epoch, *event]")
        index = item[0]
        if type(index) is not int or not 0 <= index < len(owners):
            raise CodecError(f"batch item {n} names no owner: {_show(index)}")
        epoch = _int(item[1], "epoch")
        if len(item) == 7 and item[2] == "c":  # the hot path, checked inline
            sid, seq, mid, content = item[3], item[4], item[5], item[6]
            if (
                type(sid) is str
                and type(seq) is int
                and 0 <= seq <= MAX_INT
                and type(mid) is str
                and type(content) is str
            ):
                append((owners[index], epoch, ChunkStreamed(sid, seq, mid, content)))
                continue
        append((owners[index], epoch, decode_event(item[2:])))
    return events


def decode_batch(data: bytes, *, max_bytes: int) -> list[OwnedEvent]:
    """The (owner, epoch, event) triples of a batch; :class:`CodecError` if ``data`` is
    not one or is longer than ``max_bytes``."""
    if data[:1] != BATCH:
        raise CodecError("not a batch")
    return _batch_events(_loads(data, 1, "batch", max_bytes))


# ---------------------------------------------------------------------------------------
# Requests and replies
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """A command for the owner of ``session_id``, from node ``origin``, which waits for the
    :class:`Reply` with the same ``req_id``. ``kind`` names the command; ``args`` are its
    JSON arguments (:func:`submit_args` and its siblings)."""

    req_id: int
    origin: str
    kind: str
    session_id: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to request ``req_id``: ``ok`` with its JSON ``result``, or not ok with
    what went wrong in ``result``."""

    req_id: int
    ok: bool
    result: Any


Message = Batch | Request | Reply


def encode_request(
    req_id: int, origin: str, kind: str, session_id: str, args: dict[str, Any]
) -> bytes:
    """A :class:`Request` as bytes."""
    return _dumps("Q", [req_id, origin, kind, session_id, args])


def encode_reply(req_id: int, ok: bool, result: Any) -> bytes:
    """A :class:`Reply` as bytes; ``result`` is any JSON value."""
    return _dumps("R", [req_id, ok, result])


def decode_message(data: bytes, *, max_bytes: int) -> Message:
    """Whatever a node's channel carried; :class:`CodecError` if it is none of them or is
    longer than ``max_bytes``."""
    tag = data[:1]
    if tag == BATCH:
        return Batch(tuple(_batch_events(_loads(data, 1, "batch", max_bytes))))
    if tag == REQUEST:
        f = _list(_loads(data, 1, "request", max_bytes), "request", 5)
        return Request(
            _int(f[0], "req_id"),
            _str(f[1], "request origin"),
            _str(f[2], "request kind"),
            _str(f[3], "request session_id"),
            _dict(f[4], "request args"),
        )
    if tag == REPLY:
        f = _list(_loads(data, 1, "reply", max_bytes), "reply", 3)
        return Reply(_int(f[0], "req_id"), _bool(f[1], "reply ok"), f[2])
    raise CodecError(f"unknown message type {_show(tag)}")


# ---------------------------------------------------------------------------------------
# Command payloads
# ---------------------------------------------------------------------------------------

_SUBMIT_KEYS = frozenset(("content", "context", "client_message_id"))


def submit_args(command: SubmitMessage) -> dict[str, Any]:
    """The arguments of a routed :class:`SubmitMessage` (its reply channel stays home)."""
    return {
        "content": command.content,
        "context": command.context,
        "client_message_id": command.client_message_id,
    }


def submit_from_args(
    args: Any, reply: trio.MemorySendChannel[SubmitReply] | None = None
) -> SubmitMessage:
    """The :class:`SubmitMessage` of :func:`submit_args`, answering on ``reply``."""
    a = _dict(args, "submit args", _SUBMIT_KEYS)
    return SubmitMessage(
        content=_str(a["content"], "content"),
        context=_dict(a["context"], "context"),
        client_message_id=_opt_str(a["client_message_id"], "client_message_id"),
        reply=reply,
    )


def submit_reply_to_json(reply: SubmitReply) -> dict[str, Any]:
    """A :class:`SubmitReply` as a JSON object."""
    return {"outcome": reply.outcome.value, "message_id": reply.message_id}


def submit_reply_from_json(obj: Any) -> SubmitReply:
    """The :class:`SubmitReply` of :func:`submit_reply_to_json`."""
    r = _dict(obj, "submit reply", frozenset(("outcome", "message_id")))
    return SubmitReply(
        _member(_OUTCOMES, r["outcome"], "outcome"), _opt_str(r["message_id"], "message_id")
    )


def cancel_args(command: CancelTurn) -> dict[str, Any]:
    """The arguments of a routed :class:`CancelTurn` (answered with a JSON boolean)."""
    return {"reason": command.reason.value}


def cancel_from_args(args: Any, reply: trio.MemorySendChannel[bool] | None = None) -> CancelTurn:
    """The :class:`CancelTurn` of :func:`cancel_args`, answering on ``reply``."""
    a = _dict(args, "cancel args", frozenset(("reason",)))
    return CancelTurn(_member(_REASONS, a["reason"], "reason"), reply)


def get_turn_state_args(after_seq: int | None) -> dict[str, Any]:
    """The arguments of a routed :class:`GetTurnState`."""
    return {"after_seq": after_seq}


def get_turn_state_from_args(args: Any, reply: trio.MemorySendChannel[TurnState]) -> GetTurnState:
    """The :class:`GetTurnState` of :func:`get_turn_state_args`, answering on ``reply``."""
    a = _dict(args, "turn state args", frozenset(("after_seq",)))
    after = a["after_seq"]
    return GetTurnState(None if after is None else _int(after, "after_seq"), reply)


_TURN_STATE_KEYS = frozenset(("last_seq", "typing", "turn", "events"))


def turn_state_to_json(state: TurnState) -> dict[str, Any]:
    """A :class:`TurnState` as a JSON object, its events in their wire form."""
    return {
        "last_seq": state.last_seq,
        "typing": state.typing,
        "turn": None if state.turn is None else list(state.turn),
        "events": [encode_event(e) for e in state.events],
    }


def turn_state_from_json(obj: Any) -> TurnState:
    """The :class:`TurnState` of :func:`turn_state_to_json`."""
    s = _dict(obj, "turn state", _TURN_STATE_KEYS)
    turn = s["turn"]
    if turn is not None:
        pair = _list(turn, "turn", 2)
        turn = (_str(pair[0], "turn message_id"), _int(pair[1], "turn seq"))
    return TurnState(
        last_seq=_int(s["last_seq"], "last_seq"),
        typing=_bool(s["typing"], "typing"),
        turn=turn,
        events=tuple(decode_event(e) for e in _list(s["events"], "turn events")),
    )
