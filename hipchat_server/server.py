"""The dependency container: every piece asks it for what it needs.

Like Synapse's HomeServer, each dependency has a ``get_<name>()`` that builds
it once; a test swaps one by setting the attribute before the first call.
"""

from __future__ import annotations

import os

from hipchat_server.config import Config


class ChatServer:
    def __init__(self, config: Config):
        self.config = config
        self._database_engine = None
        self._redis_sentinel = None
        self._redis_primary = None
        self._opensearch_client = None
        self._redis_writer = None
        self._spool = None
        self._recent_messages = None
        self._message_archive = None
        self._room_poster = None

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

    def get_redis_writer(self):
        """This process's ordered Redis writer (pub/sub deliveries, recent lists); started by the front end."""
        if self._redis_writer is None:
            from hipchat_server.storage.publisher import OrderedPublisher

            self._redis_writer = OrderedPublisher(self.get_redis_primary)
        return self._redis_writer

    def get_spool(self):
        """This process's spool, ``<archive.spool_dir>/<process name>``, opened (recovered) on first use."""
        if self._spool is None:
            from twisted.internet import reactor

            from hipchat_server.storage.spool import Spool

            archive = self.config.archive
            spool = Spool(os.path.join(archive.spool_dir, process_name()), segment_bytes=archive.spool_segment_bytes)
            spool.open()
            # After the front end's shutdown drain, so the messages it stores on the way out are committed.
            reactor.addSystemEventTrigger("after", "shutdown", spool.close)
            self._spool = spool
        return self._spool

    def get_recent_messages(self):
        if self._recent_messages is None:
            from hipchat_server.storage.recent import RecentMessages

            self._recent_messages = RecentMessages(self.get_redis_primary(), size=self.config.archive.recent_messages)
        return self._recent_messages

    def get_message_archive(self):
        if self._message_archive is None:
            from hipchat_server.archive import MessageArchive

            self._message_archive = MessageArchive(
                self.get_spool(),
                self.get_recent_messages(),
                self.get_redis_writer(),
                min_free_bytes=self.config.archive.spool_min_free_mb * 1024 * 1024,
            )
        return self._message_archive

    def get_room_poster(self):
        """Posts API messages and notifications into rooms from this process (`room_posting.RoomPoster`)."""
        if self._room_poster is None:
            from hipchat_server.room_posting import room_poster

            self._room_poster = room_poster(self)
        return self._room_poster


def process_name() -> str:
    """The supervisor program name of this process (``xmpp-0``, ``web``); the pid outside supervisor."""
    return os.environ.get("SUPERVISOR_PROCESS_NAME") or f"pid-{os.getpid()}"
