"""The dependency container: every piece asks it for what it needs.

Like Synapse's HomeServer, each dependency has a ``get_<name>()`` that builds
it once; a test swaps one by setting the attribute before the first call.
"""

from __future__ import annotations

from hipchat_server.config import Config


class ChatServer:
    def __init__(self, config: Config):
        self.config = config
        self._database_engine = None
        self._redis_sentinel = None
        self._redis_primary = None
        self._opensearch_client = None

    def get_config(self) -> Config:
        return self.config

    def get_database_engine(self):
        if self._database_engine is None:
            from hipchat_server.storage.database import create_database_engine

            self._database_engine = create_database_engine(self.config.database)
        return self._database_engine

    def get_redis_sentinel(self):
        if self._redis_sentinel is None:
            from hipchat_server.storage.redis import create_sentinel

            self._redis_sentinel = create_sentinel(self.config.redis)
        return self._redis_sentinel

    def get_redis_primary(self):
        if self._redis_primary is None:
            from hipchat_server.storage.redis import primary_client

            self._redis_primary = primary_client(self.config.redis, self.get_redis_sentinel())
        return self._redis_primary

    def get_opensearch_client(self):
        if self._opensearch_client is None:
            from hipchat_server.storage.opensearch import create_opensearch_client

            self._opensearch_client = create_opensearch_client(self.config.opensearch)
        return self._opensearch_client
