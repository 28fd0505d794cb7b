"""Rooms: list, create, archive, delete (after a confirmation page), privacy, owner, members and guest access.

Every change goes through `rooms_api.RoomsApi` as an administrator (the same
operations, checks and XMPP effects as the REST API: a deleted room's
occupants get XEP-0045's destroy presence, a room made private lets its
non-members out) and is written to the audit log.
"""

from __future__ import annotations

from twisted.internet import defer

from hipchat_server import audit
from hipchat_server.guests import guest_link
from hipchat_server.users_api import Caller, Refused as DomainRefused
from hipchat_server.web.console.app import Refused, int_arg

PAGE_SIZE = 50


def register(console) -> None:
    from hipchat_server.history import history_for
    from hipchat_server.rooms_api import rooms_api
    from hipchat_server.storage.users import UserStore

    api = rooms_api(console.chat_server, history_for(console.chat_server))
    user_store = UserStore(console.chat_server.get_database_engine())
    run = console.run_blocking

    def caller(admin) -> Caller:
        return Caller(admin.username, is_admin=True)

    @defer.inlineCallbacks
    def refusing(d):
        try:
            return (yield d)
        except DomainRefused as e:
            raise Refused(e.message) from None

    def record(admin, action, room, details=None):
        return run(audit.record, admin.username, action, room, details)

    @console.page("/rooms")
    @defer.inlineCallbacks
    def list_rooms(request, admin):
        start = int_arg(request, "start", 0)
        archived = console.arg(request, "archived") == "1"
        rooms, total = yield api.page(caller(admin), include_private=True, include_archived=archived, start=start, limit=PAGE_SIZE)
        return "rooms.html", {"section": "rooms", "rooms": rooms, "total": total, "start": start, "page_size": PAGE_SIZE, "archived": archived}

    @console.action("/rooms/create")
    @defer.inlineCallbacks
    def create(request, admin, form):
        fields = {"name": form.get("name", "").strip(), "privacy": form.get("privacy", "public"), "topic": form.get("topic", "")}
        owner = form.get("owner", "").strip()
        if owner:
            row = yield run(user_store.get_by_username, owner)
            if row is None:
                raise Refused(f"no user {owner!r}")
            fields["owner_user_id"] = row["id"]
        details = yield refusing(api.create(caller(admin), fields))
        yield record(admin, "room.create", details.room.config.name, {"id": details.room.id, "privacy": fields["privacy"], "owner": owner or admin.username})
        return f"/admin/rooms/{details.room.id}", f"Room {details.room.config.name} created."

    @console.page("/rooms/<int:room_id>")
    @defer.inlineCallbacks
    def room(request, admin, room_id):
        details, owner, participants = yield refusing(api.get(caller(admin), str(room_id)))
        members = yield refusing(api.members(caller(admin), str(room_id)))
        guest_url = guest_link(console.chat_server.get_config().server.public_url, details.guest_token) if details.guest_token else None
        return "room.html", {
            "section": "rooms", "details": details, "members": members, "participants": participants,
            "jid": api.room_jid(details.room.jid_node), "guest_url": guest_url,
        }

    @console.action("/rooms/<int:room_id>/edit")
    @defer.inlineCallbacks
    def edit(request, admin, form, room_id):
        fields = {
            "name": form.get("name", "").strip(),
            "privacy": form.get("privacy", "public"),
            "topic": form.get("topic", ""),
            "is_archived": bool(form.get("is_archived")),
        }
        owner = form.get("owner", "").strip()
        if owner:
            row = yield run(user_store.get_by_username, owner)
            if row is None or row.get("deleted_at") is not None:
                raise Refused(f"no user {owner!r}")
            fields["owner"] = {"id": row["id"]}
        yield refusing(api.update(caller(admin), str(room_id), fields))
        yield record(admin, "room.update", fields["name"], dict({k: v for k, v in fields.items() if k != "owner"}, id=room_id, owner=owner))
        return f"/admin/rooms/{room_id}", "Saved."

    @console.action("/rooms/<int:room_id>/archive")
    @defer.inlineCallbacks
    def archive(request, admin, form, room_id):
        archived = form.get("archived") == "1"
        yield refusing(api.update(caller(admin), str(room_id), {"is_archived": archived}))
        yield record(admin, "room.archive" if archived else "room.unarchive", str(room_id))
        return f"/admin/rooms/{room_id}", "Archived: no one can post in it any more." if archived else "The room is open again."

    @console.action("/rooms/<int:room_id>/guest-access")
    @defer.inlineCallbacks
    def guest_access(request, admin, form, room_id):
        on = form.get("on") == "1"
        yield refusing(api.update(caller(admin), str(room_id), {"is_guest_accessible": on}))
        yield record(admin, "room.guest_access_on" if on else "room.guest_access_off", str(room_id))
        if on:
            return f"/admin/rooms/{room_id}", "Guest access is on: anyone with the guest link can chat in this room."
        return f"/admin/rooms/{room_id}", "Guest access is off: the guest link no longer works and guests were let out."

    @console.action("/rooms/<int:room_id>/members/add")
    @defer.inlineCallbacks
    def add_member(request, admin, form, room_id):
        username = form.get("username", "").strip()
        yield refusing(api.add_member(caller(admin), str(room_id), username))
        yield record(admin, "room.add_member", str(room_id), {"user": username})
        return f"/admin/rooms/{room_id}", f"{username} is a member."

    @console.action("/rooms/<int:room_id>/members/remove")
    @defer.inlineCallbacks
    def remove_member(request, admin, form, room_id):
        username = form.get("username", "").strip()
        yield refusing(api.remove_member(caller(admin), str(room_id), username))
        yield record(admin, "room.remove_member", str(room_id), {"user": username})
        return f"/admin/rooms/{room_id}", f"{username} is no longer a member."

    @console.page("/rooms/<int:room_id>/delete")
    @defer.inlineCallbacks
    def confirm_delete(request, admin, room_id):
        details, _, participants = yield refusing(api.get(caller(admin), str(room_id)))
        return "room_delete.html", {"section": "rooms", "details": details, "participants": participants}

    @console.action("/rooms/<int:room_id>/delete")
    @defer.inlineCallbacks
    def delete(request, admin, form, room_id):
        details, _, _ = yield refusing(api.get(caller(admin), str(room_id)))
        if form.get("confirm_name", "") != details.room.config.name:
            raise Refused("type the room's exact name to delete it")
        yield refusing(api.delete(caller(admin), str(room_id)))
        yield record(admin, "room.delete", details.room.config.name, {"id": room_id})
        return "/admin/rooms", f"Room {details.room.config.name} deleted (its messages stay in the archive)."
