"""The XMPP front-end process: client streams on the STARTTLS port and the direct-TLS port.

Supervisor runs several of these per host; they all listen on the same two
ports, each socket opened with SO_REUSEPORT, so the kernel spreads new
connections over the processes. The ports are above 1024: the process runs
as the service user from the start (it drops privileges only if started as root).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import socket
import sys
import time

from twisted.internet import defer, reactor, threads
from twisted.internet.task import LoopingCall
from twisted.python.threadpool import ThreadPool
from twisted.protocols.tls import TLSMemoryBIOFactory

from hipchat_server import metrics
from hipchat_server import users_admin
from hipchat_server.app.process import GarbageCollectionWatch, drop_privileges, start_process, tune_garbage_collection
from hipchat_server.config import Config
from hipchat_server.history import history_for
from hipchat_server.routing import ClusterRouter, DeliveryListener
from hipchat_server.server import ChatServer, process_name
from hipchat_server.presence import PresenceService
from hipchat_server.rooms import room_service
from hipchat_server.storage.offline import OfflineStore
from hipchat_server.storage.presence import PresenceStore
from hipchat_server.storage.roster import RosterStore
from hipchat_server.storage.sessions import SessionDirectory
from hipchat_server.storage.vcards import VCardStore
from hipchat_server.xmpp.auth_limits import AuthFailureLimiter
from hipchat_server.xmpp.bind import SessionTable
from hipchat_server.xmpp.c2s import ClientFactory
from hipchat_server.xmpp.login_throttle import LoginThrottle
from hipchat_server.xmpp.mam import MamService
from hipchat_server.xmpp.sasl import SaslServer
from hipchat_server.xmpp.tls import server_tls_options
from hipchat_server.xmpp.vcard import VCardService

log = logging.getLogger("hipchat.xmpp")

LISTEN_BACKLOG = 4096  # a reconnect storm arrives all at once; the kernel queues what the throttle holds back
# Logins (TLS handshake, SASL, bind) in progress per front end before it stops accepting for a moment.
MAX_LOGINS_IN_PROGRESS = 200
# Seconds a stopping front end waits for ended sessions' unacknowledged messages to be stored.
SHUTDOWN_DRAIN_SECONDS = 10.0
# Seconds a stopping front end waits for its delivery listener to unsubscribe.
LISTENER_STOP_SECONDS = 5.0
REDIS_THREADS = 8
ACTIVITY_REPORT_SECONDS = 60.0
# At start (after a reboot, or with the whole appliance) Redis may come up after the front ends.
REDIS_START_WAIT_SECONDS = 60.0


def reuse_port_socket(address: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket that other processes may bind to the same port (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def frontend_id() -> str:
    """This front end's name in the session directory: host and supervisor process name."""
    return f"{socket.gethostname()}:{process_name()}"


def start_redis_thread_pool() -> ThreadPool:
    """The threads that run the session directory's Redis calls, apart from the reactor's pool (MariaDB)."""
    pool = ThreadPool(minthreads=2, maxthreads=REDIS_THREADS, name="redis")
    pool.start()
    reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
    return pool


def run_in_pool(pool: ThreadPool):
    """A ``run_blocking(f, *args)`` that runs ``f`` in ``pool`` and returns a Deferred of its result."""
    return lambda f, *args: threads.deferToThreadPool(reactor, pool, f, *args)


def build_factories(
    chat_server: ChatServer, tls_options, directory: SessionDirectory, redis_pool: ThreadPool | None = None
) -> tuple[ClientFactory, ClientFactory]:
    """The factories of the STARTTLS port and of the direct-TLS port, sharing sessions and limits.

    Session-directory calls run in ``redis_pool`` (the reactor's pool when None).
    """
    from hipchat_server.storage.users import UserStore
    from hipchat_server.users import UserCredentials

    config: Config = chat_server.get_config()
    domain = config.server.domain
    credentials = UserCredentials(UserStore(chat_server.get_database_engine()))
    # Every front end must answer an unknown user with the same fake SCRAM salt,
    # or comparing answers would tell who exists: derive it from a shared secret.
    fake_salt_secret = hashlib.sha256(b"hipchat scram fake salt\0" + config.database.password.encode()).digest()
    sasl_server = SaslServer(credentials, domain, fake_salt_secret=fake_salt_secret)
    sessions = SessionTable()
    shared = dict(
        sessions=sessions,
        auth_limiter=AuthFailureLimiter(config.xmpp.auth_failures_per_minute, 60.0),
        max_sessions_per_user=config.xmpp.max_sessions_per_user,
        sm_resume_timeout=config.xmpp.sm_resume_timeout,
        sm_max_unacked=config.xmpp.sm_max_unacked,
    )
    engine = chat_server.get_database_engine()
    publisher = chat_server.get_redis_writer()
    router = ClusterRouter(
        domain,
        sessions,
        directory,
        run_blocking=run_in_pool(redis_pool) if redis_pool is not None else threads.deferToThread,
        run_database=threads.deferToThread,
        offline_store=OfflineStore(engine),
        publisher=publisher,
        archive=chat_server.get_message_archive(),
    )
    router.presence = PresenceService(
        domain, RosterStore(engine), PresenceStore(chat_server.get_redis_primary()), router, threads.deferToThread
    )
    VCardService(VCardStore(engine), threads.deferToThread).register(router)
    # History (XEP-0313) of one's own conversations; the rooms service hands room queries to mam.room_query.
    mam = MamService(history_for(chat_server, run_redis=router.run_blocking))
    mam.register(router)
    router.rooms = room_service(chat_server, router)  # group rooms (XEP-0045) on <rooms.service>.<domain>
    router.rooms.register(router)
    router.rooms.serve_archive(mam)
    starttls = ClientFactory(domain, sasl_server, router, tls_options, **shared)
    direct = ClientFactory(domain, sasl_server, router, tls_options, direct_tls=True, **shared)
    return starttls, direct


def open_session_directory(chat_server: ChatServer) -> SessionDirectory:
    """This front end's session directory, cleared of what a crashed predecessor left. Blocks (Redis)."""
    directory = SessionDirectory(chat_server.get_redis_primary(), frontend_id())
    cleared = directory.clear_frontend()
    if cleared:
        log.info("cleared %d stale sessions of front end %s", cleared, directory.frontend_id)
    return directory


def start_frontend(
    chat_server: ChatServer, tls_options, directory: SessionDirectory, listening_ports: list | None = None
) -> tuple[ClientFactory, ClientFactory]:
    """Build the client factories and start what every front end runs (the XMPP processes and the HTTPS one).

    Listens for the stanzas other front ends publish for this one's sessions.
    On stop it closes ``listening_ports`` (filled in by the caller once it
    listens), hands each resumable session to a running front end so its client
    resumes there (XEP-0198), and tells every other client why its stream ends,
    so it reconnects (to another front end).
    """
    starttls, direct = build_factories(chat_server, tls_options, directory, start_redis_thread_pool())
    starttls.router.publisher.start()
    cleared = starttls.router.rooms.clear_frontend_occupants()  # blocks (Redis), like the directory's clearing
    if cleared:
        log.info("took %d sessions of a crashed predecessor out of their rooms", cleared)
    listener = DeliveryListener(chat_server.get_redis_primary, directory.channel, starttls.router.deliver_published)
    listener.start()
    sessions, router = starttls.sessions, starttls.router
    router.on_published(users_admin.END_SESSION, users_admin.end_session_handler(sessions))  # a deactivated account's streams

    def hand_over_sessions() -> defer.Deferred:
        # New connections must reach the other front ends, or a client would resume here, on its way out.
        for port in listening_ports or ():
            port.stopListening()
        starttls.resumable.stop_adopting()  # now, before asking who runs: the others may be stopping too
        d = router.run_blocking(directory.running_frontends)
        d.addCallback(lambda peers: starttls.resumable.hand_over_all(peers_in_order(router.frontend_id, peers)))
        d.addCallback(lambda taken: log.info("handed %d resumable sessions to the other front ends", taken))
        d.addErrback(lambda f: log.warning("handing sessions over failed; they end instead: %s", f.getErrorMessage()))
        return d

    def stop_listener(_) -> defer.Deferred:
        d = listener.stop()
        d.addTimeout(LISTENER_STOP_SECONDS, reactor)
        d.addErrback(lambda f: log.warning("the delivery listener did not stop in time: %s", f.getErrorMessage()))
        return d

    def stopping():
        # In this order, so no message dies with the process: first hand resumable sessions over (this
        # front end still forwards what reaches them here), then stop taking what other front ends publish
        # (from then on they keep such messages offline themselves), then end every other session (each
        # hands its unacknowledged messages to the router), then wait for those to be re-routed.
        d = hand_over_sessions()
        d.addCallback(stop_listener)
        d.addCallback(lambda _: [connection.system_shutdown() for connection in sessions.connections()])
        d.addCallback(lambda _: router.drain(SHUTDOWN_DRAIN_SECONDS))
        return d

    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    LoopingCall(ActivityReport(sessions, (starttls, direct), router.frontend_id)).start(ACTIVITY_REPORT_SECONDS, now=False)
    return starttls, direct


def peers_in_order(own: str, peers: list[str]) -> list[str]:
    """The front ends to offer sessions to: XMPP front ends (``host:xmpp-N``) before the HTTPS one, own host first.

    A client of an XMPP port reconnects to one of those; the HTTPS process would
    hand its session on again when the client resumes elsewhere.
    """
    host, _, name = own.rpartition(":")
    kind = name.rsplit("-", 1)[0]

    def rank(peer: str) -> tuple:
        peer_host, _, peer_name = peer.rpartition(":")
        return (peer_name.rsplit("-", 1)[0] != kind, peer_host != host, peer)

    return sorted((p for p in peers if p != own), key=rank)


class ActivityReport:
    """Logs, once a period, how many sessions a front end holds and how many logins it took meanwhile."""

    def __init__(self, sessions: SessionTable, factories, frontend: str):
        self.sessions, self.factories, self.frontend = sessions, factories, frontend
        self._last_logins = 0

    def __call__(self) -> None:
        logins = sum(f.logins for f in self.factories)
        log.info(
            "%s: %d sessions, %d logins in the last %.0f s",
            self.frontend,
            len(self.sessions.connections()),
            logins - self._last_logins,
            ACTIVITY_REPORT_SECONDS,
        )
        self._last_logins = logins


def wait_for_session_directory(chat_server: ChatServer) -> SessionDirectory | None:
    """`open_session_directory`, retried while Redis is still starting (or failing over); None if it never answers."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    deadline = time.monotonic() + REDIS_START_WAIT_SECONDS
    while True:
        try:
            return open_session_directory(chat_server)
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            if time.monotonic() >= deadline:
                return None
            log.warning("Redis is not answering yet (%s); trying again", e)
            time.sleep(1.0)


def listen(address: str, port: int, factory, throttle: LoginThrottle):
    """Serve ``factory`` on a SO_REUSEPORT socket shared with the other front ends, under the login throttle; the port."""
    sock = reuse_port_socket(address, port)
    listening = reactor.adoptStreamPort(sock.fileno(), sock.family, throttle.wrap(factory))
    sock.close()  # the reactor holds its own duplicate of the descriptor
    throttle.watch(listening)
    return listening


def main(argv: list[str] | None = None) -> int:
    config = start_process("hipchat-xmpp", "HipChat Server XMPP front end (client streams)", argv)
    if config is None:
        return 2
    GarbageCollectionWatch().install()
    xmpp = config.xmpp
    try:
        tls_options = server_tls_options(config.tls.certificate, config.tls.private_key)
        chat_server = ChatServer(config)
        directory = wait_for_session_directory(chat_server)
        if directory is None:
            print(f"hipchat-xmpp: Redis did not answer for {REDIS_START_WAIT_SECONDS:.0f} s; is redis-primary running?", file=sys.stderr)
            return 1
        listening: list = []
        starttls, direct = start_frontend(chat_server, tls_options, directory, listening)
        metrics.register(metrics.ConnectionsCollector(starttls.sessions, (starttls, direct)))
        metrics.serve(config.metrics.xmpp_base_port + metrics.process_number())
        throttle = LoginThrottle(MAX_LOGINS_IN_PROGRESS)
        listening.append(listen(xmpp.bind_address, xmpp.c2s_port, starttls, throttle))
        listening.append(listen(xmpp.bind_address, xmpp.c2s_tls_port, TLSMemoryBIOFactory(tls_options, False, direct), throttle))
    except OSError as e:
        print(f"hipchat-xmpp: cannot start: {e}", file=sys.stderr)
        return 1
    drop_privileges(config.server.user)  # a no-op under supervisor's `user =`
    tune_garbage_collection()
    log.info(
        "serving XMPP clients on %s: %d (STARTTLS) and %d (direct TLS)",
        xmpp.bind_address,
        xmpp.c2s_port,
        xmpp.c2s_tls_port,
    )
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
