"""Where each server under test listens, which CA to trust and which processes hold its memory."""

from __future__ import annotations

import os

from .client import Options
from .scenarios import Target

BENCH_DIR = os.environ.get("BENCH_DIR", "/var/lib/hipchat-bench")
HIPCHAT_CONFIG = "/etc/hipchat/hipchat.yml"
PASSWORD = "bench-password-1"
PREFIX = "bench-"


def _hipchat_settings() -> dict:
    try:
        import yaml

        with open(HIPCHAT_CONFIG) as f:
            config = yaml.safe_load(f)
        return {"domain": config["server"]["domain"], "ca_file": config["tls"]["ca_certificate"],
                "port": config["xmpp"]["c2s_port"], "tls_port": config["xmpp"]["c2s_tls_port"],
                "rooms_service": (config.get("rooms") or {}).get("service", "conference"),
                "opensearch": (config.get("opensearch") or {}).get("urls", ["http://127.0.0.1:9200"]),
                "index_prefix": (config.get("archive") or {}).get("index_prefix", "messages")}
    except (OSError, KeyError, ImportError):
        return {"domain": "localhost", "ca_file": "/etc/hipchat/tls/ca.crt", "port": 5222, "tls_port": 5223,
                "rooms_service": "conference", "opensearch": ["http://127.0.0.1:9200"], "index_prefix": "messages"}


def opensearch_settings() -> tuple[list[str], str]:
    """The appliance's OpenSearch URLs and message index prefix (the alias over every month)."""
    s = _hipchat_settings()
    return list(s["opensearch"]), s["index_prefix"]


def preset(name: str) -> dict:
    """Defaults of one server: host, port, tls_port, domain, ca_file and memory (a `memory` spec)."""
    if name == "hipchat":
        s = _hipchat_settings()
        return {**s, "host": "127.0.0.1", "memory": "supervisor:chat-core:xmpp-*", "rooms_service": s["rooms_service"]}
    if name == "prosody":
        return {"host": "127.0.0.1", "port": 15222, "tls_port": None, "domain": "localhost", "rooms_service": "conference",
                "ca_file": f"{BENCH_DIR}/localhost.crt", "memory": f"pidfile:{BENCH_DIR}/prosody/server.pid"}
    if name == "ejabberd":
        return {"host": "127.0.0.1", "port": 25222, "tls_port": None, "domain": "localhost", "rooms_service": "conference",
                "ca_file": f"{BENCH_DIR}/localhost.crt", "memory": f"pidfile:{BENCH_DIR}/ejabberd/server.pid"}
    raise ValueError(f"unknown server {name!r} (hipchat, prosody, ejabberd)")


def rooms_service(name: str, args) -> str:
    """The MUC service's domain: ``--room-service`` or ``<service>.<domain>`` of the server's preset."""
    if getattr(args, "room_service", None):
        return args.room_service
    p = preset(name)
    return f"{p['rooms_service']}.{args.domain or p['domain']}"


def build(name: str, args) -> tuple[Options, Target]:
    """Client options and target for server ``name``, command-line overrides applied."""
    p = preset(name)
    direct = bool(getattr(args, "direct_tls", False))
    port = args.port or (p["tls_port"] if direct else p["port"])
    if port is None:
        raise SystemExit(f"{name} has no direct-TLS port configured")
    options = Options(
        host=args.host or p["host"], port=port, domain=args.domain or p["domain"], direct_tls=direct,
        ca_file=args.ca_file or p["ca_file"], verify=not args.no_verify, mechanism=args.mechanism,
        password=args.password, stream_management=not args.no_sm, login_timeout=args.login_timeout,
    )
    target = Target(name=name, domain=options.domain, prefix=args.prefix,
                    memory_spec=args.server_memory or p["memory"], memory_kind=args.memory_kind,
                    full_jid=args.address == "full")
    return options, target
