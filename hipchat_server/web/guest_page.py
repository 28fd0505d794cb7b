"""``/guest/<token>``: a room's guest link. The page asks for a name, then opens the web client in that room only.

GET shows the name form (or, with 403, why the link does not work: guest
access turned off for the room or on this server, an unknown link). POST
makes the guest account (`guests.Guests.admit`) and answers the web client
(Converse.js, the same release and start script as ``/``) set to log in as
that guest and to show that one room: no contacts, no room list, no
one-to-one chats. The guest's password is in the page's settings block
only; the page is never cached (`webclient.secure_page_headers`).
"""

from __future__ import annotations

import os

from twisted.internet import threads
from twisted.logger import Logger
from twisted.web import resource, server

from hipchat_server.guests import GuestRefused, display_name
from hipchat_server.web.sessions import read_form
from hipchat_server.web.templating import render
from hipchat_server.web.webclient import client_settings, secure_page_headers

log = Logger()


def guest_settings(base: dict, domain: str, admission) -> dict:
    """Converse.js settings for one guest: log in at once, join its room under its name, show nothing else."""
    guest = admission.guest
    return dict(
        base,
        authentication="login",
        auto_login=True,
        jid=f"{guest.username}@{domain}",
        password=admission.password,
        auto_join_rooms=[{"jid": guest.room.jid, "nick": guest.name}],
        nickname=guest.name,
        muc_nickname_from_jid=False,
        singleton=True,  # only the room: no control box with contacts and rooms
        allow_contact_requests=False,
        allow_muc_invitations=False,
        allow_bookmarks=False,
        allow_logout=False,
        clear_cache_on_logout=True,
        persistent_store="sessionStorage",  # nothing of the guest's is kept once the tab is closed
        message_archiving="never",  # a guest has no archive of its own; the room's history comes from the room
        hipchat_guest=True,  # for our start script (webclient.js), which takes it out before Converse sees it
    )


INCOMPLETE_LINK = "this guest link is incomplete; ask for the whole link"


class GuestPage(resource.Resource):
    """GET and POST ``/guest/<token>``. ``guests`` is a `guests.Guests`; ``webclient`` the `webclient.WebClientPage` (its release)."""

    isLeaf = True

    def __init__(self, guests, domain: str, rooms_service: str, assets_dir: str, *, run_blocking=threads.deferToThread):
        super().__init__()
        self.guests, self.domain, self.run_blocking = guests, domain, run_blocking
        self.assets_dir = assets_dir
        self.version = os.path.basename(assets_dir.rstrip("/")) if assets_dir else ""
        self.base_settings = client_settings(domain, rooms_service, self.version)

    def _token(self, request) -> str | None:
        """Set the page's headers; the link's token, or None when the link is incomplete."""
        secure_page_headers(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        if len(request.postpath) != 1 or not request.postpath[0]:
            return None
        return request.postpath[0].decode("ascii", "replace")

    def render_GET(self, request):
        token = self._token(request)
        if token is None:
            return self._refused(request, INCOMPLETE_LINK)
        d = self.run_blocking(self.guests.room, token)
        d.addCallback(lambda room: render("guest.html", room=room, error=None, name=""))
        return self._answer(request, d)

    def render_POST(self, request):
        token = self._token(request)
        if token is None:
            return self._refused(request, INCOMPLETE_LINK)
        try:
            name = read_form(request).get("name", "")
        except ValueError as e:
            return self._refused(request, str(e))
        try:
            display_name(name)
        except GuestRefused as e:  # the form again, with the reason
            reason = str(e)
            d = self.run_blocking(self.guests.room, token)
            d.addCallback(lambda room: (request.setResponseCode(400), render("guest.html", room=room, error=reason, name=name))[1])
            return self._answer(request, d)
        if not os.path.isfile(os.path.join(self.assets_dir or "", "converse.min.js")):
            request.setResponseCode(503)
            return render("webclient_missing.html")

        def chat(admission):
            settings = guest_settings(self.base_settings, self.domain, admission)
            return render("guest_chat.html", version=self.version, settings=settings, room=admission.guest.room)

        d = self.run_blocking(self.guests.admit, token, name)
        d.addCallback(chat)
        return self._answer(request, d)

    def _refused(self, request, reason: str) -> bytes:
        request.setResponseCode(403)
        return render("guest_refused.html", reason=reason)

    def _answer(self, request, d):
        def write(body: bytes):
            request.write(body)
            request.finish()

        def refused(failure):
            failure.trap(GuestRefused)
            write(self._refused(request, str(failure.value)))

        def failed(failure):
            log.failure("the guest page failed", failure)
            request.setResponseCode(503)
            write(b"Guest access cannot be checked right now; try again shortly.\n")

        d.addCallback(write)
        d.addErrback(refused)
        d.addErrback(failed)
        return server.NOT_DONE_YET
