"""Tests for whodunit.redact: keys, nested values, secret shapes in text, card numbers."""

from __future__ import annotations

import dataclasses
import re

import pytest

from whodunit.redact import REDACTED, Redactor, luhn_valid, redact, redact_text

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
VISA = "4111111111111111"  # a well-known test card number: passes Luhn
ORDER_ID = "4111111111111112"  # 16 digits failing Luhn, like most order ids


class TestKeys:
    """Values under sensitive keys are replaced whatever they are."""

    @pytest.mark.parametrize(
        "key",
        [
            "password",
            "PASSWORD",
            "db_password",
            "passwd",
            "secret",
            "client_secret",
            "token",
            "access_token",
            "refresh_token",
            "Authorization",
            "cookie",
            "Set-Cookie",
            "api_key",
            "apikey",
            "X-Api-Key",
            "apiKey",
            "private_key",
            "session",
            "sessionid",
        ],
    )
    def test_sensitive_key(self, key: str) -> None:
        """Keys containing a sensitive name, in any case or spelling, are redacted."""
        assert {key: REDACTED} == redact({key: "value-123"})

    @pytest.mark.parametrize("key", ["user", "path", "order_id", "method", "keyboard"])
    def test_ordinary_key(self, key: str) -> None:
        """Other keys keep their values."""
        assert {key: "value"} == redact({key: "value"})

    def test_whole_value_replaced(self) -> None:
        """A container under a sensitive key is replaced as a whole."""
        assert {"credentials": {"a": 1}, "secrets": REDACTED} == redact(
            {"credentials": {"a": 1}, "secrets": {"a": 1}}
        )

    def test_non_string_keys(self) -> None:
        """Non-string keys are never sensitive and are kept."""
        assert {1: "one", None: "none"} == redact({1: "one", None: "none"})

    def test_extra_keys(self) -> None:
        """extra_keys adds names to the defaults."""
        redactor = Redactor(extra_keys=["pin"])

        assert {"PIN_code": REDACTED, "password": REDACTED} == redactor.redact_value(
            {"PIN_code": "1234", "password": "x"}
        )

    def test_no_keys(self) -> None:
        """With no key names, only the shapes are redacted."""
        redactor = Redactor(keys=[])

        assert f"password=x a=b {REDACTED}" == redactor.redact_text(f"password=x a=b {JWT}")

    def test_replace_keys(self) -> None:
        """keys= replaces the defaults, so a name can be un-redacted."""
        redactor = Redactor(keys=["password"])

        assert {"session_id": "s-1", "password": REDACTED} == redactor.redact_value(
            {"session_id": "s-1", "password": "x"}
        )


class TestNested:
    """Redaction walks into containers and keeps their shape."""

    def test_nested_dicts_and_lists(self) -> None:
        """Sensitive keys are found at any depth, inside lists and tuples too."""
        value = {"user": {"name": "ann", "auth": [{"token": "t1"}, ("x", {"secret": "s"})]}}

        expected = {
            "user": {"name": "ann", "auth": [{"token": REDACTED}, ("x", {"secret": REDACTED})]}
        }
        assert expected == redact(value)

    def test_text_inside_containers(self) -> None:
        """Strings inside containers are scanned for secret shapes."""
        assert [f"auth {REDACTED}"] == redact([f"auth {JWT}"])

    def test_sets_become_lists(self) -> None:
        """Sets come back as lists, which JSON can hold."""
        assert [REDACTED] == redact({JWT})

    def test_dataclass(self) -> None:
        """A dataclass is redacted as the dict of its fields."""

        @dataclasses.dataclass
        class Login:
            user: str
            password: str

        assert {"user": "ann", "password": REDACTED} == redact(Login("ann", "hunter2"))

    def test_cycle_is_cut(self) -> None:
        """A self-referencing list ends in a marker instead of recursing forever."""
        loop: list[object] = []
        loop.append(loop)

        depth, value = 0, redact(loop)
        while isinstance(value, list):
            depth, value = depth + 1, value[0]

        assert (32, "[TOO DEEP]") == (depth, value)

    def test_other_values_untouched(self) -> None:
        """Numbers, booleans and None come back as they are."""
        assert [1, 2.5, True, None] == redact([1, 2.5, True, None])


class TestText:
    """Secret shapes inside free text."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (f"Authorization: Bearer {JWT}", f"Authorization: {REDACTED}"),
            ("auth bearer abcdef0123456789", f"auth {REDACTED}"),
            (f"jwt={JWT}", f"jwt={REDACTED}"),
            (f"cookie {JWT} set", f"cookie {REDACTED} set"),
            ("login password=hunter2 ok", f"login password={REDACTED} ok"),
            ("db_password: hunter2", f"db_password: {REDACTED}"),
            ('{"api_key": "k-1", "user": "ann"}', f'{{"api_key": "{REDACTED}", "user": "ann"}}'),
            ("{'token': 'abc'}", f"{{'token': '{REDACTED}'}}"),
            ("X-Api-Key: k-123", f"X-Api-Key: {REDACTED}"),
            ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: {REDACTED}"),
            ("?client_secret=abc&x=1", f"?client_secret={REDACTED}&x=1"),
            ("postgresql://app:s3cret@db:5432/shop", f"postgresql://app:{REDACTED}@db:5432/shop"),
        ],
    )
    def test_secret_shapes(self, text: str, expected: str) -> None:
        """Each shape of secret is replaced, and only the secret part."""
        assert expected == redact_text(text)

    @pytest.mark.parametrize(
        "text",
        [
            "request handled",
            "GET /api/orders/12345 -> 200 in 12.3 ms from 203.0.113.9",
            "the bearer of news",
            "session started",
            "https://example.com/path",
            "2026-11-28T01:02:03.123456Z",
        ],
    )
    def test_clean_text_unchanged(self, text: str) -> None:
        """Text without secrets comes back as the very same object."""
        assert text is redact_text(text)

    def test_repeated_text(self) -> None:
        """Asking twice gives the same answer (the clean-text cache is consistent)."""
        texts = ["clean one", "password=x", "clean one", "password=x"]

        assert ["clean one", f"password={REDACTED}"] * 2 == [redact_text(t) for t in texts]

    def test_extra_patterns(self) -> None:
        """Extra patterns, as strings or compiled, replace their whole match."""
        redactor = Redactor(extra_patterns=[r"TK-\d+", re.compile(r"(?i)internal-\w+")])

        assert f"{REDACTED} and {REDACTED}" == redactor.redact_text("TK-42 and Internal-Ref")

    def test_replacement(self) -> None:
        """The marker can be changed."""
        assert "password=***" == Redactor(replacement="***").redact_text("password=x")

    def test_non_ascii_text(self) -> None:
        """Text with non-ASCII characters is scanned too."""
        assert f"mot de passe password={REDACTED} é" == redact_text("mot de passe password=ü1 é")


class TestCards:
    """Card numbers: 13 to 19 digits that pass the Luhn check."""

    @pytest.mark.parametrize(
        "text",
        [
            VISA,
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "3782 822463 10005",  # 15-digit test number in the 4-6-5 grouping
            "6011000990139424",
        ],
    )
    def test_card_in_text(self, text: str) -> None:
        """A Luhn-valid number, grouped or not, is redacted."""
        assert f"paid with {REDACTED}." == redact_text(f"paid with {text}.")

    def test_order_id_failing_luhn_kept(self) -> None:
        """A 16-digit number that fails the Luhn check is not a card and is kept."""
        assert f"order {ORDER_ID}" == redact_text(f"order {ORDER_ID}")

    def test_longer_numbers_kept(self) -> None:
        """A run of more than 19 digits is not a card."""
        text = f"id {VISA}0000"

        assert text == redact_text(text)

    def test_card_after_another_number(self) -> None:
        """A card written right after another number is still found."""
        assert f"ref {REDACTED}" == redact_text("ref 12 4111 1111 1111 1111")

    def test_card_as_integer(self) -> None:
        """An integer value that is a card number is redacted; other integers are kept."""
        assert [REDACTED, int(ORDER_ID), 12] == redact([int(VISA), int(ORDER_ID), 12])

    @pytest.mark.parametrize(
        ("digits", "expected"),
        [(VISA, True), (ORDER_ID, False), ("79927398713", True), ("79927398710", False)],
    )
    def test_luhn(self, digits: str, expected: bool) -> None:
        """The Luhn check gives the textbook answers."""
        assert expected == luhn_valid(digits)


class TestRedactor:
    """The Redactor object itself."""

    def test_is_sensitive_key(self) -> None:
        """is_sensitive_key answers for strings and refuses other types."""
        redactor = Redactor()

        assert [True, False, False] == [
            redactor.is_sensitive_key(k) for k in ("Refresh-Token", "name", 3)
        ]

    def test_redact_fields_keeps_order(self) -> None:
        """redact_fields keeps the keys in order."""
        fields = {"b": 1, "token": "t", "a": "x"}

        assert ["b", "token", "a"] == list(Redactor().redact_fields(fields))
