"""An incremental ``text/event-stream`` decoder (the WHATWG HTML "server-sent events"
parsing rules), sans-IO: feed bytes in, take events out.

Lines end with CR LF, LF or CR (a CR at the end of one feed may be the first half of a CR
LF split across two feeds). A line starting with ``:`` is a comment (agents send
``: ping`` as a heartbeat); ``field: value`` lines set ``event``, ``data`` (joined with
LF), ``id`` and ``retry``; a blank line dispatches the event, unless it has no data. A
UTF-8 byte order mark at the very start is skipped. At the end of the stream an event
without its blank line is dropped, as the standard says.

Bounds: a line or an event's data longer than ``max_chars`` raises
:class:`SSEDecodeError`, so a peer cannot make us buffer without limit. Invalid UTF-8
raises it too.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_EOL = re.compile(r"\r\n|\r|\n")


class SSEDecodeError(ValueError):
    """The bytes are not a well-formed event stream (invalid UTF-8, or over a bound)."""


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    data: str
    event: str = "message"
    id: str | None = None


@dataclass(frozen=True, slots=True)
class SSEComment:
    text: str


SSEItem = ServerSentEvent | SSEComment


class SSEDecoder:
    """Turns the chunks of one event stream into :class:`ServerSentEvent` and
    :class:`SSEComment` items, in order."""

    __slots__ = (
        "_buffer",
        "_data",
        "_data_chars",
        "_decoder",
        "_event",
        "_last_id",
        "_max_chars",
        "_pending_cr",
        "_started",
    )

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._buffer = ""
        self._pending_cr = False
        self._started = False
        self._data: list[str] = []
        self._data_chars = 0
        self._event = ""
        self._last_id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEItem]:
        """Decode ``chunk`` and return the items it completed (possibly none)."""
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise SSEDecodeError(f"event stream is not valid UTF-8: {exc.reason}") from None
        if not self._started and text:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._pending_cr and text:
            self._pending_cr = False
            if text[0] == "\n":
                text = text[1:]
        buffer = self._buffer + text if self._buffer else text
        out: list[SSEItem] = []
        pos = 0
        for match in _EOL.finditer(buffer):
            self._line(buffer[pos : match.start()], out)
            pos = match.end()
        self._buffer = buffer[pos:]
        if pos == len(buffer) and buffer.endswith("\r"):
            self._pending_cr = True
        if len(self._buffer) > self._max_chars:
            raise SSEDecodeError(f"event stream line longer than {self._max_chars} characters")
        return out

    def close(self) -> None:
        """End of stream. Raises :class:`SSEDecodeError` if it stops inside a UTF-8
        character."""
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise SSEDecodeError(f"event stream is not valid UTF-8: {exc.reason}") from None

    def _line(self, line: str, out: list[SSEItem]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[0] == ":":
            out.append(SSEComment(line[1:].removeprefix(" ")))
            return
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_chars += len(value) + 1
            if self._data_chars > self._max_chars:
                raise SSEDecodeError(f"event data longer than {self._max_chars} characters")
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        # "retry" and unknown fields are ignored, as the standard says.

    def _dispatch(self, out: list[SSEItem]) -> None:
        if self._data:
            data = "\n".join(self._data)
            out.append(ServerSentEvent(data, self._event or "message", self._last_id))
        self._data = []
        self._data_chars = 0
        self._event = ""
