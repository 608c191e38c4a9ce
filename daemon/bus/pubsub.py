"""Topics and rooms: who receives what, kept apart from routing (and from policy).

Subscriptions are exact topics, prefixes (``a.b.*`` matches ``a.b.c`` and
``a.b.c.d``), or ``*``. Matching a topic walks its prefixes: O(depth), not
O(subscriptions), so 200 subscribers cost one dict lookup per level.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Generic, TypeVar

S = TypeVar("S")


class Topics(Generic[S]):
    def __init__(self) -> None:
        self._exact: defaultdict[str, set[S]] = defaultdict(set)
        self._prefix: defaultdict[str, set[S]] = defaultdict(set)  # "a.b." or "" for "*"
        self._by_subscriber: defaultdict[S, set[str]] = defaultdict(set)

    @staticmethod
    def _split(pattern: str) -> tuple[bool, str]:
        if pattern == "*":
            return True, ""
        if pattern.endswith(".*"):
            return True, pattern[:-1]
        return False, pattern

    def subscribe(self, subscriber: S, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            is_prefix, key = self._split(pattern)
            (self._prefix if is_prefix else self._exact)[key].add(subscriber)
            self._by_subscriber[subscriber].add(pattern)
        return sorted(self._by_subscriber[subscriber])

    def unsubscribe(self, subscriber: S, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            is_prefix, key = self._split(pattern)
            table = self._prefix if is_prefix else self._exact
            members = table.get(key)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del table[key]
            self._by_subscriber[subscriber].discard(pattern)
        remaining = sorted(self._by_subscriber[subscriber])
        if not remaining:
            self._by_subscriber.pop(subscriber, None)
        return remaining

    def drop(self, subscriber: S) -> None:
        patterns = self._by_subscriber.pop(subscriber, set())
        if patterns:
            self._by_subscriber[subscriber] = patterns
            self.unsubscribe(subscriber, list(patterns))

    def match(self, topic: str) -> set[S]:
        found: set[S] = set(self._exact.get(topic, ()))
        if self._prefix:
            found.update(self._prefix.get("", ()))
            end = topic.find(".")
            while end != -1:
                found.update(self._prefix.get(topic[: end + 1], ()))
                end = topic.find(".", end + 1)
        return found


class Rooms(Generic[S]):
    """Rooms, their members, owner and invitations; who may do what is the router's call.

    A room is created by its first join, owned by that client's id, and
    forgotten (invitations too) when its last member leaves. Members are
    connections; the owner and invitations are client ids, so they survive
    a reconnect.
    """

    def __init__(self) -> None:
        self._members: dict[str, set[S]] = {}
        self._owner: dict[str, str] = {}
        self._invited: dict[str, set[str]] = {}
        self._rooms_of: defaultdict[S, set[str]] = defaultdict(set)

    def exists(self, room: str) -> bool:
        return room in self._members

    def create(self, room: str, member: S, *, owner: str) -> set[S]:
        if room in self._members:
            raise ValueError(f"room {room!r} exists")
        self._members[room] = set()
        self._owner[room] = owner
        self._invited[room] = set()
        return self.join(room, member)

    def join(self, room: str, member: S) -> set[S]:
        if room not in self._members:
            raise KeyError(room)
        self._members[room].add(member)
        self._rooms_of[member].add(room)
        return self._members[room]

    def leave(self, room: str, member: S) -> set[S]:
        members = self._members.get(room, set())
        members.discard(member)
        if not members:
            self._members.pop(room, None)
            self._owner.pop(room, None)
            self._invited.pop(room, None)
        rooms = self._rooms_of.get(member)
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[member]
        return members

    def owner(self, room: str) -> str | None:
        return self._owner.get(room)

    def invite(self, room: str, client_id: str) -> None:
        self._invited[room].add(client_id)

    def uninvite(self, room: str, client_id: str) -> None:
        self._invited.get(room, set()).discard(client_id)

    def invited(self, room: str) -> set[str]:
        return set(self._invited.get(room, ()))

    def members(self, room: str) -> set[S]:
        return self._members.get(room, set())

    def rooms_of(self, member: S) -> set[str]:
        return set(self._rooms_of.get(member, ()))

    def __len__(self) -> int:
        return len(self._members)
