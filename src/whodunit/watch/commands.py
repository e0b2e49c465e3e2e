"""
The ``whodunit watch`` command; `whodunit.cli` adds `watch` to the ``whodunit`` group.

Everything beyond click is imported when the command runs, so ``whodunit --help`` stays
fast.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from pathlib import Path

import click

from whodunit._clikit import CLIState, dsn_option, error_console, handle_errors, json_option

__all__ = ["watch"]


@click.command("watch", short_help="Watch the trail live: detect incidents, alert, export metrics.")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="WHODUNIT_CONFIG",
    help="Settings file with [watch] and [detectors.*] [env: WHODUNIT_CONFIG].",
)
@dsn_option
@click.option(
    "--once",
    is_flag=True,
    help="Read what has committed, alert, checkpoint, and exit (cron, tests).",
)
@json_option
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    envvar="WHODUNIT_WATCH_METRICS_PORT",
    help="Serve /metrics on this port of [watch] metrics_address (127.0.0.1); 0: off "
    "[env: WHODUNIT_WATCH_METRICS_PORT; default 9849].",
)
@click.option(
    "--name",
    envvar="WHODUNIT_WATCH_NAME",
    help="The watcher's name: its checkpoint, and only one runs per name "
    "[env: WHODUNIT_WATCH_NAME; default: default].",
)
@handle_errors
def watch(
    config: Path | None,
    dsn: str | None,
    once: bool,
    as_json: bool,
    metrics_port: int | None,
    name: str | None,
) -> None:
    """
    Read the audit trail as it grows and raise an alert for each incident: mass DELETE
    or UPDATE, TRUNCATE, DROP, GRANT/REVOKE, a person at a console in production, brute
    force on the app's logins, a burst of app failures. NOTIFY wakes it within
    milliseconds of a destructive commit; it polls for the rest.

    It resumes from its checkpoint after a restart, never skipping a transaction that
    committed late, and reconnects by itself when PostgreSQL restarts. With a channel
    configured ([discord], [smtp], [webhook], [alertmanager]) alerts go through the
    durable outbox and are delivered by a thread of this process; without one they are
    logged as JSON lines on stderr (logger whodunit.watch.alerts). --json prints them on
    stdout instead. Stop it with SIGTERM or Ctrl-C.

    Connect as a superuser or as a role granted whodunit_watcher.

    \b
    Examples:
      whodunit watch --config whodunit.toml
      whodunit watch --once --json | jq -r .title      # from cron
      whodunit watch --name replica-check --metrics-port 0
      WHODUNIT_DETECTORS_MASS_DELETE_STATEMENT_ROWS=100 whodunit watch
    """
    from whodunit.db.connect import resolve_dsn
    from whodunit.log import configure_logging
    from whodunit.watch.alert import AlertSink
    from whodunit.watch.daemon import JsonLinesSink, LogSink, Watcher, metrics_for
    from whodunit.watch.notifiers.settings import build_notifiers
    from whodunit.watch.notifiers.settings import load as load_notify
    from whodunit.watch.outbox import Deliverer, OutboxSink
    from whodunit.watch.settings import load

    state = click.get_current_context().find_object(CLIState)
    settings = load(config or (state.config if state else None))
    w = settings.watch
    w = dataclasses.replace(
        w,
        name=w.name if name is None else name,
        metrics_port=w.metrics_port if metrics_port is None else metrics_port,
    )
    settings = dataclasses.replace(settings, dsn=dsn or settings.dsn, watch=w)
    if not logging.getLogger().handlers:  # the app's own logging, when there is one, wins
        configure_logging(stream=sys.stderr)
    logging.getLogger("whodunit.watch").setLevel(logging.INFO)
    notify = load_notify(config or (state.config if state else None))
    delivery: Deliverer | None = None
    deliverer: threading.Thread | None = None
    stop = threading.Event()
    if as_json:
        sink: AlertSink = JsonLinesSink(sys.stdout)
    elif notify.channels:
        target = resolve_dsn(settings.dsn)
        sink = OutboxSink(target, notify.routes())
        outbox = notify.outbox
        delivery = Deliverer(
            target,
            build_notifiers(notify),
            group_window=outbox.group_window,
            max_backoff=outbox.max_backoff,
            keep_days=outbox.keep_days,
        )
        if not once:
            deliverer = threading.Thread(
                target=delivery.run, args=(stop,), name="whodunit-deliverer", daemon=True
            )
            deliverer.start()
    else:
        sink = LogSink()
    metrics = metrics_for(settings)
    server = None
    if w.metrics_port and not once:
        server = metrics.serve(w.metrics_address, w.metrics_port)
        error_console.print(
            f"metrics on http://{w.metrics_address}:{w.metrics_port}/metrics", highlight=False
        )
    try:
        with Watcher(settings, sink, metrics=metrics) as watcher:
            watcher.run(once=once)
        if once and delivery is not None:
            delivery.run_once()  # what this pass raised goes out before the command ends
    finally:
        stop.set()
        if deliverer is not None:
            deliverer.join(timeout=30)
        if delivery is not None:
            delivery.close()
        if isinstance(sink, OutboxSink):
            sink.close()
        if server is not None:
            server.shutdown()
