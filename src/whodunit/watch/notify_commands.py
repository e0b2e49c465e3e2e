"""
``whodunit relay``: the Alertmanager-to-Discord relay (`whodunit.watch.relay`) as a command.

Added to the ``whodunit`` group in `whodunit.cli`.
"""

from __future__ import annotations

import signal
import threading

import click

from whodunit._clikit import CLIState, error_console, handle_errors

__all__ = ["relay"]


@click.command("relay", short_help="Forward Alertmanager's webhooks to Discord, with pings.")
@click.option(
    "--listen",
    envvar="WHODUNIT_RELAY_LISTEN",
    help="Address to listen on [env: WHODUNIT_RELAY_LISTEN]; default: relay.listen of the "
    "settings, else 127.0.0.1. Beyond loopback, relay.token_file is required.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    envvar="WHODUNIT_RELAY_PORT",
    help="Port [env: WHODUNIT_RELAY_PORT]; default: relay.port of the settings, else 9095.",
)
@handle_errors
def relay(listen: str | None, port: int | None) -> None:
    """
    Serve POST /alertmanager for Alertmanager's webhook_configs and post each alert to the
    Discord webhook of the settings ([discord] / WHODUNIT_DISCORD_WEBHOOK_URL): critical
    alerts ping @everyone, security alerts @here, as Alertmanager 0.25 cannot. Discord's
    rate limits are waited out; Alertmanager retries what could not be sent (HTTP 503).
    Runs until interrupted (Ctrl-C, SIGTERM).

    \b
    Examples:
      WHODUNIT_DISCORD_WEBHOOK_URL=https://discord.com/api/webhooks/ID/TOKEN whodunit relay
      whodunit --config whodunit.toml relay --port 9095
    \b
    In alertmanager.yml:
      receivers:
        - name: discord
          webhook_configs:
            - url: http://127.0.0.1:9095/alertmanager
              send_resolved: true
    """
    from whodunit.watch.notifiers.discord import DiscordNotifier
    from whodunit.watch.notifiers.settings import build_notifiers, check_listen, load
    from whodunit.watch.relay import Relay

    state = click.get_current_context().find_object(CLIState)
    settings = load(state.config if state else None)
    host = listen or settings.relay.listen
    check_listen(host, settings.relay.token)
    discord = build_notifiers(settings, ["discord"])["discord"]
    assert isinstance(discord, DiscordNotifier)
    server = Relay(
        discord,
        host=host,
        port=settings.relay.port if port is None else port,
        token=settings.relay.token.reveal() if settings.relay.token else None,
        deadline=settings.relay.deadline,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    error_console.print(
        f"relaying {server.url} to {discord!r}; Ctrl-C stops", highlight=False, soft_wrap=True
    )
    try:
        stop.wait()
    finally:
        server.stop()
        discord.close()
