"""Delayed Delivery (XEP-0203): mark a stanza delivered later than it was sent, with the original time."""

from __future__ import annotations

import datetime

from twisted.words.xish import domish

DELAY_NS = "urn:xmpp:delay"


def add_delay(stanza: domish.Element, stamp: datetime.datetime, from_: str, reason: str | None = None) -> None:
    """Add ``<delay stamp=... from=.../>`` (UTC, XEP-0082 format) to ``stanza``."""
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    text = stamp.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    delay = stanza.addElement((DELAY_NS, "delay"), content=reason)
    delay["stamp"], delay["from"] = text, from_
