"""The appliance configuration: `/etc/hipchat/hipchat.yml`, one class per section.

Every section is validated when it is loaded, and every error names the key
path that is wrong (``database.port: expected an integer``), so an operator
who edits the file by hand knows what to fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

DEFAULT_CONFIG_PATH = "/etc/hipchat/hipchat.yml"
CONFIG_PATH_ENV = "HIPCHAT_CONFIG"


class ConfigError(Exception):
    """The configuration file is missing, unreadable or has a bad value."""


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, found {type(value).__name__}")
    return value


class _Reader:
    """Reads typed values out of one section and names the key path on error."""

    def __init__(self, section: str, values: Mapping[str, Any]):
        self.section = section
        self.values = values

    def _path(self, key: str) -> str:
        return f"{self.section}.{key}"

    def str(self, key: str, default: str | None = None) -> str:
        value = self.values.get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self._path(key)}: expected a non-empty string")
        return value

    def int(self, key: str, default: int | None = None) -> int:
        value = self.values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self._path(key)}: expected an integer")
        return value

    def port(self, key: str, default: int | None = None) -> int:
        value = self.int(key, default)
        if not 1 <= value <= 65535:
            raise ConfigError(f"{self._path(key)}: {value} is not a TCP port")
        return value

    def positive_int(self, key: str, default: int | None = None) -> int:
        value = self.int(key, default)
        if value < 1:
            raise ConfigError(f"{self._path(key)}: expected a positive integer, found {value}")
        return value

    def str_list(self, key: str) -> list[str]:
        value = self.values.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self._path(key)}: expected a non-empty list of strings")
        return value

    def str_map(self, key: str) -> dict[str, str]:
        value = self.values.get(key, {})
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{self._path(key)}: expected a mapping of names to strings")
        return dict(value)


@dataclass(frozen=True)
class ServerConfig:
    domain: str
    public_url: str
    user: str

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "ServerConfig":
        r = _Reader("server", _section(raw, "server"))
        return cls(domain=r.str("domain"), public_url=r.str("public_url"), user=r.str("user", "hipchat"))


@dataclass(frozen=True)
class HttpConfig:
    bind_address: str
    https_port: int

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "HttpConfig":
        r = _Reader("http", _section(raw, "http"))
        return cls(bind_address=r.str("bind_address", "0.0.0.0"), https_port=r.port("https_port"))


@dataclass(frozen=True)
class TlsConfig:
    certificate: str
    private_key: str
    ca_certificate: str

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "TlsConfig":
        r = _Reader("tls", _section(raw, "tls"))
        return cls(
            certificate=r.str("certificate"),
            private_key=r.str("private_key"),
            ca_certificate=r.str("ca_certificate"),
        )


@dataclass(frozen=True)
class DatabaseConfig:
    host: str
    port: int
    name: str
    user: str
    password: str = field(repr=False)

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "DatabaseConfig":
        r = _Reader("database", _section(raw, "database"))
        return cls(
            host=r.str("host"),
            port=r.port("port", 3306),
            name=r.str("name"),
            user=r.str("user"),
            password=r.str("password"),
        )

    @property
    def url(self) -> str:
        from sqlalchemy.engine import URL

        return URL.create(
            "mysql+pymysql",
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.name,
            query={"charset": "utf8mb4"},
        ).render_as_string(hide_password=False)


@dataclass(frozen=True)
class RedisConfig:
    sentinels: list[tuple[str, int]]
    service_name: str
    password: str = field(repr=False)

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "RedisConfig":
        r = _Reader("redis", _section(raw, "redis"))
        sentinels = []
        for address in r.str_list("sentinels"):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"redis.sentinels: {address!r} is not host:port")
            sentinels.append((host, int(port)))
        return cls(sentinels=sentinels, service_name=r.str("service_name"), password=r.str("password"))


@dataclass(frozen=True)
class OpenSearchConfig:
    urls: list[str]

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "OpenSearchConfig":
        r = _Reader("opensearch", _section(raw, "opensearch"))
        return cls(urls=r.str_list("urls"))


@dataclass(frozen=True)
class XmppConfig:
    """The XMPP client ports (section ``xmpp``, optional: every key has a default)."""

    bind_address: str = "0.0.0.0"
    c2s_port: int = 5222  # STARTTLS, required
    c2s_tls_port: int = 5223  # TLS from the first byte
    frontend_processes: int = 1  # how many hipchat-xmpp processes share the ports
    max_sessions_per_user: int = 10  # bound resources of one user on one front end
    auth_failures_per_minute: int = 5  # failed SASL attempts one IP may make per minute and process
    sm_resume_timeout: int = 300  # seconds a dropped XEP-0198 session waits to be resumed
    sm_max_unacked: int = 1000  # stanzas kept for a client until it acknowledges them (XEP-0198)

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "XmppConfig":
        if raw.get("xmpp") is None:
            return cls()
        r = _Reader("xmpp", _section(raw, "xmpp"))
        config = cls(
            bind_address=r.str("bind_address", cls.bind_address),
            c2s_port=r.port("c2s_port", cls.c2s_port),
            c2s_tls_port=r.port("c2s_tls_port", cls.c2s_tls_port),
            frontend_processes=r.positive_int("frontend_processes", cls.frontend_processes),
            max_sessions_per_user=r.positive_int("max_sessions_per_user", cls.max_sessions_per_user),
            auth_failures_per_minute=r.positive_int("auth_failures_per_minute", cls.auth_failures_per_minute),
            sm_resume_timeout=r.positive_int("sm_resume_timeout", cls.sm_resume_timeout),
            sm_max_unacked=r.positive_int("sm_max_unacked", cls.sm_max_unacked),
        )
        if config.c2s_port == config.c2s_tls_port:
            raise ConfigError(f"xmpp.c2s_tls_port: {config.c2s_tls_port} is also xmpp.c2s_port")
        return config


@dataclass(frozen=True)
class ArchiveConfig:
    """The durable message path: spool, indexing and retention (section ``archive``, optional)."""

    spool_dir: str = "/var/lib/hipchat/spool"  # one subdirectory per chat process
    spool_segment_bytes: int = 8 * 1024 * 1024  # a segment is removed once all of it is indexed
    # Disk guard: with less free space than this on the spool's disk, new messages are refused
    # (the sender gets an error) rather than accepted and then lost to a full disk.
    spool_min_free_mb: int = 1024
    # `hipchat-appliance status` warns when this much is spooled but not yet indexed.
    spool_warn_bytes: int = 256 * 1024 * 1024
    index_prefix: str = "messages"  # monthly indices <prefix>-YYYY.MM
    retention_months: int = 0  # month indices older than this are deleted; 0 keeps every month
    recent_messages: int = 75  # newest messages per room and conversation kept in Redis

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "ArchiveConfig":
        if raw.get("archive") is None:
            return cls()
        r = _Reader("archive", _section(raw, "archive"))
        retention = r.int("retention_months", cls.retention_months)
        if retention < 0:
            raise ConfigError(f"archive.retention_months: expected 0 (keep forever) or more, found {retention}")
        return cls(
            spool_dir=r.str("spool_dir", cls.spool_dir),
            spool_segment_bytes=r.positive_int("spool_segment_bytes", cls.spool_segment_bytes),
            spool_min_free_mb=r.positive_int("spool_min_free_mb", cls.spool_min_free_mb),
            spool_warn_bytes=r.positive_int("spool_warn_bytes", cls.spool_warn_bytes),
            index_prefix=r.str("index_prefix", cls.index_prefix),
            retention_months=retention,
            recent_messages=r.positive_int("recent_messages", cls.recent_messages),
        )



@dataclass(frozen=True)
class BackupConfig:
    """Backups (section ``backup``, optional): where they go, when the nightly one runs, how many are kept."""

    dir: str = "/var/lib/hipchat/backups"  # root only (0700): archives may hold the configuration
    time: str = "02:30"  # the nightly backup, HH:MM in the host's local time
    keep: int = 7  # archives kept in ``dir``; older ones are deleted after a successful backup
    passphrase_file: str = ""  # when set, nightly archives are encrypted with its first line (and hold the secrets)

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "BackupConfig":
        if raw.get("backup") is None:
            return cls()
        r = _Reader("backup", _section(raw, "backup"))
        time_of_day = r.str("time", cls.time)
        hour, _, minute = time_of_day.partition(":")
        if not (hour.isdigit() and minute.isdigit() and len(minute) == 2 and int(hour) < 24 and int(minute) < 60):
            raise ConfigError(f"backup.time: expected HH:MM (e.g. 02:30), found {time_of_day!r}")
        return cls(
            dir=r.str("dir", cls.dir),
            time=time_of_day,
            keep=r.positive_int("keep", cls.keep),
            passphrase_file=_section(raw, "backup").get("passphrase_file") or "",
        )


@dataclass(frozen=True)
class JobsConfig:
    """The background job queue and its workers (section ``jobs``, optional)."""

    worker_threads: int = 4  # jobs one worker process runs at once
    max_attempts: int = 10  # tries before a job goes to the dead letters
    retry_base_seconds: int = 1  # first retry after this long, doubling each time
    claim_idle_seconds: int = 60  # a job held this long by a worker (that died) is taken over by another

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "JobsConfig":
        if raw.get("jobs") is None:
            return cls()
        r = _Reader("jobs", _section(raw, "jobs"))
        return cls(
            worker_threads=r.positive_int("worker_threads", cls.worker_threads),
            max_attempts=r.positive_int("max_attempts", cls.max_attempts),
            retry_base_seconds=r.positive_int("retry_base_seconds", cls.retry_base_seconds),
            claim_idle_seconds=r.positive_int("claim_idle_seconds", cls.claim_idle_seconds),
        )


@dataclass(frozen=True)
class MailConfig:
    """E-mail to people @mentioned while offline, through an SMTP relay (section ``mail``, optional)."""

    smtp_host: str = "127.0.0.1"  # the installer's local relay (postfix, loopback only) by default
    smtp_port: int = 25
    from_address: str = ""  # the ``from`` key; empty: noreply@<server.domain>
    mention_mail: bool = True  # send mention e-mail at all

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "MailConfig":
        if raw.get("mail") is None:
            return cls()
        values = _section(raw, "mail")
        r = _Reader("mail", values)
        sender = values.get("from", "")
        if not isinstance(sender, str) or (sender and "@" not in sender):
            raise ConfigError("mail.from: expected an e-mail address (or nothing for noreply@<domain>)")
        enabled = values.get("mention_mail", True)
        if not isinstance(enabled, bool):
            raise ConfigError("mail.mention_mail: expected true or false")
        return cls(smtp_host=r.str("smtp_host", cls.smtp_host), smtp_port=r.port("smtp_port", cls.smtp_port), from_address=sender, mention_mail=enabled)


@dataclass(frozen=True)
class PushConfig:
    """Push notifications through an HTTP gateway (section ``push``, optional; off without ``gateway_url``)."""

    gateway_url: str = ""  # POSTed JSON for each mention of someone offline; empty: no push
    gateway_token: str = field(default="", repr=False)  # sent as ``Authorization: Bearer`` when set

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "PushConfig":
        if raw.get("push") is None:
            return cls()
        values = _section(raw, "push")
        url, token = values.get("gateway_url") or "", values.get("gateway_token") or ""
        if not isinstance(url, str) or (url and not url.startswith(("http://", "https://"))):
            raise ConfigError("push.gateway_url: expected an http or https URL (or nothing to turn push off)")
        if not isinstance(token, str):
            raise ConfigError("push.gateway_token: expected a string")
        return cls(gateway_url=url, gateway_token=token)

ROOM_CREATORS = ("everyone", "admins")


@dataclass(frozen=True)
class RoomsConfig:
    """Group rooms (XEP-0045) on ``<service>.<domain>`` (section ``rooms``, optional)."""

    service: str = "conference"  # the rooms' subdomain: room@conference.<domain>
    creators: str = "everyone"  # who may create rooms: "everyone" or "admins"
    history_on_join: int = 75  # most messages a joining occupant is sent (from Redis)

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "RoomsConfig":
        if raw.get("rooms") is None:
            return cls()
        r = _Reader("rooms", _section(raw, "rooms"))
        creators = r.str("creators", cls.creators)
        if creators not in ROOM_CREATORS:
            raise ConfigError(f"rooms.creators: expected one of {', '.join(ROOM_CREATORS)}, found {creators!r}")
        return cls(
            service=r.str("service", cls.service),
            creators=creators,
            history_on_join=r.positive_int("history_on_join", cls.history_on_join),
        )


@dataclass(frozen=True)
class ApiConfig:
    """REST API v2 limits (section ``api``, optional: every key has a default)."""

    rate_limit_requests: int = 500  # requests one token (Basic: user; anonymous: address) may make per window
    rate_limit_seconds: int = 300  # the rate-limit window
    flood_messages: int = 30  # messages sent through the API per room (private: per recipient) per window
    flood_seconds: int = 60  # the flood-control window
    oauth_token_seconds: int = 3600  # lifetime of a token issued by POST /v2/oauth/token

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "ApiConfig":
        if raw.get("api") is None:
            return cls()
        r = _Reader("api", _section(raw, "api"))
        return cls(
            rate_limit_requests=r.positive_int("rate_limit_requests", cls.rate_limit_requests),
            rate_limit_seconds=r.positive_int("rate_limit_seconds", cls.rate_limit_seconds),
            flood_messages=r.positive_int("flood_messages", cls.flood_messages),
            flood_seconds=r.positive_int("flood_seconds", cls.flood_seconds),
            oauth_token_seconds=r.positive_int("oauth_token_seconds", cls.oauth_token_seconds),
        )


@dataclass(frozen=True)
class WebClientConfig:
    """The web client served at ``/`` (section ``web_client``, optional: no section, no web client)."""

    assets_dir: str = ""  # the unpacked Converse.js release (``<dir>/<version>``); empty: none installed

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "WebClientConfig":
        if raw.get("web_client") is None:
            return cls()
        return cls(assets_dir=_Reader("web_client", _section(raw, "web_client")).str("assets_dir"))


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus ``/metrics`` ports on 127.0.0.1 (section ``metrics``, optional: every key has a default).

    Numbered processes (XMPP front end N, worker N) listen on their base port + N.
    """

    xmpp_base_port: int = 9410
    indexer_port: int = 9420
    worker_base_port: int = 9430
    exporter_port: int = 9440

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "MetricsConfig":
        if raw.get("metrics") is None:
            return cls()
        r = _Reader("metrics", _section(raw, "metrics"))
        return cls(
            xmpp_base_port=r.port("xmpp_base_port", cls.xmpp_base_port),
            indexer_port=r.port("indexer_port", cls.indexer_port),
            worker_base_port=r.port("worker_base_port", cls.worker_base_port),
            exporter_port=r.port("exporter_port", cls.exporter_port),
        )


@dataclass(frozen=True)
class ApplianceConfig:
    supervisor_config: str
    data_dirs: dict[str, str]

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> "ApplianceConfig":
        r = _Reader("appliance", _section(raw, "appliance"))
        return cls(supervisor_config=r.str("supervisor_config"), data_dirs=r.str_map("data_dirs"))


@dataclass(frozen=True)
class Config:
    """The whole configuration; each attribute is one validated section."""

    server: ServerConfig
    http: HttpConfig
    tls: TlsConfig
    database: DatabaseConfig
    redis: RedisConfig
    opensearch: OpenSearchConfig
    appliance: ApplianceConfig
    jobs: JobsConfig = field(default_factory=JobsConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    push: PushConfig = field(default_factory=PushConfig)
    xmpp: XmppConfig = field(default_factory=XmppConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    web_client: WebClientConfig = field(default_factory=WebClientConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @classmethod
    def parse(cls, raw: Any) -> "Config":
        if not isinstance(raw, Mapping):
            raise ConfigError("the configuration must be a YAML mapping of sections")
        return cls(
            server=ServerConfig.load(raw),
            http=HttpConfig.load(raw),
            tls=TlsConfig.load(raw),
            database=DatabaseConfig.load(raw),
            redis=RedisConfig.load(raw),
            opensearch=OpenSearchConfig.load(raw),
            appliance=ApplianceConfig.load(raw),
            jobs=JobsConfig.load(raw),
            mail=MailConfig.load(raw),
            push=PushConfig.load(raw),
            xmpp=XmppConfig.load(raw),
            archive=ArchiveConfig.load(raw),
            backup=BackupConfig.load(raw),
            rooms=RoomsConfig.load(raw),
            api=ApiConfig.load(raw),
            web_client=WebClientConfig.load(raw),
            metrics=MetricsConfig.load(raw),
        )


def load_config(path: str | None = None) -> Config:
    """Load and validate the configuration file (``$HIPCHAT_CONFIG`` or the default path)."""
    path = path or os.environ.get(CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}; is the appliance installed?") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    return Config.parse(raw)
