"""Room membership, per namespace: the in-process emitter's address book.

Every socket is a member of its namespace and of the room named after its own sid (so
``to=sid`` and ``room=...`` are one lookup). Sockets in their disconnect grace period stay
members (the server tells them apart by state). A cross-node emitter would keep this
interface and add the other nodes' members behind it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Set

__all__ = ["Rooms"]

_EMPTY: frozenset[str] = frozenset()


class Rooms:
    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, set[str]]] = {}
        self._namespace: dict[str, set[str]] = {}
        self._of_sid: dict[str, set[str]] = {}

    def add_socket(self, namespace: str, sid: str) -> None:
        self._namespace.setdefault(namespace, set()).add(sid)
        self._of_sid[sid] = set()
        self.join(namespace, sid, sid)

    def remove_socket(self, namespace: str, sid: str) -> list[str]:
        """Forget ``sid``; the rooms (its own excepted) it leaves empty."""
        emptied = []
        for room in self._of_sid.pop(sid, _EMPTY):
            if self._discard(namespace, room, sid) and room != sid:
                emptied.append(room)
        members = self._namespace.get(namespace)
        if members is not None:
            members.discard(sid)
            if not members:
                del self._namespace[namespace]
        return emptied

    def join(self, namespace: str, room: str, sid: str) -> None:
        rooms = self._of_sid.get(sid)
        if rooms is None:
            raise KeyError(sid)
        rooms.add(room)
        self._rooms.setdefault(namespace, {}).setdefault(room, set()).add(sid)

    def leave(self, namespace: str, room: str, sid: str) -> bool:
        """Take ``sid`` out of ``room``; whether it was a member."""
        rooms = self._of_sid.get(sid)
        if rooms is None or room not in rooms:
            return False
        rooms.discard(room)
        self._discard(namespace, room, sid)
        return True

    def _discard(self, namespace: str, room: str, sid: str) -> bool:
        """Take ``sid`` out of ``room``'s members; whether the room is now empty."""
        by_room = self._rooms.get(namespace)
        if by_room is None:
            return False
        members = by_room.get(room)
        if members is None:
            return False
        members.discard(sid)
        if not members:
            del by_room[room]
            if not by_room:
                del self._rooms[namespace]
            return True
        return False

    def rooms_of(self, sid: str) -> Set[str]:
        return self._of_sid.get(sid, _EMPTY)

    def members(self, namespace: str, room: str | None) -> Set[str]:
        """Sids in ``room`` of ``namespace`` (``None``: every socket of the namespace)."""
        if room is None:
            return self._namespace.get(namespace, _EMPTY)
        return self._rooms.get(namespace, {}).get(room, _EMPTY)

    def targets(
        self, namespace: str, rooms: str | Iterable[str] | None, skip: Set[str]
    ) -> Collection[str]:
        """Sids an emit to ``rooms`` reaches, each once, minus ``skip``."""
        if rooms is None or isinstance(rooms, str):
            members = self.members(namespace, rooms)
            return [sid for sid in members if sid not in skip] if skip else list(members)
        found: set[str] = set()
        for room in rooms:
            found.update(self.members(namespace, room))
        return found - skip if skip else found
