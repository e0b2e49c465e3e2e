"""Notifiers, their settings and the app helpers, against local fake receivers."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import pickle
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.receivers import (
    DISCORD_PATH,
    Answer,
    FakeAlertmanager,
    FakeDiscord,
    FakeWebhook,
    SmtpServer,
    discord_problem,
)
from whodunit import notify
from whodunit.errors import ConfigError
from whodunit.watch.alert import Alert, Category, Severity
from whodunit.watch.notifiers import (
    AlertmanagerNotifier,
    DiscordNotifier,
    EmailNotifier,
    Notice,
    NotifierError,
    WebhookNotifier,
    build_notifiers,
    deliver,
    load,
)
from whodunit.watch.notifiers.settings import DiscordSettings, NotifySettings, Secret
from whodunit.watch.notifiers.webhook import signature

TOKEN = DISCORD_PATH.rsplit("/", 1)[1]
AT = datetime(2026, 11, 28, 3, 14, tzinfo=UTC)


def alert(
    key: str = "mass_delete:stmt:1",
    severity: Severity = Severity.CRITICAL,
    category: Category = Category.DATABASE,
    **changes: Any,
) -> Alert:
    values: dict[str, Any] = {
        "rule": "mass_delete",
        "title": "player7 deleted 1,204 rows from public.User",
        "summary": "One DELETE without a WHERE clause, from psql, at 03:14 UTC.",
        "at": AT,
        "evidence": {"actor": "player7", "table": "public.User", "rows": "1,204"},
        "investigate": "whodunit investigate --since 1h --table User",
        "statement_ids": (1,),
    }
    return Alert(key=key, severity=severity, category=category, **{**values, **changes})


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


@pytest.fixture
def discord(fake_discord: FakeDiscord) -> Iterator[DiscordNotifier]:
    notifier = DiscordNotifier(fake_discord.url, timeout=2.0)
    yield notifier
    notifier.close()


class TestDiscordLimits:
    def test_over_limit_alert_is_cut_and_accepted(
        self, fake_discord: FakeDiscord, discord: DiscordNotifier
    ) -> None:
        """An alert over every limit is cut to fit, and the validating fake takes it."""
        huge = alert(
            title="T" * 1000,
            summary="S" * 10_000,
            evidence={f"fact {i} " + "n" * 50: "v" * 3000 for i in range(40)},
            investigate="whodunit investigate " + "x" * 3000,
            statement_ids=tuple(range(2000)),
        )
        discord.send([Notice(huge, count=12, last_at=AT + timedelta(minutes=5))])
        embed = fake_discord.messages[0]["embeds"][0]
        assert ["mass_delete:stmt:1"] == fake_discord.keys
        assert "x12 in 5 min" in embed["fields"][0]["value"]
        assert len(embed["fields"]) > 10  # evidence kept, a few lines each
        assert embed["title"].endswith("\N{HORIZONTAL ELLIPSIS}")

    def test_wide_characters_count_twice(self, discord: DiscordNotifier) -> None:
        """Characters outside the BMP are counted as Discord's clients count them."""
        payload = discord.render([Notice(alert(title="\N{PILE OF POO}" * 300))])[0]
        assert discord_problem(payload) is None
        assert 256 >= len(payload["embeds"][0]["title"].encode("utf-16-le")) // 2

    def test_many_notices_split_across_messages(
        self, fake_discord: FakeDiscord, discord: DiscordNotifier
    ) -> None:
        """More than 10 embeds, or 6000 characters, go as several valid messages."""
        notices = [Notice(alert(f"k{i}", summary="s" * 1500)) for i in range(23)]
        discord.send(notices)
        assert [f"k{i}" for i in range(23)] == fake_discord.keys
        assert all(len(m["embeds"]) <= 10 for m in fake_discord.messages)
        assert len(fake_discord.messages) > 3  # 1500-character summaries: four per message

    def test_empty_evidence_values_are_filled(self, discord: DiscordNotifier) -> None:
        """Discord refuses an empty field value, so one never goes out empty."""
        payload = discord.render([Notice(alert(evidence={"client": ""}))])[0]
        assert discord_problem(payload) is None


class TestDiscordMentions:
    @pytest.mark.parametrize(
        ("severity", "category", "content", "parse"),
        [
            (Severity.CRITICAL, Category.DATABASE, "@everyone", ["everyone"]),
            (Severity.WARNING, Category.SECURITY, "@here", ["everyone"]),
            (Severity.WARNING, Category.DATABASE, None, []),
            (Severity.WARNING, Category.PERFORMANCE, None, []),
            (Severity.INFO, Category.SUCCESS, None, []),
        ],
    )
    def test_mention_by_severity_and_category(
        self,
        discord: DiscordNotifier,
        severity: Severity,
        category: Category,
        content: str | None,
        parse: list[str],
    ) -> None:
        """Critical pings everyone, security here, the rest nobody; always explicitly."""
        payload = discord.render([Notice(alert(severity=severity, category=category))])[0]
        assert (content, {"parse": parse}) == (payload.get("content"), payload["allowed_mentions"])

    def test_mentions_in_alert_text_never_ping(self, discord: DiscordNotifier) -> None:
        """An actor named '@everyone' in a warning's text pings nobody."""
        noisy = alert(severity=Severity.WARNING, title="@everyone deleted rows")
        assert {"parse": []} == discord.render([Notice(noisy)])[0]["allowed_mentions"]

    def test_role_mention(self, fake_discord: FakeDiscord) -> None:
        """A role as mention_critical is allowed to ping by id, and nothing else is."""
        with DiscordNotifier(fake_discord.url, mention_critical="<@&42>") as notifier:
            payload = notifier.render([Notice(alert())])[0]
        assert ("<@&42>", {"parse": [], "roles": ["42"]}) == (
            payload["content"],
            payload["allowed_mentions"],
        )


class TestDiscordDelivery:
    def test_429_waits_retry_after(
        self, fake_discord: FakeDiscord, discord: DiscordNotifier
    ) -> None:
        """After a 429 the next attempt comes no sooner than its retry_after."""
        fake_discord.answer(fake_discord.rate_limit(0.3))
        assert 2 == deliver(lambda: discord.send([Notice(alert())]), deadline=soon())
        first, second = fake_discord.requests
        assert (429, 200) == (first.status, second.status)
        assert second.at - first.at >= 0.3

    def test_exhausted_bucket_waits_for_reset(
        self, fake_discord: FakeDiscord, discord: DiscordNotifier
    ) -> None:
        """X-RateLimit-Remaining 0 holds the next request until Reset-After, without a 429."""
        fake_discord.remaining, fake_discord.reset_after = 0, 0.3
        for key in ("a", "b"):
            deliver(functools.partial(discord.send, [Notice(alert(key))]), deadline=soon())
        first, second = fake_discord.requests
        assert [200, 200] == [first.status, second.status]
        assert second.at - first.at >= 0.3

    def test_5xx_retried(self, fake_discord: FakeDiscord, discord: DiscordNotifier) -> None:
        """500 and 502 are retried until Discord takes the message."""
        fake_discord.answer(Answer(500), Answer(502))
        assert 3 == deliver(lambda: discord.send([Notice(alert())]), deadline=soon(), backoff=0.01)
        assert ["mass_delete:stmt:1"] == fake_discord.keys

    def test_400_never_retried(self, fake_discord: FakeDiscord, discord: DiscordNotifier) -> None:
        """A 400 is permanent: one request, and the error says so."""
        fake_discord.answer(Answer(400, {"message": "Invalid Form Body", "code": 50035}))
        with pytest.raises(NotifierError) as caught:
            deliver(lambda: discord.send([Notice(alert())]), deadline=soon(), backoff=0.01)
        assert (False, 1) == (caught.value.retryable, len(fake_discord.requests))
        assert "400" in str(caught.value)

    def test_hanging_receiver_times_out_and_is_retried(self, fake_discord: FakeDiscord) -> None:
        """No answer within the timeout is a retryable failure; the retry gets through."""
        fake_discord.answer(Answer(hang=True))
        with DiscordNotifier(fake_discord.url, timeout=0.2) as notifier:
            deliver(lambda: notifier.send([Notice(alert())]), deadline=soon(), backoff=0.01)
        assert [0, 200] == [request.status for request in fake_discord.requests]

    def test_deadline_bounds_retries(
        self, fake_discord: FakeDiscord, discord: DiscordNotifier
    ) -> None:
        """A 429 asking for longer than the deadline leaves is raised, not slept through."""
        fake_discord.answer(fake_discord.rate_limit(30.0))
        started = time.monotonic()
        with pytest.raises(NotifierError) as caught:
            deliver(lambda: discord.send([Notice(alert())]), deadline=soon(1.0))
        assert (True, 30.0) == (caught.value.retryable, caught.value.retry_after)
        assert time.monotonic() - started < 1.0


class TestSecrets:
    def test_token_never_in_repr_errors_or_logs(
        self, fake_discord: FakeDiscord, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The webhook token appears in no repr, error message, traceback or log record."""
        caplog.set_level(logging.DEBUG)
        fake_discord.answer(Answer(500, {"message": f"upstream {fake_discord.url} failed"}))
        with DiscordNotifier(fake_discord.url) as notifier:
            with pytest.raises(NotifierError) as server_error:
                notifier.send([Notice(alert())])
            notifier.send([Notice(alert())])
            fake_discord.stop()
            with pytest.raises(NotifierError) as unreachable:
                notifier.send([Notice(alert())])
            shown = [repr(notifier), str(server_error.value), str(unreachable.value)]
        shown.append(repr(NotifySettings(discord=DiscordSettings(Secret(fake_discord.url)))))
        assert [] == [text for text in [*shown, caplog.text] if TOKEN in text]
        assert "HTTP Request: POST" in caplog.text  # httpx still logs, with the URL masked

    def test_error_pickles(self) -> None:
        """A NotifierError survives pickling with its flags (the daemon may fork)."""
        pickled = pickle.dumps(NotifierError("discord: 429", True, 1.5))
        error = pickle.loads(pickled)  # noqa: S301 - bytes made on the line above
        assert ("discord: 429", True, 1.5) == (str(error), error.retryable, error.retry_after)


class TestEmail:
    def test_plain_smtp_sends_text_and_html(self, smtp_server: SmtpServer) -> None:
        """Without STARTTLS, the mail arrives with a text part and an HTML alternative."""
        notifier = EmailNotifier(
            "127.0.0.1", port=smtp_server.port, starttls=False,
            sender="whodunit@example.com", to=["oncall@example.com"],
        )  # fmt: skip
        notifier.send([Notice(alert(summary="<script>x</script>"))])
        message = smtp_server.messages[0]
        text, html = (message.get_body(p) for p in ("plain", "html"))
        assert text is not None
        assert html is not None
        assert "player7 deleted 1,204 rows" in message["Subject"]
        assert "<script>x</script>" in text.get_content()
        assert "&lt;script&gt;" in html.get_content()
        assert ("mass_delete:stmt:1", [False]) == (
            message["X-Whodunit-Alert-Key"],
            smtp_server.starttls_used,
        )

    def test_starttls(self, smtp_tls_server: SmtpServer, tls_files: tuple[Path, Path]) -> None:
        """With STARTTLS the mail goes over TLS, trusting the configured CA file."""
        notifier = EmailNotifier(
            "127.0.0.1", port=smtp_tls_server.port, sender="whodunit@example.com",
            to=["oncall@example.com"], ca_file=str(tls_files[0]),
        )  # fmt: skip
        notifier.send([Notice(alert())])
        assert [True] == smtp_tls_server.starttls_used
        assert smtp_tls_server.messages[0].get_body(("html",)) is not None

    def test_server_requiring_starttls_is_a_retryable_failure(
        self, smtp_tls_server: SmtpServer
    ) -> None:
        """A server demanding STARTTLS from a client without it is a setting to fix: retried."""
        notifier = EmailNotifier(
            "127.0.0.1", port=smtp_tls_server.port, starttls=False,
            sender="whodunit@example.com", to=["oncall@example.com"],
        )  # fmt: skip
        with pytest.raises(NotifierError) as caught:
            notifier.send([Notice(alert())])
        assert caught.value.retryable

    def test_password_in_clear_refused(self) -> None:
        """A password without STARTTLS to a remote host is refused at start-up."""
        with pytest.raises(ConfigError, match="clear text"):
            EmailNotifier(
                "smtp.example.com", starttls=False, username="u", password="p",
                sender="a@example.com", to=["b@example.com"],
            )  # fmt: skip


class TestWebhook:
    def test_signed_json_with_key(self, fake_webhook: FakeWebhook) -> None:
        """The body is the alert; the HMAC over timestamp and body verifies with the secret."""
        with WebhookNotifier(fake_webhook.url, secret="hush") as notifier:
            notifier.send([Notice(alert(), count=3, last_at=AT + timedelta(seconds=40))])
        request = fake_webhook.requests[0]
        headers = request.headers
        expected = (
            "sha256="
            + hmac.new(
                b"hush",
                headers["X-Whodunit-Timestamp"].encode() + b"." + request.body,
                hashlib.sha256,
            ).hexdigest()
        )
        assert expected == headers["X-Whodunit-Signature"]
        assert expected == signature("hush", headers["X-Whodunit-Timestamp"], request.body)
        body = fake_webhook.bodies[0]
        assert ("mass_delete:stmt:1", "critical", 3) == (
            body["key"],
            body["severity"],
            body["count"],
        )
        assert "mass_delete:stmt:1" == headers["Idempotency-Key"]

    def test_retry_after_header_honoured(self, fake_webhook: FakeWebhook) -> None:
        """A 503 with Retry-After is retried no sooner than it asks."""
        fake_webhook.answer(Answer(503, headers={"Retry-After": "1"}))
        with WebhookNotifier(fake_webhook.url) as notifier:
            deliver(lambda: notifier.send([Notice(alert())]), deadline=soon())
        first, second = fake_webhook.requests
        assert second.at - first.at >= 1.0


class TestAlertmanager:
    def test_payload_matches_api(self, fake_alertmanager: FakeAlertmanager) -> None:
        """The alerts pass the API's schema check and carry labels, annotations, startsAt."""
        with AlertmanagerNotifier(
            fake_alertmanager.base_url, generator_url="https://console.example/alerts"
        ) as notifier:
            notifier.send([Notice(alert()), Notice(alert("k2", severity=Severity.WARNING))])
        first = fake_alertmanager.alerts[0]
        assert {
            "alertname": "WhodunitMassDelete",
            "severity": "critical",
            "category": "database",
            "rule": "mass_delete",
            "alert_key": "mass_delete:stmt:1",
            "source": "whodunit",
            "table": "public.User",
            "actor": "player7",
        } == first["labels"]
        assert AT == datetime.fromisoformat(first["startsAt"])
        assert "whodunit investigate" in first["annotations"]["investigate"]
        assert first["generatorURL"].endswith("?key=mass_delete%3Astmt%3A1")
        assert "endsAt" not in first

    def test_refusal_is_permanent(self, fake_alertmanager: FakeAlertmanager) -> None:
        """A 400 from Alertmanager is not retried."""
        fake_alertmanager.answer(Answer(400, {"message": "bad"}))
        with (
            AlertmanagerNotifier(fake_alertmanager.base_url) as notifier,
            pytest.raises(NotifierError) as caught,
        ):
            notifier.send([Notice(alert())])
        assert not caught.value.retryable


class TestSettings:
    def test_file_environment_and_secret_file(self, tmp_path: Path) -> None:
        """The environment wins key by key; a *_file key reads the secret from a file."""
        secret = tmp_path / "hook"
        secret.write_text("https://discord.com/api/webhooks/1/abc\n")
        config = tmp_path / "whodunit.toml"
        config.write_text(
            f'dsn = "postgresql:///x"\n[discord]\nwebhook_url_file = "{secret}"\n'
            'mention_security = ""\n[smtp]\nhost = "smtp.example.com"\n'
            'from = "w@example.com"\nto = ["a@example.com"]\n[watch]\nanything = 1\n'
        )
        settings = load(config, environ={"WHODUNIT_SMTP_TO": "b@example.com, c@example.com",
                                         "WHODUNIT_SMTP_PORT": "2525"})  # fmt: skip
        assert "https://discord.com/api/webhooks/1/abc" == settings.discord.webhook_url.reveal()  # type: ignore[union-attr]
        assert ("", ("b@example.com", "c@example.com"), 2525) == (
            settings.discord.mention_security,
            settings.smtp.to,
            settings.smtp.port,
        )
        assert ("discord", "email") == settings.channels
        assert "abc" not in repr(settings)

    @pytest.mark.parametrize(
        ("environ", "message"),
        [
            ({"WHODUNIT_DISCORD_WEBHOOK_URL": "http://discord.example/api/webhooks/1/t"},
             r"discord\.webhook_url \(WHODUNIT_DISCORD_WEBHOOK_URL\) must use https"),
            ({"WHODUNIT_WEBHOOK_URL": "ftp://example.com/x"}, r"webhook\.url .* https URL"),
            ({"WHODUNIT_DISCORD_WEBHOOK": "x"}, r"unknown setting discord\.webhook in"),
            ({"WHODUNIT_DISCORD_MENTION_CRITICAL": "everyone"}, r"mention_critical .* must be"),
            ({"WHODUNIT_DISCORD_USERNAME": "Discord bot"}, r"discord\.username"),
            ({"WHODUNIT_SMTP_HOST": "smtp.example.com"}, r"smtp\.from .* is not set"),
            ({"WHODUNIT_SMTP_STARTTLS": "maybe"}, r"smtp\.starttls .* true or false"),
            ({"WHODUNIT_RELAY_LISTEN": "0.0.0.0"}, r"relay\.token_file"),  # noqa: S104
            ({"WHODUNIT_OUTBOX_GROUP_WINDOW": "-1"}, r"outbox\.group_window"),
            ({"WHODUNIT_WEBHOOK_SECRET_FILE": "/nonexistent/secret"}, r"cannot read"),
            ({"WHODUNIT_DISCORD_MIN_SEVERITY": "loud"}, r"one of critical, warning, info"),
        ],
    )  # fmt: skip
    def test_bad_settings_fail_at_load(self, environ: dict[str, str], message: str) -> None:
        """Each bad value is a ConfigError naming the setting, at load time."""
        with pytest.raises(ConfigError, match=message) as caught:
            load(None, environ=environ)
        assert "/t" not in str(caught.value)  # the token part of a URL is never shown

    def test_unknown_or_unconfigured_receiver(self) -> None:
        """Naming a receiver that does not exist, or is not set up, fails clearly."""
        settings = load(None, environ={})
        with pytest.raises(ConfigError, match="unknown receiver 'slack'"):
            build_notifiers(settings, ["slack"])
        with pytest.raises(ConfigError, match=r"set discord\.webhook_url"):
            build_notifiers(settings, ["discord"])

    def test_min_severity_routes(self) -> None:
        """Email takes warnings and up by default; the others take everything."""
        settings = load(None, environ={
            "WHODUNIT_DISCORD_WEBHOOK_URL": "https://discord.com/api/webhooks/1/t",
            "WHODUNIT_SMTP_HOST": "localhost", "WHODUNIT_SMTP_FROM": "a@example.com",
            "WHODUNIT_SMTP_TO": "b@example.com",
        })  # fmt: skip
        assert {"discord": Severity.INFO, "email": Severity.WARNING} == settings.routes()


@pytest.fixture
def helpers(fake_discord: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> FakeDiscord:
    """The app helpers configured to send to the fake Discord."""
    monkeypatch.setattr(notify, "_channels", None)
    notify.configure(NotifySettings(discord=DiscordSettings(Secret(fake_discord.url))), deadline=3)
    return fake_discord


class TestHelpers:
    def test_critical_alert_pings_everyone(self, helpers: FakeDiscord) -> None:
        """send_critical_alert posts a red embed with @everyone and the fields given."""
        result = notify.send_critical_alert(
            "Payments failing", "Every charge fails since 03:14.", key="pay:1", provider="acme"
        )
        message = helpers.messages[0]
        assert (True, ("discord",), "@everyone") == (
            result.ok,
            result.delivered,
            message["content"],
        )
        assert {"name": "provider", "value": "acme", "inline": True} in message["embeds"][0][
            "fields"
        ]

    @pytest.mark.parametrize(
        ("send", "content"),
        [
            (notify.send_security_alert, "@here"),
            (notify.send_database_alert, None),
            (notify.send_performance_alert, None),
            (notify.send_success_notification, None),
        ],
    )
    def test_other_helpers(self, helpers: FakeDiscord, send: Any, content: str | None) -> None:
        """Each helper sends one embed, pinging only for security."""
        assert send("Title", "Message").ok
        assert content == helpers.messages[0].get("content")

    def test_secret_fields_redacted(self, helpers: FakeDiscord) -> None:
        """A field named like a secret, or text shaped like one, never leaves."""
        notify.send_database_alert(
            "Backup failed", "pg_dump postgresql://backup:hunter2@db/app failed",
            password="hunter2", api_key="sk_live_abc",
        )  # fmt: skip
        assert "hunter2" not in str(helpers.messages[0])
        assert "sk_live_abc" not in str(helpers.messages[0])

    def test_failure_reported_not_raised(self, helpers: FakeDiscord) -> None:
        """A receiver that keeps failing past the deadline gives a failed result."""
        helpers.answer(*[Answer(500)] * 50)
        result = notify.send_performance_alert("Slow", "p95 at 4 s", deadline=0.3)
        assert not result.ok
        assert "500" in result.failed["discord"]

    def test_nothing_configured(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without any channel, the first call says what to set."""
        monkeypatch.setattr(notify, "_channels", None)
        for name in ("WHODUNIT_CONFIG", "WHODUNIT_DISCORD_WEBHOOK_URL"):
            monkeypatch.delenv(name, raising=False)
        with pytest.raises(ConfigError, match="WHODUNIT_DISCORD_WEBHOOK_URL"):
            notify.send_critical_alert("x", "y")
