"""Data forms of Multi-User Chat (XEP-0045 with XEP-0004): the room configuration form and the room info form.

Protocol only: `RoomConfig` is what a room's owner may set; `config_form`
builds the form an owner is sent, `parse_config_submission` reads the form
the owner submits back, keeping the current value of every field left out.
A supported field with a value we cannot honour is refused with
``not-acceptable`` naming the field. A field we do not know is ignored when
it asks for nothing (empty, false, 0: clients send back whole forms from
other servers) and refused when it asks for something we would silently not
do (a password, for instance).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from twisted.words.xish import domish

DATA_NS = "jabber:x:data"
ROOMCONFIG_FORM = "http://jabber.org/protocol/muc#roomconfig"
ROOMINFO_FORM = "http://jabber.org/protocol/muc#roominfo"
WHOIS_VALUES = ("moderators", "anyone")
MAX_OCCUPANTS_OPTIONS = ("10", "20", "30", "50", "100", "200", "none")
MAX_NAME_LENGTH = 100  # rooms.name (HipChat's room name)
MAX_DESCRIPTION_LENGTH = 255
_FALSE = ("", "0", "false")


class FormError(Exception):
    """A submitted form is refused with the stanza error ``condition`` (``text`` says which field and why)."""

    def __init__(self, condition: str, text: str):
        super().__init__(f"{condition}: {text}")
        self.condition = condition
        self.text = text


@dataclass(frozen=True)
class RoomConfig:
    """A room's settings, as the muc#roomconfig form names them."""

    name: str
    description: str = ""
    persistent: bool = True  # muc#roomconfig_persistentroom: kept when the last occupant leaves
    listed: bool = True  # muc#roomconfig_publicroom: in the room list (disco#items)
    members_only: bool = False  # HipChat's private room
    moderated: bool = False  # only participants (not visitors) may speak
    whois: str = "anyone"  # who sees occupants' real JIDs: anyone (non-anonymous) or moderators
    max_occupants: int | None = None  # None: no limit
    change_subject: bool = True  # participants (not only moderators) may change the subject
    allow_invites: bool = True  # participants (not only admins and owners) may invite

    @property
    def non_anonymous(self) -> bool:
        return self.whois == "anyone"


# field var -> (RoomConfig attribute, form type, label)
CONFIG_FIELDS = {
    "muc#roomconfig_roomname": ("name", "text-single", "Room name"),
    "muc#roomconfig_roomdesc": ("description", "text-single", "Description"),
    "muc#roomconfig_persistentroom": ("persistent", "boolean", "Keep the room when the last occupant leaves"),
    "muc#roomconfig_publicroom": ("listed", "boolean", "List the room in the room directory"),
    "muc#roomconfig_membersonly": ("members_only", "boolean", "Private: only members may enter"),
    "muc#roomconfig_moderatedroom": ("moderated", "boolean", "Only participants may speak (moderated)"),
    "muc#roomconfig_whois": ("whois", "list-single", "Who may see occupants' real addresses"),
    "muc#roomconfig_maxusers": ("max_occupants", "list-single", "Most occupants at once"),
    "muc#roomconfig_changesubject": ("change_subject", "boolean", "Participants may change the subject"),
    "muc#roomconfig_allowinvites": ("allow_invites", "boolean", "Participants may invite others"),
}


def _add_field(form: domish.Element, var: str, values, kind: str | None = None, label: str | None = None) -> domish.Element:
    field = form.addElement("field")
    field["var"] = var
    if kind:
        field["type"] = kind
    if label:
        field["label"] = label
    for value in values:
        field.addElement("value", content=value)
    return field


def _form(kind: str, form_type: str) -> domish.Element:
    form = domish.Element((DATA_NS, "x"))
    form["type"] = kind
    _add_field(form, "FORM_TYPE", [form_type], "hidden")
    return form


def _text(config: RoomConfig, attribute: str) -> str:
    value = getattr(config, attribute)
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return "none"
    return str(value)


def config_form(config: RoomConfig) -> domish.Element:
    """The ``<x type='form'/>`` an owner fills in to configure a room, with the current values."""
    form = _form("form", ROOMCONFIG_FORM)
    form.addElement("title", content=f"Configuration of {config.name}")
    for var, (attribute, kind, label) in CONFIG_FIELDS.items():
        field = _add_field(form, var, [_text(config, attribute)], kind, label)
        if var == "muc#roomconfig_whois":
            options = WHOIS_VALUES
        elif var == "muc#roomconfig_maxusers":
            options = MAX_OCCUPANTS_OPTIONS
        else:
            continue
        for option in options:
            field.addElement("option").addElement("value", content=option)
    return form


def form_fields(form: domish.Element) -> dict[str, list[str]]:
    """Each field's var and its values, in the order submitted."""
    fields: dict[str, list[str]] = {}
    for field in form.elements(DATA_NS, "field"):
        var = field.getAttribute("var")
        if var:
            fields[var] = [str(value) for value in field.elements(DATA_NS, "value")]
    return fields


def _boolean(var: str, values: list[str]) -> bool:
    value = values[0].strip().lower() if values else ""
    if value in ("1", "true"):
        return True
    if value in _FALSE:
        return False
    raise FormError("not-acceptable", f"{var}: expected a boolean (1 or 0), got {value[:40]!r}")


def _single(values: list[str]) -> str:
    return values[0] if values else ""


def _parse_value(var: str, kind: str, values: list[str]):
    if kind == "boolean":
        return _boolean(var, values)
    value = _single(values).strip()
    if var == "muc#roomconfig_roomname":
        if not value:
            raise FormError("not-acceptable", f"{var}: a room needs a name")
        if len(value) > MAX_NAME_LENGTH:
            raise FormError("not-acceptable", f"{var}: at most {MAX_NAME_LENGTH} characters")
        return value
    if var == "muc#roomconfig_roomdesc":
        if len(value) > MAX_DESCRIPTION_LENGTH:
            raise FormError("not-acceptable", f"{var}: at most {MAX_DESCRIPTION_LENGTH} characters")
        return value
    if var == "muc#roomconfig_whois":
        if value not in WHOIS_VALUES:
            raise FormError("not-acceptable", f"{var}: expected one of {', '.join(WHOIS_VALUES)}, got {value[:40]!r}")
        return value
    if var == "muc#roomconfig_maxusers":
        if value in ("", "none", "0"):
            return None
        if not value.isdigit() or not 1 <= int(value) <= 100_000:
            raise FormError("not-acceptable", f"{var}: expected a number of occupants or 'none', got {value[:40]!r}")
        return int(value)
    raise AssertionError(var)


def parse_config_submission(form: domish.Element, current: RoomConfig) -> RoomConfig:
    """The settings an owner's ``<x type='submit'/>`` asks for; fields left out keep their ``current`` value.

    An empty submit form is XEP-0045's "instant room": the settings stay as
    they are. Raises FormError.
    """
    if form.getAttribute("type") != "submit":
        raise FormError("bad-request", "expected a form of type 'submit'")
    fields = form_fields(form)
    form_type = _single(fields.pop("FORM_TYPE", []))
    if form_type and form_type != ROOMCONFIG_FORM:
        raise FormError("bad-request", f"FORM_TYPE: expected {ROOMCONFIG_FORM}, got {form_type[:80]!r}")
    changes = {}
    for var, values in fields.items():
        known = CONFIG_FIELDS.get(var)
        if known is None:
            if all(value.strip().lower() in _FALSE for value in values):
                continue  # asks for nothing we do not do
            raise FormError("not-acceptable", f"{var}: not supported by this server")
        attribute, kind, _ = known
        changes[attribute] = _parse_value(var, kind, values)
    return replace(current, **changes)


def roominfo_form(config: RoomConfig, subject: str, occupants: int) -> domish.Element:
    """The muc#roominfo form of a room's disco#info (XEP-0045 6.4)."""
    form = _form("result", ROOMINFO_FORM)
    _add_field(form, "muc#roominfo_description", [config.description], label="Description")
    _add_field(form, "muc#roominfo_subject", [subject], label="Subject")
    _add_field(form, "muc#roominfo_occupants", [str(occupants)], label="Number of occupants")
    _add_field(form, "muc#roomconfig_roomname", [config.name], label="Room name")
    _add_field(form, "muc#roominfo_changesubject", ["1" if config.change_subject else "0"], label="Occupants may change the subject")
    if config.max_occupants is not None:
        _add_field(form, "muc#roomconfig_maxusers", [str(config.max_occupants)], label="Most occupants at once")
    return form
