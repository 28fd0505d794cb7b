"""The XMPP protocol layer: one module per RFC part or XEP, no storage access of its own."""
