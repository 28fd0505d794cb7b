"""A room's people over HTTP: members (list, add 204, remove 204), participants (who is in it now), invitations (204)."""

from __future__ import annotations

from urllib.parse import quote

from hipchat_server.rest import api
from hipchat_server.rest.rooms import call, collection, services, user_ref


def register(app, context: api.ApiContext) -> None:
    def rooms():
        return services(context).rooms

    def paged(request, rows, path):
        start, count = api.paging(request)
        page = [user_ref(context, row) for row in rows[start : start + count]]
        return collection(request, context, page, len(rows), path)

    @api.route(app, "GET", "/room/<room>/member", scope="view_group")
    def members(request, caller, room):
        d = call(rooms().members, caller, room)
        return d.addCallback(lambda rows: paged(request, rows, f"room/{quote(room, safe='')}/member"))

    @api.route(app, "PUT", "/room/<room>/member/<user>", scope="admin_room")
    def add_member(request, caller, room, user):
        return call(rooms().add_member, caller, room, user).addCallback(lambda _: None)

    @api.route(app, "DELETE", "/room/<room>/member/<user>", scope="admin_room")
    def remove_member(request, caller, room, user):
        return call(rooms().remove_member, caller, room, user).addCallback(lambda _: None)

    @api.route(app, "GET", "/room/<room>/participant", scope="view_group")
    def participants(request, caller, room):
        d = call(rooms().participants, caller, room)
        return d.addCallback(lambda rows: paged(request, rows, f"room/{quote(room, safe='')}/participant"))

    @api.route(app, "POST", "/room/<room>/invite/<user>", scope="admin_room")
    def invite(request, caller, room, user):
        body = api.json_body(request, {"reason": api.field(str, required=False, max_length=250)})
        return call(rooms().invite, caller, room, user, body["reason"]).addCallback(lambda _: None)
