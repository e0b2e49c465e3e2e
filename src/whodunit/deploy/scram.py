"""
SCRAM-SHA-256 password verifiers, as PostgreSQL and PgBouncer store them.

PgBouncer's ``userlist.txt`` must never hold a plaintext password, and with SCRAM it
can still log in to PostgreSQL for the client: it takes the client's key from the
client's own proof and replays it to the server.  That only works when PgBouncer and
PostgreSQL hold the *same* verifier (same salt, same iterations), so whodunit computes
it once and the deployer gives it to both (``ALTER ROLE ... PASSWORD '<verifier>'``).

The format is ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64),
the keys derived as in RFC 5802 and RFC 7677 from the password after SASLprep
(RFC 4013), which PostgreSQL applies too and skips when the password breaks its rules.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass

__all__ = ["DEFAULT_ITERATIONS", "Verifier", "make_verifier", "parse_verifier", "saslprep"]

#: PostgreSQL's own default (``scram_iterations``, 4096 up to PostgreSQL 18).
DEFAULT_ITERATIONS = 4096
SALT_BYTES = 16

_FORMAT = re.compile(
    r"SCRAM-SHA-256\$(?P<iterations>[1-9][0-9]*):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored>[A-Za-z0-9+/=]+):(?P<server>[A-Za-z0-9+/=]+)"
)


@dataclass(frozen=True)
class Verifier:
    """What the server keeps of a password: enough to check a proof, not to log in."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __str__(self) -> str:
        return (
            f"SCRAM-SHA-256${self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )

    def matches(self, password: str) -> bool:
        """Whether *password* is the one this verifier was made from."""
        other = make_verifier(password, salt=self.salt, iterations=self.iterations)
        return hmac.compare_digest(self.stored_key, other.stored_key) and hmac.compare_digest(
            self.server_key, other.server_key
        )


def make_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> Verifier:
    """
    Compute the SCRAM-SHA-256 verifier of *password*.

    Args:
        password: The plaintext password.
        salt: Reuse a salt (to check a password against a stored verifier); by default
            16 random bytes, like PostgreSQL.
        iterations: PBKDF2 rounds.

    Returns:
        The verifier; ``str()`` gives the text PostgreSQL and PgBouncer read.
    """
    if iterations < 1:
        raise ValueError(f"SCRAM iterations must be at least 1, got {iterations}")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return Verifier(
        iterations=iterations,
        salt=salt,
        stored_key=hashlib.sha256(client_key).digest(),
        server_key=hmac.digest(salted, b"Server Key", "sha256"),
    )


def parse_verifier(text: str) -> Verifier | None:
    """Read a verifier from its text form; None when *text* is not one."""
    match = _FORMAT.fullmatch(text)
    if match is None:
        return None
    try:
        return Verifier(
            iterations=int(match["iterations"]),
            salt=base64.b64decode(match["salt"], validate=True),
            stored_key=base64.b64decode(match["stored"], validate=True),
            server_key=base64.b64decode(match["server"], validate=True),
        )
    except ValueError:
        return None


def saslprep(password: str) -> str:
    """
    Normalise *password* as PostgreSQL does before hashing it (RFC 4013, SASLprep).

    A password SASLprep would reject is used unchanged, as PostgreSQL and libpq do, so
    that every password keeps working, only without the normalisation.
    """
    if password.isascii() and password.isprintable():
        return password  # the common case: SASLprep changes nothing here
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    prepared = unicodedata.normalize("NFKC", mapped)
    if not prepared or any(_prohibited(ch) for ch in prepared) or not _bidi_ok(prepared):
        return password
    return prepared


def _prohibited(ch: str) -> bool:
    return any(
        check(ch)
        for check in (
            stringprep.in_table_c12,
            stringprep.in_table_c21_c22,
            stringprep.in_table_c3,
            stringprep.in_table_c4,
            stringprep.in_table_c5,
            stringprep.in_table_c6,
            stringprep.in_table_c7,
            stringprep.in_table_c8,
            stringprep.in_table_c9,
            stringprep.in_table_a1,
        )
    )


def _bidi_ok(text: str) -> bool:
    """RFC 3454 section 6: right-to-left text must be wholly so, and start and end so."""
    if not any(stringprep.in_table_d1(ch) for ch in text):
        return True
    if any(stringprep.in_table_d2(ch) for ch in text):
        return False
    return stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
