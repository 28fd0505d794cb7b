"""The installed appliance's console Backups page, served by a process a test starts.

    /opt/hipchat/venv/bin/python tests/e2e/console_process.py [--config /etc/hipchat/hipchat.yml]

Serves ``/admin`` (login and the Backups page) over HTTPS on 127.0.0.1 at a free port, printed
as ``listening <port>`` once bound, with the appliance's certificate, its MariaDB and Redis (admin
sessions are real), and the environment it was started with. So a test can point the upgrade
view (``HIPCHAT_UPGRADES_DIR``, ``HIPCHAT_BASE_DIR``) at a temporary directory without changing
the running HTTPS process. Run by path, not with ``-m``, so the installed packages are imported,
not the checkout's. Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=None)
    args = parser.parse_args()

    from twisted.internet import reactor, ssl
    from twisted.web import resource, server

    from hipchat_server.config import load_config
    from hipchat_server.server import ChatServer
    from hipchat_server.web.console import backups
    from hipchat_server.web.console.app import Console
    from hipchat_server.web.sessions import web_sessions

    config = load_config(args.config)
    chat_server = ChatServer(config)
    console = Console(chat_server, web_sessions(chat_server))
    backups.register(console)
    root = resource.Resource()
    root.putChild(b"admin", console.resource())
    tls = ssl.DefaultOpenSSLContextFactory(config.tls.private_key, config.tls.certificate)
    port = reactor.listenSSL(0, server.Site(root), tls, interface="127.0.0.1")
    print(f"listening {port.getHost().port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
