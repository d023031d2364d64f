"""Micro-benchmark of the sans-IO protocol core: µs per encode, decode and state-machine step.

No event loop, no sockets: what one packet costs the CPU in ``archon_chat.protocol``.
Run ``python -m bench.protocol_micro`` (``--quick`` for a short run). Each figure is the
best of several repeats of a timed loop, so it is the cost without scheduler noise.
"""

from __future__ import annotations

import argparse
import platform
import timeit
from collections.abc import Callable
from pathlib import Path

from archon_chat.config import Settings, derive
from archon_chat.protocol.codecs import decode_payload, encode_payload
from archon_chat.protocol.engineio import EngineConfig, EngineSession, Transport
from archon_chat.protocol.socketio import SocketIOConnection, event_frames, with_offset

CHUNK = {
    "type": "stream_chunk",
    "session_id": "6f1c0b1e-6a8f-4f43-9d1e-2b7c5d9e8a10",
    "seq": 1234,
    "message_id": "0b6d8e0c-3f0a-4b8e-8d5a-7e2f9c1a4b3d",
    "content": "a token or three of streamed text ",
}
CHUNK_FRAME = event_frames("/", "stream_chunk", (CHUNK,))[0]
assert isinstance(CHUNK_FRAME, str)
INBOUND = '2["chat_message",{"session_id":"6f1c0b1e","message":"What is Archon?"}]'


def _engine() -> EngineSession:
    session = EngineSession("sid", derive(EngineConfig, Settings()), Transport.WEBSOCKET, 0.0)
    session.take_frames()
    return session


def _sio() -> SocketIOConnection:
    settings = Settings()
    conn = SocketIOConnection(settings.max_attachments, settings.max_attachment_bytes)
    conn.receive_message("0")
    conn.accept("/")
    conn.events()
    return conn


def cases() -> list[tuple[str, Callable[[], object]]]:
    engine = _engine()
    sio = _sio()
    poll_frames = [CHUNK_FRAME] * 16
    poll_body = encode_payload(poll_frames)
    binary = event_frames("/", "file", ({"name": "x"}, b"\x00" * 1024))
    now = [0.0]

    def ws_in() -> object:
        engine.receive_frame("4" + INBOUND, 1.0)
        engine.events()
        return None

    def sio_in() -> object:
        sio.receive_message(INBOUND)
        return sio.events()

    def inbound() -> object:
        engine.receive_frame("4" + INBOUND, 1.0)
        for ev in engine.events():
            sio.receive_message(ev.data)  # type: ignore[union-attr]
        return sio.events()

    def ws_out() -> object:
        engine.send_frames((CHUNK_FRAME,))
        return engine.take_frames()

    def heartbeat() -> object:
        now[0] += 25.0
        engine.handle_timeout(now[0])
        engine.receive_frame("3", now[0])
        engine.events()
        return engine.take_frames()

    def polling_round() -> object:
        session = EngineSession("sid", derive(EngineConfig, Settings()), Transport.POLLING, 0.0)
        session.begin_poll()
        session.take_poll()
        session.send_frames(poll_frames)
        session.begin_poll()
        return session.take_poll()

    return [
        ("encode stream_chunk event", lambda: event_frames("/", "stream_chunk", (CHUNK,))),
        ("splice recovery offset", lambda: with_offset((CHUNK_FRAME,), "1f3a")),
        ("encode binary event (1 KiB)", lambda: event_frames("/", "f", ({"n": 1}, b"\0" * 1024))),
        ("decode Socket.IO event", sio_in),
        ("Engine.IO websocket frame in", ws_in),
        ("frame in -> Socket.IO event out", inbound),
        ("queue + take one frame (websocket)", ws_out),
        ("heartbeat: ping, pong, reschedule", heartbeat),
        ("decode polling payload (16 packets)", lambda: decode_payload(poll_body)),
        ("encode polling payload (16 packets)", lambda: encode_payload(poll_frames)),
        ("polling session: handshake + 16-packet poll", polling_round),
        ("reassemble binary event (1 attachment)", lambda: _reassemble(binary)),
    ]


def _reassemble(frames: tuple[str | bytes, ...]) -> object:
    conn = _sio()
    for frame in frames:
        conn.receive_message(frame[1:] if isinstance(frame, str) else frame)
    return conn.events()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}; {platform.system()} {platform.release()}; Python {platform.python_version()}"


def run(quick: bool) -> list[tuple[str, float]]:
    repeat, budget = (3, 0.05) if quick else (7, 0.3)
    results = []
    for name, fn in cases():
        timer = timeit.Timer(fn)
        number, _ = timer.autorange()
        number = max(1, int(number * budget / 0.2))
        best = min(timer.repeat(repeat=repeat, number=number)) / number
        results.append((name, best * 1e6))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{'operation':<46} {'µs/op':>8}")
    for name, micros in run(args.quick):
        print(f"{name:<46} {micros:>8.2f}")


if __name__ == "__main__":
    main()
