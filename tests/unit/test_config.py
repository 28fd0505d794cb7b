"""Configuration loading: every error names the key path that is wrong."""

from __future__ import annotations

import copy

import pytest

from hipchat_server.config import Config, ConfigError, load_config

VALID = {
    "server": {"domain": "chat.example.com", "public_url": "https://chat.example.com", "user": "hipchat"},
    "http": {"bind_address": "0.0.0.0", "https_port": 443},
    "tls": {"certificate": "/c.crt", "private_key": "/c.key", "ca_certificate": "/ca.crt"},
    "database": {"host": "127.0.0.1", "port": 3306, "name": "hipchat", "user": "hipchat", "password": "pw"},
    "redis": {"sentinels": ["127.0.0.1:26379"], "service_name": "hipchat", "password": "pw"},
    "opensearch": {"urls": ["http://127.0.0.1:9200"]},
    "appliance": {"supervisor_config": "/etc/hipchat/supervisord.conf", "data_dirs": {"mariadb": "/var/lib/hipchat/mariadb"}},
}


def with_change(path: str, value):
    raw = copy.deepcopy(VALID)
    section, key = path.split(".")
    raw[section][key] = value
    return raw


def test_valid_configuration_loads():
    """A complete configuration loads into typed sections."""
    config = Config.parse(VALID)
    assert config.database.port == 3306
    assert config.redis.sentinels == [("127.0.0.1", 26379)]
    assert "pw" not in repr(config.database)  # passwords stay out of logs


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("database.port", "3306", "database.port: expected an integer"),
        ("http.https_port", 70000, "http.https_port: 70000 is not a TCP port"),
        ("redis.sentinels", ["localhost"], "redis.sentinels: 'localhost' is not host:port"),
        ("opensearch.urls", [], "opensearch.urls: expected a non-empty list"),
        ("server.domain", "", "server.domain: expected a non-empty string"),
    ],
)
def test_bad_values_name_their_key(path, value, message):
    """Each bad value is refused with its key path in the message."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Config.parse(with_change(path, value))


def test_missing_section_is_named():
    """A missing section is named."""
    raw = copy.deepcopy(VALID)
    del raw["redis"]
    with pytest.raises(ConfigError, match="^redis: expected a mapping"):
        Config.parse(raw)


def test_missing_file_says_what_to_do(tmp_path):
    """A missing file tells the operator the appliance may not be installed."""
    with pytest.raises(ConfigError, match="is the appliance installed"):
        load_config(str(tmp_path / "absent.yml"))


def test_database_url_escapes_the_password():
    """A password with URL-special characters survives into the SQLAlchemy URL."""
    config = Config.parse(with_change("database.password", "p@ss/w:rd"))
    from sqlalchemy.engine import make_url

    assert make_url(config.database.url).password == "p@ss/w:rd"
