"""Software Version (XEP-0092): the server's name and version, without the operating system."""

from __future__ import annotations

from twisted.words.xish import domish

from hipchat_server import __version__

VERSION_NS = "jabber:iq:version"


def server_version() -> domish.Element:
    # The OS is left out on purpose: it helps an attacker more than a user.
    query = domish.Element((VERSION_NS, "query"))
    query.addElement("name", content="HipChat Server")
    query.addElement("version", content=__version__)
    return query
