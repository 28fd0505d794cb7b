"""Fan-out of room stanzas to occupant sessions on every front end, for `rooms.RoomService`.

A stanza is serialised once, without a ``to``; `muc.with_to` addresses each
copy. Occupants held by this front end get it written to their stream;
each other front end gets one ``muc_deliver`` item naming its recipients,
and writes it to them the same way (`published`).

While a session is being sent its join sequence (presences, history,
subject), live stanzas for it wait (`start_joining` / `finish_joining`) so
it sees them after the history, and only those the history did not hold.

An occupant the room believes is here but is not (its session moved to
another front end by a XEP-0198 resumption, or ended without leaving) is
looked up in the session directory: followed there (its entry updated) or
taken out of the room.
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet import defer
from twisted.logger import Logger

from hipchat_server.storage.rooms import Occupant
from hipchat_server.xmpp import muc
from hipchat_server.xmpp.jid import JID

Waiting = list[tuple[str, "str | None"]]  # (stanza without 'to', message id)

# The kind of published item that carries a room stanza to another front end's sessions.
MUC_DELIVER = "muc_deliver"


def muc_deliver_item(room: str, xml: str, fulls: list[str], message_id: str | None) -> dict:
    """The ``muc_deliver`` payload `RoomFanout.published` reads: ``xml`` (no ``to``) for sessions ``fulls`` of ``room``."""
    return {"room": room, "xml": xml, "to": fulls, "id": message_id}


def by_frontend(recipients: Iterable[Occupant]) -> dict[str, list[str]]:
    """The recipients' full JIDs grouped by the front end holding their session."""
    grouped: dict[str, list[str]] = {}
    for occupant in recipients:
        grouped.setdefault(occupant.frontend, []).append(occupant.full)
    return grouped


def jid_of(full: str) -> JID:
    """A JID from text that was prepared already (it came from a bound session): no stringprep again."""
    bare, _, resource = full.partition("/")
    local, _, domain = bare.rpartition("@")
    return JID(local or None, domain, resource or None)


class RoomFanout:
    """Delivers room stanzas for ``service`` (a `rooms.RoomService`); see the module docstring."""

    log = Logger()

    def __init__(self, service):
        self.service = service
        self.router = service.router
        self._joining: dict[tuple[str, str], Waiting] = {}
        self._lost: dict[tuple[str, str], Waiting] = {}

    def send(self, room: str, recipients: Iterable[Occupant], xml: str, message_id: str | None = None) -> None:
        """Send ``xml`` (no ``to``) to each recipient session: directly here, one published item per other front end."""
        remote = by_frontend(recipients)
        for full in remote.pop(self.router.frontend_id, ()):
            self.deliver_here(room, full, xml, message_id)
        for frontend, fulls in remote.items():
            item = muc_deliver_item(room, xml, fulls, message_id)
            d = self.router.publish_to_frontend(frontend, MUC_DELIVER, item)
            d.addCallbacks(self._published_to, self._publish_failed, callbackArgs=(room, frontend, fulls), errbackArgs=(frontend,))

    def _published_to(self, receivers: int, room: str, frontend: str, fulls: list[str]) -> None:
        if receivers:
            return
        # No one listens on that front end's channel: it is gone (it clears its occupants when it starts again).
        self.log.info("front end {frontend} is gone: its sessions leave {room}", frontend=frontend, room=room)
        d = self.service.run_blocking(self.service.occupants.leave, room, fulls)
        d.addCallback(lambda gone: self.service.announce_departures(room, gone))
        d.addErrback(lambda f: self.log.failure("taking the sessions of {frontend} out of {room} failed", f, frontend=frontend, room=room))

    def _publish_failed(self, failure, frontend: str) -> None:
        self.log.failure("publishing a room stanza to {frontend} failed", failure, frontend=frontend)

    def published(self, item: dict) -> None:
        """A ``muc_deliver`` item from another front end: write it to each named session here."""
        for full in item["to"]:
            self.deliver_here(item["room"], full, item["xml"], item.get("id"))

    def deliver_here(self, room: str, full: str, xml: str, message_id: str | None = None, buffered: bool = True) -> None:
        """Write ``xml`` (not addressed yet) to session ``full`` here; it waits while the session is joining ``room``."""
        waiting = self._joining.get((room, full)) if buffered else None
        if waiting is not None:
            waiting.append((xml, message_id))
            return
        connection = self.router.sessions.get(jid_of(full))
        if connection is not None:
            connection.deliver(muc.with_to(xml, full))
            return
        lost = self._lost.get((room, full))
        if lost is not None:
            lost.append((xml, message_id))
            return
        self._lost[(room, full)] = [(xml, message_id)]
        self._find_lost(room, full).addErrback(lambda f: self.log.failure("finding {full} failed", f, full=full))

    # Joining.
    def start_joining(self, room: str, full: str) -> None:
        """From now on, stanzas for ``full`` in ``room`` wait until `finish_joining`."""
        self._joining[(room, full)] = []

    def finish_joining(self, room: str, full: str, history_ids: set[str]) -> None:
        """Deliver what waited, except messages already sent as history."""
        for xml, message_id in self._joining.pop((room, full), None) or []:
            if message_id is None or message_id not in history_ids:
                self.deliver_here(room, full, xml, message_id)

    def forget(self, full: str) -> None:
        """The session ended: drop whatever waited for it."""
        for key in [k for k in self._joining if k[1] == full]:
            del self._joining[key]

    @defer.inlineCallbacks
    def _find_lost(self, room: str, full: str):
        """An occupant session is not on this front end: follow it where it moved (XEP-0198), or take it out of the room."""
        service, jid = self.service, jid_of(full)
        try:
            frontends = yield service.run_blocking(self.router.directory.resources, jid.bare().full())
            holder = frontends.get(jid.resourcepart)
            entry = yield service.run_blocking(service.occupants.occupant, room, full)
        finally:
            pending = self._lost.pop((room, full), [])
        if entry is None:
            return
        if holder is None:
            departures = yield service.run_blocking(service.occupants.leave, room, [full])
            yield service.announce_departures(room, departures)
            return
        if holder == self.router.frontend_id:
            connection = self.router.sessions.get(jid)
            for xml, _ in pending if connection is not None else ():
                connection.deliver(muc.with_to(xml, full))
            return
        moved = Occupant(entry.full, entry.nick, entry.role, entry.affiliation, holder, entry.presence)
        yield service.run_blocking(service.occupants.update, room, [moved])
        for xml, message_id in pending:
            self.send(room, [moved], xml, message_id)
