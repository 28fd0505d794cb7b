"""E-mail to people @mentioned in a room while they were offline (``mention_mail`` jobs).

A room message that @mentions someone queues one ``mention_mail`` job (see
`events`). In the worker, that job is fanned out: each mentioned user who
exists, is active, is not the sender, and has no XMPP session bound anywhere
(the session directory in Redis) gets a job of their own (``to`` set), and a
``push`` job when a push gateway is configured. A job with ``to`` sends one
plain-text e-mail through the SMTP relay in ``mail.smtp_host:smtp_port``
(the installer's local postfix, which queues when the company relay is
unreachable). One job per recipient means a failure retries only that
recipient's mail.
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import formataddr, make_msgid

from hipchat_server.events import room_key

SMTP_TIMEOUT_SECONDS = 30.0
EXCERPT_LENGTH = 2000


def mention_email(*, to_address: str, to_name: str, from_address: str, sender_name: str, room_name: str, room_url: str,
                  body: str, timestamp: str | None) -> EmailMessage:
    """The e-mail telling ``to_name`` that ``sender_name`` mentioned them in ``room_name``."""
    message = EmailMessage()
    message["From"] = formataddr(("HipChat", from_address))
    message["To"] = formataddr((to_name, to_address))
    message["Subject"] = f"{sender_name} mentioned you in {room_name}"
    message["Message-ID"] = make_msgid(domain=from_address.rsplit("@", 1)[-1])
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
    excerpt = body if len(body) <= EXCERPT_LENGTH else body[:EXCERPT_LENGTH] + " ..."
    when = f" at {timestamp}" if timestamp else ""
    message.set_content(
        f"{sender_name} mentioned you in {room_name}{when} while you were offline:\n\n"
        f"{excerpt}\n\n"
        f"Open the room: {room_url}\n"
    )
    return message


def send_email(message: EmailMessage, host: str, port: int, timeout: float = SMTP_TIMEOUT_SECONDS) -> None:
    """Hand ``message`` to the SMTP relay; raises (OSError, smtplib.SMTPException) when it does not take it."""
    with smtplib.SMTP(host, port, timeout=timeout) as smtp:
        smtp.send_message(message)


class MentionMail:
    """The ``mention_mail`` job handler; see the module docstring.

    ``store`` is a `storage.webhooks.WebhookStore` (people by mention name),
    ``sessions`` a `storage.sessions.SessionDirectory`, ``queue`` the
    `jobs.JobQueue`; ``mail`` and ``push`` the config sections.
    """

    def __init__(self, store, sessions, queue, *, mail, push, domain: str, public_url: str, send=send_email):
        self.store = store
        self.sessions = sessions
        self.queue = queue
        self.mail = mail
        self.push = push
        self.domain = domain
        self.public_url = public_url
        self.send = send

    @property
    def from_address(self) -> str:
        return self.mail.from_address or f"noreply@{self.domain}"

    def __call__(self, job) -> None:
        payload = job.payload
        if "to" in payload:
            self._send_one(payload)
        else:
            self._fan_out(payload)

    def offline_mentioned(self, payload: dict) -> list:
        """The people the message mentions who are not its sender and have no session bound anywhere."""
        sender = (payload.get("sender") or "").split("@", 1)[0]
        people = self.store.people(mention_names=payload.get("mentions") or [])
        return [p for p in people if p.username != sender and not self.sessions.resources(f"{p.username}@{self.domain}")]

    def _fan_out(self, payload: dict) -> None:
        kind, value = room_key(payload.get("room"))
        room = self.store.room(room_id=value) if kind == "id" else self.store.room(node=value)
        if room is None:
            return  # the room is gone; nobody to tell about it
        for person in self.offline_mentioned(payload):
            details = {
                "to": person.email,
                "to_name": person.name,
                "username": person.username,
                "room_id": room.id,
                "room_name": room.name,
                "sender_name": payload.get("sender_name") or (payload.get("sender") or "someone").split("@", 1)[0],
                "body": payload.get("body", ""),
                "timestamp": payload.get("timestamp"),
                "message_id": payload.get("message_id"),
            }
            if self.mail.mention_mail and person.email:
                self.queue.enqueue("mention_mail", details)
            if self.push.gateway_url:
                self.queue.enqueue("push", details)

    def _send_one(self, details: dict) -> None:
        message = mention_email(
            to_address=details["to"],
            to_name=details.get("to_name") or details["to"],
            from_address=self.from_address,
            sender_name=details.get("sender_name") or "someone",
            room_name=details.get("room_name") or "a room",
            room_url=f"{self.public_url}/v2/room/{details.get('room_id')}",
            body=details.get("body", ""),
            timestamp=details.get("timestamp"),
        )
        self.send(message, self.mail.smtp_host, self.mail.smtp_port)
