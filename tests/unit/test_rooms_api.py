"""The REST API's room operations over real stores (SQLite) and a recording poster: who sees and changes what, and what occupants are told."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from twisted.internet import defer

from hipchat_server.room_posting import Notification
from hipchat_server.rooms_api import RoomsApi, parse_date, room_node_for
from hipchat_server.storage.rooms import Departure, Occupant, RoomStore
from hipchat_server.storage.schema import metadata, room_members, rooms, user_credentials, users
from hipchat_server.storage.users import UserStore
from hipchat_server.users_api import Caller, Conflict, Forbidden, Invalid, NotFound, UserDirectory
from hipchat_server.xmpp import muc

DOMAIN = "example.com"
SERVICE = f"conference.{DOMAIN}"


class Occupants:
    def __init__(self):
        self.by_room: dict[str, dict[str, Occupant]] = {}

    def leave(self, room, fulls):
        current = self.by_room.get(room, {})
        return [Departure(room, current.pop(full), True) for full in sorted(fulls) if full in current]

    def delete_room(self, room):
        self.by_room.pop(room, None)


class Poster:
    """Records what the API posts and delivers instead of reaching Redis."""

    def __init__(self):
        self.occupants = Occupants()
        self.delivered: list[tuple[str, list[str], str]] = []
        self.posted: list[tuple] = []

    def read_occupants(self, room):
        return defer.succeed(dict(self.occupants.by_room.get(room, {})))

    def deliver(self, room, recipients, xml, message_id=None):
        self.delivered.append((room, sorted(o.full for o in recipients), xml))
        return defer.succeed(None)

    def post_message(self, room, sender, name, message, extra=None):
        self.posted.append(("message", room, sender, name, message))
        return defer.succeed({"id": "01J00000000000000000000000", "room": room})

    def post_notification(self, room, notification, sender=None):
        self.posted.append(("notification", room, sender, notification.label, notification.message))
        return defer.succeed({"id": "01J00000000000000000000001", "room": room})


class Delivery:
    def __init__(self):
        self.sent = []

    def deliver(self, bare, stanza):
        self.sent.append((bare, stanza.toXml()))
        return defer.succeed("stored")


def result_of(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred did not fire"
    result = results[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


@pytest.fixture
def world():
    engine = create_engine("sqlite://", future=True)
    metadata.create_all(engine, tables=[users, user_credentials, rooms, room_members])
    user_store = UserStore(engine)
    for name, admin in (("owner", False), ("member", False), ("stranger", False), ("boss", True)):
        user_store.insert(username=name, name=name.title(), mention_name=name, email=f"{name}@{DOMAIN}", is_admin=admin)
    poster, delivery, events = Poster(), Delivery(), []
    api = RoomsApi(
        RoomStore(engine, SERVICE),
        user_store,
        history=None,
        poster=poster,
        delivery=delivery,
        domain=DOMAIN,
        service=SERVICE,
        run_database=lambda f, *args: defer.maybeDeferred(f, *args),
        emit=lambda kind, room, payload: events.append((kind, room)),
    )
    owner = Caller("owner")
    public = result_of(api.create(owner, {"name": "Ops Room", "topic": "hello"}))
    private = result_of(api.create(owner, {"name": "Secret", "privacy": "private"}))
    result_of(api.add_member(owner, "Secret", "member"))
    return dict(api=api, poster=poster, delivery=delivery, events=events, public=public, private=private, users=user_store)


def occupy(world, room_node, username, frontend="fe-1"):
    room = f"{room_node}@{SERVICE}"
    full = f"{username}@{DOMAIN}/pc"
    world["poster"].occupants.by_room.setdefault(room, {})[full] = Occupant(full, username, "participant", "none", frontend)
    return room


def test_a_created_room_has_an_address_from_its_name_an_owner_and_its_topic(world):
    public = world["public"]
    assert public.room.jid_node == "ops_room" and public.owner == "owner" and public.topic == "hello"
    assert not public.room.locked and not public.room.config.members_only
    assert ("room_created", f"ops_room@{SERVICE}") in world["events"]
    with pytest.raises(Conflict):
        result_of(world["api"].create(Caller("member"), {"name": "Ops Room"}))
    with pytest.raises(Invalid, match="privacy"):
        result_of(world["api"].create(Caller("member"), {"name": "x", "privacy": "secret"}))
    with pytest.raises(Forbidden):
        result_of(world["api"].create(Caller(None, room_id=1), {"name": "y"}))


def test_a_private_room_is_invisible_to_non_members_but_not_to_members_or_group_admins(world):
    api = world["api"]
    with pytest.raises(NotFound):
        result_of(api.get(Caller("stranger"), "Secret"))
    with pytest.raises(NotFound):
        result_of(api.members(Caller("stranger"), str(world["private"].room.id)))
    assert result_of(api.get(Caller("member"), "Secret"))[0].room.jid_node == "secret"
    assert result_of(api.get(Caller("boss", is_admin=True), "secret"))[0].room.config.members_only
    names = lambda caller, **o: [d.room.config.name for d in result_of(api.page(caller, start=0, limit=100, **o))[0]]
    assert names(Caller("stranger"), include_private=True, include_archived=False) == ["Ops Room"]
    assert names(Caller("member"), include_private=True, include_archived=False) == ["Ops Room", "Secret"]
    assert names(Caller("member"), include_private=False, include_archived=False) == ["Ops Room"]


def test_a_room_and_the_callers_affiliation_are_read_in_one_go_by_id_name_or_address(world):
    store = world["api"].rooms
    details, affiliation = store.details_and_affiliation("Secret", "member")
    assert details.room.jid_node == "secret" and affiliation == "member"
    assert store.details_and_affiliation(str(details.room.id), "owner")[1] == "owner"
    assert store.details_and_affiliation("secret", "stranger")[1] == "none"
    assert store.details_and_affiliation("secret", None)[1] == "none"
    assert store.details_and_affiliation("no such room", "owner") == (None, "none")


def test_a_private_room_is_created_without_guest_access_even_when_asked(world):
    """hypchat asks for guest access by default; a private room is created, and takes no guests."""
    details = result_of(world["api"].create(Caller("owner"), {"name": "Quiet", "privacy": "private", "guest_access": True}))
    assert details.room.config.members_only and not details.is_guest_accessible
    public = result_of(world["api"].create(Caller("owner"), {"name": "Open", "guest_access": True}))
    assert public.is_guest_accessible


def test_only_owners_admins_and_group_admins_change_a_room(world):
    api = world["api"]
    with pytest.raises(Forbidden):
        result_of(api.update(Caller("member"), "Ops Room", {"is_archived": True}))
    result_of(api.update(Caller("owner"), "Ops Room", {"is_archived": True}))
    assert ("room_archived", f"ops_room@{SERVICE}") in world["events"]
    listed = result_of(api.page(Caller("member"), include_private=False, include_archived=False, start=0, limit=10))
    assert listed == ([], 0)
    assert result_of(api.page(Caller("member"), include_private=False, include_archived=True, start=0, limit=10))[1] == 1


def test_making_a_room_private_lets_out_the_occupants_who_are_not_members(world):
    room = occupy(world, "ops_room", "stranger")
    occupy(world, "ops_room", "member")
    result_of(world["api"].add_member(Caller("owner"), "Ops Room", "member"))
    result_of(world["api"].update(Caller("owner"), "Ops Room", {"privacy": "private"}))
    assert list(world["poster"].occupants.by_room[room]) == [f"member@{DOMAIN}/pc"]
    own = [(to, xml) for r, to, xml in world["poster"].delivered if to == [f"stranger@{DOMAIN}/pc"]]
    assert own and "unavailable" in own[0][1] and muc.MEMBERS_ONLY_NOW in own[0][1]


def test_a_member_removed_from_a_private_room_leaves_it(world):
    room = occupy(world, "secret", "member")
    result_of(world["api"].remove_member(Caller("owner"), "Secret", "@member"))
    assert room not in world["poster"].occupants.by_room or not world["poster"].occupants.by_room[room]
    assert [m["username"] for m in result_of(world["api"].members(Caller("owner"), "Secret"))] == ["owner"]
    with pytest.raises(Conflict):
        result_of(world["api"].remove_member(Caller("owner"), "Secret", "owner"))


def test_deleting_a_room_tells_its_occupants_with_a_destroy_presence(world):
    occupy(world, "ops_room", "member")
    result_of(world["api"].delete(Caller("owner"), "ops_room"))
    [(room, to, xml)] = world["poster"].delivered
    assert to == [f"member@{DOMAIN}/pc"] and "<destroy" in xml and "unavailable" in xml
    with pytest.raises(NotFound):
        result_of(world["api"].get(Caller("owner"), "ops_room"))
    assert ("room_deleted", f"ops_room@{SERVICE}") in world["events"]


def test_the_topic_reaches_occupants_as_the_rooms_subject(world):
    occupy(world, "ops_room", "member")
    result_of(world["api"].set_topic(Caller("member"), "Ops Room", "deploy at 5"))
    [(_, to, xml)] = world["poster"].delivered
    assert "<subject>deploy at 5</subject>" in xml and f"ops_room@{SERVICE}/Member" in xml
    assert result_of(world["api"].get(Caller("member"), "Ops Room"))[0].topic == "deploy at 5"


def test_a_room_token_posts_notifications_only_into_its_own_room(world):
    api, private_id = world["api"], world["private"].room.id
    token = Caller(None, room_id=private_id)
    result_of(api.send_notification(token, str(private_id), Notification("hi", label="Bot")))
    assert world["poster"].posted[-1][:4] == ("notification", f"secret@{SERVICE}", None, "Bot")
    with pytest.raises(NotFound):
        result_of(api.send_notification(token, "Ops Room", Notification("hi")))
    with pytest.raises(Forbidden):
        result_of(api.send_message(token, str(private_id), "hello"))
    with pytest.raises(NotFound):
        result_of(api.send_message(Caller("stranger"), "Secret", "hello"))


def test_a_message_is_posted_under_the_users_display_name(world):
    result_of(world["api"].send_message(Caller("member"), "Ops Room", "hello"))
    assert world["poster"].posted[-1] == ("message", f"ops_room@{SERVICE}", f"member@{DOMAIN}", "Member", "hello")


def test_an_invitation_to_a_private_room_makes_the_invitee_a_member(world):
    result_of(world["api"].invite(Caller("owner"), "Secret", "stranger@example.com", "join us"))
    [(bare, xml)] = world["delivery"].sent
    assert bare == f"stranger@{DOMAIN}" and "<invite" in xml and "join us" in xml
    assert result_of(world["api"].get(Caller("stranger"), "Secret"))[0].room.jid_node == "secret"


def test_users_are_found_by_id_email_or_mention_and_created_with_a_valid_address(world):
    directory = UserDirectory(world["users"], domain=DOMAIN, run_database=lambda f, *a: defer.maybeDeferred(f, *a))
    created = result_of(directory.create({"name": "Dana Scully", "email": "Dana.Scully@fbi.gov", "mention_name": "Scully", "password": "truth-is-out"}))
    assert created["username"] == "scully" and created["mention_name"] == "Scully"
    assert result_of(directory.find("@Scully"))["id"] == created["id"]
    assert result_of(directory.find(str(created["id"])))["email"] == "Dana.Scully@fbi.gov"
    with pytest.raises(Conflict):
        result_of(directory.create({"name": "Other", "email": "Dana.Scully@fbi.gov"}))
    result_of(directory.delete("@Scully"))
    with pytest.raises(NotFound):
        result_of(directory.find("@Scully"))
    assert result_of(directory.find("@Scully", include_deleted=True))["is_active"] in (0, False)


def test_deleting_a_user_ends_their_open_sessions(world):
    """DELETE's domain call marks the user deleted and ends their sessions through the console's closer, once."""

    class Closer:
        closed = []

        def close(self, username, reason):
            self.closed.append((username, reason))
            return {"web_sessions": 0, "xmpp_streams": 1}

    closer = Closer()
    directory = UserDirectory(world["users"], domain=DOMAIN, run_database=lambda f, *a: defer.maybeDeferred(f, *a), closer=closer)
    created = result_of(directory.create({"name": "Fox Mulder", "email": "fox@fbi.gov", "mention_name": "Mulder"}))
    result_of(directory.delete(str(created["id"])))
    assert closer.closed == [(created["username"], "this account was deleted")]
    with pytest.raises(NotFound):
        result_of(directory.delete(str(created["id"])))
    assert len(closer.closed) == 1


def test_dates_and_names():
    assert parse_date("2025-01-02T03:04:05Z", None) == 1735787045000
    assert parse_date("2025-01-02T04:04:05", "Europe/Berlin") == 1735787045000
    with pytest.raises(Invalid):
        parse_date("yesterday", None)
    assert room_node_for("Ops Room #1!") == "ops_room_1"


def test_presence_view_speaks_for_the_highest_priority_resource():
    from hipchat_server.users_api import presence_view

    available = {
        "phone": (0, "<presence xmlns='jabber:client'><show>away</show><status>on the train</status></presence>"),
        "desk": (5, "<presence xmlns='jabber:client'><show>dnd</show><status>in a review</status></presence>"),
    }
    assert presence_view(available) == {"status": "in a review", "idle": None, "show": "dnd", "client": None, "is_online": True}
    # A plain available presence is HipChat's "chat"; an unknown <show/> too, rather than passing it through.
    assert presence_view({"x": (0, "<presence xmlns='jabber:client'/>")})["show"] == "chat"
    assert presence_view({"x": (0, "<presence xmlns='jabber:client'><show>bogus</show></presence>")})["show"] == "chat"
    assert presence_view({})["is_online"] is False
