"""Users: creating accounts and checking passwords (domain logic over the users store)."""

from __future__ import annotations

from argon2 import PasswordHasher

from hipchat_server.storage.users import UserStore

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def ensure_admin(store: UserStore, username: str, email: str, password: str) -> bool:
    """Create the administrator ``username`` unless it exists; return True when created.

    An existing account is left as it is: re-running the installer must not
    reset a password the administrator has changed since.
    """
    if store.get_by_username(username) is not None:
        return False
    store.insert(
        username=username,
        name="Administrator",
        mention_name=username,
        email=email,
        password_hash=hash_password(password),
        is_admin=True,
    )
    return True
