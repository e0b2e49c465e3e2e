"""
Redaction of secrets before anything is written out.

A forensic trail that leaks the passwords it records becomes the next incident, so log
records (and audit arguments) go through a `Redactor` before serialization.
It removes values in two ways:

- by key: a mapping key whose name contains a sensitive word (``password``,
  ``db_password``, ``X-Api-Key``, ...) has its whole value replaced, however nested;
- by shape: text that looks like a bearer token, a JWT, a card number passing the Luhn
  check, a URL with a password in it, or ``key=value`` / ``"key": "value"`` with a
  sensitive key is replaced inside any string (messages, exception text, values).

Scanning text is the costly part, so `Redactor.redact_text` first runs a few C-speed
substring checks and remembers short strings that turned out clean.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from re import Pattern

__all__ = [
    "DEFAULT_KEYS",
    "REDACTED",
    "Redactor",
    "luhn_valid",
    "redact",
    "redact_text",
]

REDACTED = "[REDACTED]"

#: Key names whose values are always secrets; matched case-insensitively, as substrings
#: of the key, ignoring ``-``, ``_``, ``.`` and spaces (so ``X-Api-Key`` hits ``api_key``).
DEFAULT_KEYS: frozenset[str] = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "authorization",
        "client_secret",
        "cookie",
        "passwd",
        "password",
        "private_key",
        "refresh_token",
        "secret",
        "session",
        "set-cookie",
        "token",
    }
)

_MAX_DEPTH = 32  # deeper than this is a cycle or an accident: cut it rather than recurse
_TOO_DEEP = "[TOO DEEP]"
_CACHE_MAX_ENTRIES = 4096
_CACHE_MAX_LENGTH = 256
_SEPARATORS = re.compile(r"[-_. ]")
_CARD_TRIGGER = b"0" * 13
# Maps every digit to "0" and every other byte to "x" (spaces and dashes are deleted
# separately), so "13 digits in a row, give or take separators" is a plain substring test.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x78 for b in range(256))
_CARD_DIGITS = range(13, 20)
_CARD_INTS = range(10**12, 10**19)
_AUTH_SCHEMES = "basic|bearer|digest|negotiate|token"


def luhn_valid(digits: str) -> bool:
    """
    Tell whether a string of digits passes the Luhn check, as every card number does.

    The check tells card numbers from the many other long numbers in logs (order ids,
    timestamps): a random number passes one time in ten.

    Args:
        digits: ASCII digits only.

    Returns:
        True when the checksum is valid.
    """
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 0x30
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


class Redactor:
    """
    Replace secrets in values, mappings and text with a fixed marker.

    One instance holds one policy; it is immutable and safe to share between threads.

    Args:
        keys: Sensitive key names, replacing `DEFAULT_KEYS` (pass a smaller set to stop
            redacting, say, ``session``).
        extra_keys: Sensitive key names added to *keys*.
        extra_patterns: Regular expressions (strings or compiled) whose whole matches
            are replaced in every string, on top of the built-in shapes.
        replacement: The marker written instead of a secret.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        keys: Iterable[str] = DEFAULT_KEYS,
        extra_keys: Iterable[str] = (),
        extra_patterns: Iterable[str | Pattern[str]] = (),
        replacement: str = REDACTED,
    ) -> None:
        names = sorted({*keys, *extra_keys})
        self.replacement = replacement
        self._normalized = tuple({_normalize(name) for name in names if _normalize(name)})
        self._fragments = _text_fragments(names)
        self._shapes = _shape_pattern(names)
        self._patterns = tuple(re.compile(p) if isinstance(p, str) else p for p in extra_patterns)
        self._key_verdicts: dict[str, bool] = {}
        self._clean_texts: set[str] = set()

    def is_sensitive_key(self, key: object) -> bool:
        """
        Tell whether a mapping key names a secret.

        Args:
            key: The key; only strings can be sensitive.

        Returns:
            True when the key contains one of the sensitive names.
        """
        if not isinstance(key, str):
            return False
        verdict = self._key_verdicts.get(key)
        if verdict is None:
            normalized = _normalize(key)
            verdict = any(map(normalized.__contains__, self._normalized))
            if len(self._key_verdicts) < _CACHE_MAX_ENTRIES:
                self._key_verdicts[key] = verdict
        return verdict

    def redact_text(self, text: str) -> str:
        """
        Replace the secrets found by shape inside free text.

        Args:
            text: A message, an exception text, any string value.

        Returns:
            The text with each secret replaced (the same object when nothing was found).
        """
        if text in self._clean_texts:
            return text
        redacted = self._shapes.sub(self._replace_shape, text) if self._may_match(text) else text
        for pattern in self._patterns:
            redacted = pattern.sub(self.replacement, redacted)
        if redacted is text and len(text) <= _CACHE_MAX_LENGTH:
            if len(self._clean_texts) >= _CACHE_MAX_ENTRIES:
                self._clean_texts.clear()
            self._clean_texts.add(text)
        return redacted

    def redact_fields(self, fields: Mapping[str, object]) -> dict[str, object]:
        """
        Redact a flat set of named fields, such as a record's context or extras.

        Args:
            fields: Field names and values.

        Returns:
            A new dict with the same keys, in the same order.
        """
        # The hot path of every log record: scalars are checked inline, without the
        # generic walk (a request line has a dozen fields, nearly all short strings).
        verdicts = self._key_verdicts
        clean = self._clean_texts
        redacted: dict[str, object] = {}
        for key, value in fields.items():
            if verdicts.get(key) is not False and self.is_sensitive_key(key):
                redacted[key] = self.replacement
            elif type(value) is str:
                redacted[key] = value if value in clean else self.redact_text(value)
            elif value is None or type(value) is bool or type(value) is float:
                redacted[key] = value
            else:
                redacted[key] = self.redact_value(value, 1)
        return redacted

    def redact_value(self, value: object, _depth: int = 0) -> object:
        """
        Redact any value, walking into mappings, sequences, sets and dataclasses.

        Containers come back as JSON-ready copies (mappings as dicts, the rest as lists,
        tuples as tuples); other objects come back as they are.

        Args:
            value: What to redact.

        Returns:
            The redacted value.
        """
        if isinstance(value, str):
            return self.redact_text(value)
        if type(value) is int:
            return self.replacement if _looks_like_card(value) else value
        if isinstance(value, (int, float, type(None))):
            return value
        if _depth >= _MAX_DEPTH:
            return _TOO_DEEP
        if isinstance(value, Mapping):
            return {k: self._redact_item(k, v, _depth + 1) for k, v in value.items()}
        if isinstance(value, tuple):
            return tuple(self.redact_value(item, _depth + 1) for item in value)
        if isinstance(value, (list, set, frozenset)):
            return [self.redact_value(item, _depth + 1) for item in value]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return self.redact_value(fields, _depth)
        return value

    def _redact_item(self, key: object, value: object, depth: int) -> object:
        if self.is_sensitive_key(key):
            return self.replacement
        return self.redact_value(value, depth)

    def _may_match(self, text: str) -> bool:
        """Cheap necessary conditions for the shape pattern, checked without the regex engine."""
        folded = text.casefold()
        if any(map(folded.__contains__, self._fragments)):
            return True
        digits = text.encode("utf-8", "surrogatepass").translate(_DIGITS_AS_ZERO, b" -")
        return _CARD_TRIGGER in digits

    def _replace_shape(self, match: re.Match[str]) -> str:
        kind = match.lastgroup
        if kind == "value":
            value = match["value"]
            quote = value[0] if value[0] in "\"'" else ""
            return f"{match['key']}{match['sep']}{quote}{self.replacement}{quote}"
        if kind == "password":
            return f"{match['userinfo']}{self.replacement}@"
        if kind == "card" and not _has_card(match["card"]):
            return match["card"]
        return self.replacement


def _normalize(key: str) -> str:
    return _SEPARATORS.sub("", key.casefold())


def _key_regex(name: str) -> str:
    """Match a key name written with any of the usual separators, or none."""
    parts = [re.escape(part) for part in _SEPARATORS.split(name.casefold()) if part]
    return r"[-_. ]?".join(parts)


def _text_fragments(names: Iterable[str]) -> tuple[str, ...]:
    """
    List the substrings one of which any shape match must contain (after casefolding).

    Multi-word key names appear in every separator spelling; fragments that contain
    a shorter fragment are dropped, as the shorter one already triggers.
    """
    fragments = {"eyj", "bearer", "://"}
    for name in names:
        parts = [part for part in _SEPARATORS.split(name.casefold()) if part]
        fragments.update(sep.join(parts) for sep in ("", "-", "_", ".", " "))
    fragments.discard("")
    return tuple(sorted(f for f in fragments if not any(o != f and o in f for o in fragments)))


def _shape_pattern(names: Iterable[str]) -> Pattern[str]:
    """Build the one regex that finds every built-in secret shape in a string."""
    alternatives = sorted(filter(None, map(_key_regex, names)), key=len, reverse=True)
    keys = "|".join(alternatives) or "(?!)"  # no key names: a branch that never matches
    return re.compile(
        r"(?P<jwt>(?-i:eyJ)[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)"
        r"|(?P<bearer>bearer\s+[A-Za-z0-9._~+/-]{8,}=*)"
        r"|(?P<userinfo>://[^\s:/@]+:)(?P<password>[^\s@/]+)@"
        r"|(?P<card>(?<![0-9])[0-9](?:[ -]?[0-9]){12,}(?![0-9]))"
        rf"|(?P<key>(?:{keys})[\w.-]*)(?P<sep>[\"']?\s*[:=]\s*)"
        rf"(?P<value>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"
        rf"|(?:(?:{_AUTH_SCHEMES})\s+)?[^\s,;&\"'}})\]]+)",
        re.IGNORECASE,
    )


def _has_card(run: str) -> bool:
    """
    Tell whether a run of digit groups holds a Luhn-valid number of 13 to 19 digits.

    Every window of whole groups is tried, so a card written right after another
    number ("order 1234 4111 1111 1111 1111") is still found.
    """
    groups = re.split(r"[ -]", run)
    for start in range(len(groups)):
        digits = ""
        for group in groups[start:]:
            digits += group
            if len(digits) > _CARD_DIGITS[-1]:
                break
            if len(digits) in _CARD_DIGITS and luhn_valid(digits):
                return True
    return False


def _looks_like_card(value: int) -> bool:
    return value in _CARD_INTS and luhn_valid(str(value))


_DEFAULT = Redactor()


def redact(value: object) -> object:
    """
    Redact a value with the default policy (`DEFAULT_KEYS` and the built-in shapes).

    Args:
        value: Any value; see `Redactor.redact_value`.

    Returns:
        The redacted value.
    """
    return _DEFAULT.redact_value(value)


def redact_text(text: str) -> str:
    """
    Redact free text with the default policy.

    Args:
        text: Any string.

    Returns:
        The text with secrets replaced.
    """
    return _DEFAULT.redact_text(text)
