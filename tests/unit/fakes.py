"""Fakes shared by the unit tests of the router and the services built on it."""

from __future__ import annotations

from hipchat_server.xmpp.jid import parse_jid


class FakeConnection:
    """A bound client stream: its full JID and every stanza delivered to it, in order."""

    def __init__(self, jid: str):
        self.jid = parse_jid(jid)
        self.delivered: list = []

    def deliver(self, element) -> None:
        self.delivered.append(element)

    def take(self) -> list:
        """What the client received since the last take."""
        taken, self.delivered = self.delivered, []
        return taken
