"""
Ready-made user loaders for `whodunit.flask.Whodunit`, published as ``whodunit.flask.users``.

A user loader returns ``(actor_id, actor_name)`` for the current request, or None when
nobody is logged in.  Each function here builds one for a common way Flask apps keep
their user, so wiring the extension is one line::

    Whodunit(app, user_loader=users.flask_login(name_attr="email"))

The extension calls the loader at the start of each logged request, again when the
response starts if the first call found nobody (a login view), and the database context
calls it for each transaction.  A loader may raise: the extension treats that as an
unknown user and reports it once.
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import current_app, g

from whodunit.context import UserLoader

__all__ = ["flask_login", "from_g", "jwt_claim"]


def flask_login(name_attr: str | None = None) -> UserLoader:
    """
    Read Flask-Login's ``current_user``, when authenticated.

    Args:
        name_attr: The user attribute to store as the actor name (``"email"``,
            ``"username"``); None stores no name.

    Returns:
        A loader giving ``(current_user.get_id(), <name_attr>)``.

    Raises:
        ImportError: Flask-Login is not installed.

    .. versionadded:: 0.1
    """
    from flask_login import current_user

    def load() -> tuple[object, object] | None:
        user = current_user
        if not user.is_authenticated:
            return None
        return user.get_id(), _lookup(user, name_attr)

    return load


def from_g(id_attr: str = "user_id", name_attr: str | None = "user_name") -> UserLoader:
    """
    Read attributes the app's own authentication code puts on `flask.g`.

    Dotted names walk into objects and mappings: ``from_g("user.id", "user.email")``.
    Attributes set by a ``before_request`` function are seen from the response on (the
    request log line, the database context), not by log lines written before it ran.

    Args:
        id_attr: Where the actor id is; an absent or None value means anonymous.
        name_attr: Where the actor name is; None stores no name.

    Returns:
        A loader reading ``g``.

    .. versionadded:: 0.1
    """

    def load() -> tuple[object, object] | None:
        actor_id = _lookup(g, id_attr)
        if actor_id is None:
            return None
        return actor_id, _lookup(g, name_attr)

    return load


def jwt_claim(
    id_claim: str = "sub", name_claim: str | None = None, *, g_attr: str = "jwt_claims"
) -> UserLoader:
    """
    Read claims of the request's JSON Web Token.

    With Flask-JWT-Extended registered on the app, the claims are its ``get_jwt()``; if
    no view has verified the token yet, the loader verifies it as
    ``verify_jwt_in_request(optional=True, skip_revocation_check=True)`` would, so a
    request without a token, or with an invalid or expired one, is anonymous rather than
    an error.  That verification runs the app's ``user_lookup_loader``, if it has one.
    Without Flask-JWT-Extended, the claims are a decoded mapping the app's own code puts
    on ``g`` under *g_attr*.

    Args:
        id_claim: The claim holding the actor id.
        name_claim: The claim holding the actor name; None stores no name.
        g_attr: The `flask.g` attribute holding decoded claims, without Flask-JWT-Extended.

    Returns:
        A loader reading the claims.

    .. versionadded:: 0.1
    """

    def load() -> tuple[object, object] | None:
        if "flask-jwt-extended" in current_app.extensions:
            claims = _verified_jwt()
        else:
            claims = g.get(g_attr)
        if not isinstance(claims, Mapping) or claims.get(id_claim) is None:
            return None
        return claims[id_claim], claims.get(name_claim) if name_claim else None

    return load


def _verified_jwt() -> Mapping[str, object] | None:
    """Return Flask-JWT-Extended's claims, verifying the token first if no view has yet."""
    from flask_jwt_extended import get_jwt, verify_jwt_in_request
    from flask_jwt_extended.exceptions import JWTExtendedException
    from jwt import PyJWTError

    try:
        return get_jwt()
    except RuntimeError:  # nothing verified the token in this request yet
        pass
    try:
        if verify_jwt_in_request(optional=True, skip_revocation_check=True) is None:
            return None  # no token
    except (JWTExtendedException, PyJWTError):
        return None  # a bad token is the client's mistake, not the loader's
    return get_jwt()


def _lookup(source: object, path: str | None) -> object:
    """Follow a dotted path through attributes and mapping keys; None where it ends early."""
    if path is None:
        return None
    value = source
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
        if value is None:
            return None
    return value
