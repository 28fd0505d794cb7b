"""Users and groups: list and search with paging, create, edit, deactivate (sessions closed at once),
reset password, import from CSV with a preview and a per-row error report; groups and their members."""

from __future__ import annotations

from urllib.parse import quote

from twisted.internet import defer

from hipchat_server.users_admin import CSV_COLUMNS, AdminError, users_admin
from hipchat_server.web.console.app import Refused, int_arg

PAGE_SIZE = 50


def _checked(form: dict, prefix: str) -> list[int]:
    """The ids of the checkboxes named ``<prefix><id>`` that were ticked."""
    return [int(k[len(prefix):]) for k, v in form.items() if k.startswith(prefix) and k[len(prefix):].isdigit() and v]


def register(console) -> None:
    admin_users = users_admin(console.chat_server, console.sessions)
    run = console.run_blocking

    @defer.inlineCallbacks
    def refusing(call, *args, **kwargs):
        try:
            return (yield run(call, *args, **kwargs))
        except AdminError as e:
            raise Refused(str(e)) from None

    @console.page("/users")
    @defer.inlineCallbacks
    def list_users(request, admin):
        text = console.arg(request, "q")
        start = int_arg(request, "start", 0)
        rows, total = yield run(admin_users.search, text, start=start, limit=PAGE_SIZE)
        groups = yield run(admin_users.all_groups)
        return "users.html", {"section": "users", "rows": rows, "total": total, "q": text, "start": start, "page_size": PAGE_SIZE, "groups": groups}

    @console.action("/users/create")
    @defer.inlineCallbacks
    def create(request, admin, form):
        user, password = yield refusing(
            admin_users.create, admin.username, form.get("username", ""), form.get("name", ""), form.get("email", ""),
            form.get("password", ""), is_admin=bool(form.get("is_admin")), group_ids=_checked(form, "group-"),
        )
        return console.render(request, "secret.html", {
            "section": "users", "title": f"User {user['username']} created",
            "what": "Their password" + (" (generated)" if not form.get("password") else ""),
            "secret": password if not form.get("password") else "", "next": f"/admin/users/{quote(user['username'])}",
        }, admin)

    @console.page("/users/<username>")
    @defer.inlineCallbacks
    def edit_form(request, admin, username):
        user = yield refusing(admin_users.get, username)
        groups = yield run(admin_users.all_groups)
        member_of = {g["id"] for g in user["groups"]}
        return "user.html", {"section": "users", "user": user, "groups": groups, "member_of": member_of}

    @console.action("/users/<username>/edit")
    @defer.inlineCallbacks
    def edit(request, admin, form, username):
        yield refusing(
            admin_users.update, admin.username, username, name=form.get("name", ""), email=form.get("email", ""),
            is_admin=bool(form.get("is_admin")), group_ids=_checked(form, "group-"),
        )
        return f"/admin/users/{quote(username)}", f"Saved {username}."

    @console.action("/users/<username>/deactivate")
    @defer.inlineCallbacks
    def deactivate(request, admin, form, username):
        ended = yield refusing(admin_users.deactivate, admin.username, username)
        return (
            f"/admin/users/{quote(username)}",
            f"{username} is deactivated: {ended.get('xmpp_streams', 0)} chat sessions and {ended.get('web_sessions', 0)} browser sessions were ended.",
        )

    @console.action("/users/<username>/activate")
    @defer.inlineCallbacks
    def activate(request, admin, form, username):
        yield refusing(admin_users.activate, admin.username, username)
        return f"/admin/users/{quote(username)}", f"{username} can log in again."

    @console.action("/users/<username>/reset-password")
    @defer.inlineCallbacks
    def reset_password(request, admin, form, username):
        password = yield refusing(admin_users.reset_password, admin.username, username, form.get("password", ""))
        return console.render(request, "secret.html", {
            "section": "users", "title": f"New password of {username}", "what": "The new password" + (" (generated)" if not form.get("password") else ""),
            "secret": password if not form.get("password") else "", "next": f"/admin/users/{quote(username)}",
        }, admin)

    @console.page("/users-import")
    def import_form(request, admin):
        return "users_import.html", {"section": "users", "rows": None, "csv": "", "columns": CSV_COLUMNS, "imported": False}

    @console.action("/users-import")
    @defer.inlineCallbacks
    def import_csv(request, admin, form):
        text = form.get("csv", "")
        confirmed = form.get("confirm") == "1"
        try:
            rows = yield run(admin_users.run_import if confirmed else admin_users.preview_import, *((admin.username, text) if confirmed else (text,)))
        except AdminError as e:
            return console.render(request, "users_import.html", {"section": "users", "rows": None, "csv": text, "columns": CSV_COLUMNS, "imported": False, "error": str(e)}, admin)
        return console.render(request, "users_import.html", {"section": "users", "rows": rows, "csv": text, "columns": CSV_COLUMNS, "imported": confirmed, "error": ""}, admin)

    # Groups.
    @console.action("/groups/create")
    @defer.inlineCallbacks
    def create_group(request, admin, form):
        yield refusing(admin_users.create_group, admin.username, form.get("name", ""))
        return "/admin/users#groups", f"Group {form.get('name', '').strip()} created."

    @console.page("/groups/<int:group_id>")
    @defer.inlineCallbacks
    def group(request, admin, group_id):
        group, members = yield refusing(admin_users.group_members, group_id)
        return "group.html", {"section": "users", "group": group, "members": members}

    @console.action("/groups/<int:group_id>/add")
    @defer.inlineCallbacks
    def add_member(request, admin, form, group_id):
        yield refusing(admin_users.add_to_group, admin.username, group_id, form.get("username", ""))
        return f"/admin/groups/{group_id}", f"Added {form.get('username', '').strip()}."

    @console.action("/groups/<int:group_id>/remove")
    @defer.inlineCallbacks
    def remove_member(request, admin, form, group_id):
        yield refusing(admin_users.remove_from_group, admin.username, group_id, form.get("username", ""))
        return f"/admin/groups/{group_id}", f"Removed {form.get('username', '')}."

    @console.action("/groups/<int:group_id>/delete")
    @defer.inlineCallbacks
    def delete_group(request, admin, form, group_id):
        yield refusing(admin_users.delete_group, admin.username, group_id)
        return "/admin/users#groups", "Group deleted."
