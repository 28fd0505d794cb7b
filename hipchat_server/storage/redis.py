"""Redis access through Sentinel: clients always talk to the current primary."""

from __future__ import annotations

from redis.sentinel import Sentinel

from hipchat_server.config import RedisConfig

# Short timeouts: a failover takes seconds, and a caller should learn fast
# that the primary is gone rather than hang.
SOCKET_TIMEOUT = 2.0


def create_sentinel(config: RedisConfig) -> Sentinel:
    return Sentinel(
        config.sentinels,
        socket_timeout=SOCKET_TIMEOUT,
        sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT},
        password=config.password,
    )


def primary_client(config: RedisConfig, sentinel: Sentinel | None = None):
    """A client bound to whichever node Sentinel currently names primary."""
    sentinel = sentinel or create_sentinel(config)
    return sentinel.master_for(config.service_name, socket_timeout=SOCKET_TIMEOUT)
