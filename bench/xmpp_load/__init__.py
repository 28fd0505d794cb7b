"""The XMPP load generator: raw XMPP over TLS on asyncio, many clients per process (see bench/README.md)."""
