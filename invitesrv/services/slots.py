"""
Typed per-connection and per-session state for modules.

A module that keeps something for each client stream or bound session
creates a L{Slot} once, at import, and reads and writes it through the slot:

    COUNT = Slot("example.count", int, default=0)
    COUNT.set(session, COUNT.get(session) + 1)

Values live on the owner (a L{invitesrv.xmpp.c2s.Session}, or the
L{invitesrv.xmpp.auth.C2SAuthenticator} of a stream before and after
binding) keyed by the slot object itself, so no two modules can collide on
a name and nothing else is stored on streams or authenticators. A value is
checked against the slot's type when set; it goes with its owner.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")

_MISSING = object()


class Slot(Generic[T]):
    """One module's value of type C{kind} on each session or stream."""

    # Every slot by name: cluster mode carries a session's boolean slots to the other nodes.
    named: dict[str, Slot] = {}

    def __init__(self, name: str, kind: type[T], default: T | None = None):
        Slot.named[name] = self
        self.name = name
        self.kind = kind
        self.default = default

    def __repr__(self) -> str:
        return f"<Slot {self.name}>"

    def get(self, owner) -> T | None:
        """The value held by C{owner}, or the slot's default."""
        return owner.slots.get(self, self.default)

    def set(self, owner, value: T) -> None:
        """Hold C{value} on C{owner} (it must be of the slot's type)."""
        if not isinstance(value, self.kind):
            raise TypeError(f"slot {self.name} holds {self.kind.__name__}, not {type(value).__name__}")
        owner.slots[self] = value

    def pop(self, owner) -> T | None:
        """Take the value off C{owner} (the default if it held none)."""
        value = owner.slots.pop(self, _MISSING)
        return self.default if value is _MISSING else value
