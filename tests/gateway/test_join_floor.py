"""A socket that just joined gets nothing twice: events up to the seq its join replayed
that are still on their way (the fan-out's channel, another node) skip it."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from actors.chat.memory_store import MemoryStore
from actors.chat.messages import (
    CancelReason,
    ChunkStreamed,
    Command,
    GetTurnState,
    TurnState,
)
from archon_chat.config import load_settings
from archon_chat.gateway.core import Gateway
from archon_chat.gateway.metrics import Metrics


class Hub:
    """A live session whose actor says it has emitted up to seq 5."""

    def live_sessions(self) -> int:
        return 1

    def is_live(self, session_id: str) -> bool:
        return True

    async def deliver(self, session_id: str, command: Command) -> None:
        assert isinstance(command, GetTurnState)
        command.reply.send_nowait(TurnState(5, True, ("m", 2), ()))

    def cancel_nowait(self, session_id: str, reason: CancelReason) -> bool:
        return False


class Emitter:
    def __init__(self) -> None:
        self.rooms: dict[str, set[str]] = {}
        self.sent: list[tuple[str, Any, str | None, tuple[str, ...]]] = []

    def emit(
        self,
        event: str,
        data: Any,
        *,
        room: str | None = None,
        to: str | None = None,
        skip: Collection[str] = (),
        render: Callable[[Any], Any] | None = None,
    ) -> None:
        self.sent.append((event, data, room or to, tuple(skip)))

    def drop_queued(self, room: str, unwanted: Callable[[Any], bool]) -> int:
        return 0

    def enter_room(self, sid: str, room: str) -> None:
        self.rooms.setdefault(room, set()).add(sid)

    def leave_room(self, sid: str, room: str) -> bool:
        self.rooms.get(room, set()).discard(sid)
        return not self.rooms.get(room)

    def in_room(self, sid: str, room: str) -> bool:
        return sid in self.rooms.get(room, set())

    def has_members(self, room: str) -> bool:
        return bool(self.rooms.get(room))

    def room_count(self, sid: str) -> int:
        return sum(sid in members for members in self.rooms.values())

    def rooms_of(self, sid: str) -> list[str]:
        return [room for room, members in self.rooms.items() if sid in members]

    def on_vacated(self, listener: Callable[[str], None]) -> None:
        pass


def chunk(seq: int) -> ChunkStreamed:
    return ChunkStreamed("s1", seq, "m", f"c{seq} ")


async def test_late_events_up_to_the_joined_seq_skip_the_joined_socket() -> None:
    emitter = Emitter()
    settings = load_settings({}, {"db_path": ":memory:"})
    gateway = Gateway(settings, MemoryStore(), Hub(), emitter, Metrics())
    emitter.enter_room("old", "chat_s1")
    ack = await gateway.on_join_chat("new", {"session_id": "s1"})
    assert ack["last_seq"] == 5
    emitter.sent.clear()
    for seq in (4, 5, 6, 7):
        gateway.relay_remote(chunk(seq))
    skipped = {e[1].seq: e[3] for e in emitter.sent if e[0] == "stream_chunk"}
    assert skipped == {4: ("new",), 5: ("new",), 6: (), 7: ()}
    # A leave forgets the floor; so does a room's last member going.
    await gateway.on_join_chat("new", {"session_id": "s1"})
    await gateway.on_leave_chat("new", {"session_id": "s1"})
    assert gateway._floors == {}
