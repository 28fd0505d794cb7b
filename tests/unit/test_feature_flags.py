"""Feature flags and group flags (`feature_flags.FeatureFlags`) on SQLite with the real schema.

A flag is on for everyone, off, or on for chosen groups only; a change
takes effect for other processes within the cache time, at once in the
process that made it; unknown flags and empty group choices are refused.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from hipchat_server import feature_flags
from hipchat_server.feature_flags import FeatureFlags, UnknownFlag
from hipchat_server.storage.feature_flags import FeatureFlagStore
from hipchat_server.storage.schema import feature_flags as flags_table
from hipchat_server.storage.schema import group_flags, group_members, groups, metadata, users


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def engine():
    engine = create_engine("sqlite://", future=True)
    metadata.create_all(engine, tables=[users, groups, group_members, flags_table, group_flags])
    with engine.begin() as connection:
        for i, name in enumerate(("alice", "bob", "carol"), start=1):
            connection.execute(users.insert().values(id=i, name=name, mention_name=name, email=f"{name}@example.com", username=name))
        connection.execute(groups.insert(), [{"id": 1, "name": "ops"}, {"id": 2, "name": "sales"}])
        # alice in ops, bob in sales, carol in none
        connection.execute(group_members.insert(), [{"group_id": 1, "user_id": 1}, {"group_id": 2, "user_id": 2}])
    return engine


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def flags(engine, clock):
    return FeatureFlags(FeatureFlagStore(engine), clock=clock)


def test_defaults_until_set(flags):
    """A flag never set has its default: the web client on, guest access off."""
    assert flags.enabled("web_client", "alice")
    assert not flags.enabled("guest_access", "alice")
    assert flags.state("web_client").is_default and flags.state("web_client").mode == "on"


def test_on_off_and_chosen_groups(flags):
    """Off is off for all; groups mode is on for members of the chosen groups only; on is on for all."""
    flags.set("webhooks", "off")
    assert not any(flags.enabled("webhooks", u) for u in ("alice", "bob", "carol", None))
    state = flags.set("webhooks", "groups", [1])
    assert state.mode == "groups" and state.groups == {1: True}
    assert flags.enabled("webhooks", "alice")
    assert not flags.enabled("webhooks", "bob") and not flags.enabled("webhooks", "carol") and not flags.enabled("webhooks")
    flags.set("webhooks", "on")
    assert all(flags.enabled("webhooks", u) for u in ("alice", "bob", "carol", None))
    assert flags.state("webhooks").groups == {}


def test_a_change_elsewhere_is_seen_within_the_cache_time(engine, flags, clock):
    """Another process's change reaches this one after at most CACHE_SECONDS, without a restart."""
    assert flags.enabled("web_client", "bob")
    other = FeatureFlags(FeatureFlagStore(engine), clock=clock)
    other.set("web_client", "groups", [1])
    assert not other.enabled("web_client", "bob")  # the process that changed it sees it at once
    assert flags.enabled("web_client", "bob")  # remembered
    clock.now += feature_flags.CACHE_SECONDS + 0.1
    assert not flags.enabled("web_client", "bob")
    assert flags.enabled("web_client", "alice")


def test_refusals(flags):
    """Unknown flags, unknown modes and a groups mode without groups are refused."""
    with pytest.raises(UnknownFlag):
        flags.enabled("teleport", "alice")
    with pytest.raises(ValueError):
        flags.set("webhooks", "sometimes")
    with pytest.raises(ValueError):
        flags.set("webhooks", "groups", [])


def test_module_level_enabled_uses_the_installed_instance(flags):
    """`feature_flags.enabled` is the one call features make; it refuses to guess when nothing is installed."""
    feature_flags.install(None)
    with pytest.raises(RuntimeError):
        feature_flags.enabled("web_client", "alice")
    feature_flags.install(flags)
    try:
        flags.set("web_client", "off")
        assert not feature_flags.enabled("web_client", "alice")
    finally:
        feature_flags.install(None)
