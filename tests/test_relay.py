"""``whodunit relay``: Alertmanager webhooks forwarded to a fake Discord."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.fixtures.receivers import (
    Answer,
    FakeDiscord,
)
from whodunit.watch.alert import Category, Severity
from whodunit.watch.notifiers import DiscordNotifier
from whodunit.watch.notify_commands import relay as relay_command
from whodunit.watch.relay import Relay, notices_from_alertmanager


def am_alert(name: str, severity: str, status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {
            "summary": f"{name} on db-1",
            "description": "More than 90 % of connections are in use.",
            "runbook_url": f"https://docs.example/runbook#{name.lower()}",
        },
        "startsAt": "2026-11-28T03:14:00.123456789Z",
        "endsAt": "2026-11-28T03:20:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": f"fp{name}",
    }


def webhook(*alerts: dict[str, Any], truncated: int = 0) -> dict[str, Any]:
    """An Alertmanager webhook body, version 4."""
    return {
        "version": "4",
        "groupKey": '{}:{alertname="x"}',
        "truncatedAlerts": truncated,
        "status": "firing",
        "receiver": "discord",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


@pytest.fixture
def relay(fake_discord: FakeDiscord) -> Iterator[Relay]:
    server = Relay(DiscordNotifier(fake_discord.url), port=0, token="am-token", deadline=3.0)
    server.start()
    yield server
    server.stop()


def post(relay: Relay, body: Any, token: str = "am-token") -> httpx.Response:  # noqa: S107
    return httpx.post(
        relay.url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


class TestForward:
    def test_critical_pings_everyone(self, relay: Relay, fake_discord: FakeDiscord) -> None:
        """A critical and a warning alert: one message, two embeds, @everyone allowed."""
        answer = post(
            relay, webhook(am_alert("PostgresDown", "critical"), am_alert("HighLatency", "warning"))
        )
        assert (200, {"messages": 1}) == (answer.status_code, answer.json())
        message = fake_discord.messages[0]
        assert ("@everyone", {"parse": ["everyone"]}) == (
            message["content"],
            message["allowed_mentions"],
        )
        titles = [embed["title"] for embed in message["embeds"]]
        assert ["PostgresDown on db-1", "HighLatency on db-1"] == [
            t.split(" ", 1)[1] for t in titles
        ]

    def test_security_category_pings_here(self, relay: Relay, fake_discord: FakeDiscord) -> None:
        """A warning labelled category=security pings @here."""
        post(relay, webhook(am_alert("BruteForce", "warning", category="security")))
        assert "@here" == fake_discord.messages[0]["content"]

    def test_rate_limit_waited_out(self, relay: Relay, fake_discord: FakeDiscord) -> None:
        """A 429 from Discord is waited out inside the request; Alertmanager sees 200."""
        fake_discord.answer(fake_discord.rate_limit(0.3))
        assert 200 == post(relay, webhook(am_alert("DiskFull", "critical"))).status_code
        first, second = fake_discord.requests
        assert second.at - first.at >= 0.3

    def test_discord_refusal_is_not_retried_by_alertmanager(
        self, relay: Relay, fake_discord: FakeDiscord
    ) -> None:
        """A Discord 400 becomes a 422, which Alertmanager does not retry."""
        fake_discord.answer(Answer(400, {"message": "Invalid Form Body"}))
        assert 422 == post(relay, webhook(am_alert("X", "critical"))).status_code
        assert 1 == len(fake_discord.requests)

    def test_discord_down_asks_for_a_retry(self, relay: Relay, fake_discord: FakeDiscord) -> None:
        """Discord failing past the deadline gives 503 with Retry-After: Alertmanager retries."""
        fake_discord.answer(fake_discord.rate_limit(10.0))
        answer = post(relay, webhook(am_alert("X", "critical")))
        assert (503, "10") == (answer.status_code, answer.headers["Retry-After"])

    @pytest.mark.parametrize(
        ("body", "token", "status"),
        [({"version": "3", "alerts": []}, "am-token", 400), ({"version": "4"}, "am-token", 400),
         (webhook(), "wrong", 401)],
    )  # fmt: skip
    def test_bad_requests(self, relay: Relay, body: Any, token: str, status: int) -> None:
        """Not a v4 payload: 400; a wrong token: 401."""
        assert status == post(relay, body, token).status_code

    def test_health(self, relay: Relay) -> None:
        """GET /healthz answers 200 for the service manager."""
        assert 200 == httpx.get(relay.url.replace("/alertmanager", "/healthz")).status_code


class TestConvert:
    def test_resolved_is_a_success_without_ping(self) -> None:
        """A resolved alert becomes a success notice, and its key differs from the firing one."""
        (firing,), _ = notices_from_alertmanager(webhook(am_alert("X", "critical")))
        (resolved,), _ = notices_from_alertmanager(webhook(am_alert("X", "critical", "resolved")))
        assert (Severity.INFO, Category.SUCCESS, "Resolved: X on db-1") == (
            resolved.alert.severity,
            resolved.alert.category,
            resolved.alert.title,
        )
        assert firing.alert.key != resolved.alert.key

    def test_labels_and_links_become_evidence(self) -> None:
        """Extra labels, the runbook and the source link are fields; truncation is counted."""
        (notice,), truncated = notices_from_alertmanager(
            webhook(am_alert("X", "warning", instance="db-1:9187"), truncated=3)
        )
        assert 3 == truncated
        assert {"instance", "Runbook", "Source"} == set(notice.alert.evidence)

    def test_truncation_noted(self, fake_discord: FakeDiscord) -> None:
        """Alerts Alertmanager left out are mentioned in the message."""
        notices, truncated = notices_from_alertmanager(
            webhook(am_alert("X", "warning"), truncated=3)
        )
        with DiscordNotifier(fake_discord.url) as notifier:
            payload = notifier.render(notices, note=f"(+{truncated} alerts left out)")[0]
        assert "(+3 alerts left out)" == payload["content"]


class TestCommand:
    def test_without_discord_fails_at_start(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No webhook configured: exit 2 and what to set, before listening."""
        monkeypatch.delenv("WHODUNIT_DISCORD_WEBHOOK_URL", raising=False)
        monkeypatch.delenv("WHODUNIT_CONFIG", raising=False)
        result = CliRunner().invoke(relay_command, ["--port", "0"])
        assert 2 == result.exit_code
        assert "discord.webhook_url" in result.output

    def test_public_address_needs_token(self, tmp_path: Path) -> None:
        """--listen 0.0.0.0 without a token is refused: anyone could ping everyone."""
        config = tmp_path / "whodunit.toml"
        config.write_text('[discord]\nwebhook_url = "https://discord.com/api/webhooks/1/t"\n')
        result = CliRunner().invoke(
            relay_command,
            ["--listen", "0.0.0.0"],  # noqa: S104 - refused, never bound, env={"WHODUNIT_CONFIG": str(config)}
        )
        assert 2 == result.exit_code
        assert "token_file" in result.output
