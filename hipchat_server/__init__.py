"""The HipChat Server chat core: XMPP, durable message path, REST API v2."""

__version__ = "0.1.0"
