"""
The detectors: one rule each, fed the trail's events in the order they ran.

A detector is a small class: options in a frozen dataclass (its ``[detectors.<rule>]``
settings), work in `Detector.observe`, which takes one event and returns the alerts it
completes.  The daemon feeds every new event to every enabled detector, in ``(at, id)``
order, statements first, then app events.

Alert keys are stable: they name the rule, the subject and the event (or transaction)
that crossed the threshold, so a watcher that re-reads a batch after a crash raises the
same keys, and the outbox drops the repeats.  Windowed rules count events in a sliding
window ending at each event; they fire on the event that brings the count to the
threshold, and again only after the count has fallen below it.  Their look-back is
rebuilt from the trail after a restart (``Reader.history``), so a burst that began before
the restart still counts.

Rules over statements see what the capture records: role commands (CREATE / ALTER / DROP
ROLE, GRANT role TO role) fire no event trigger and never reach the trail; the server-log
tailer is the place for them.
"""

from __future__ import annotations

import bisect
import fnmatch
import ipaddress
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from ipaddress import IPv4Network, IPv6Network
from typing import Any, ClassVar, Generic, TypeVar
from zoneinfo import ZoneInfo

from whodunit.investigate.tables import qualified_name
from whodunit.watch.alert import Alert, Category, Severity
from whodunit.watch.reader import AppEvent, Event, StatementEvent

__all__ = [
    "DETECTORS",
    "BruteForce",
    "Detector",
    "DetectorOptions",
    "Drop",
    "FailureBurst",
    "HumanAccess",
    "MassDelete",
    "MassUpdate",
    "Network",
    "PrivilegeChange",
    "Truncate",
    "WorkingHours",
    "build",
    "option",
]

Network = IPv4Network | IPv6Network
#: How far around an event the suggested ``whodunit investigate`` window reaches.
_PAD = timedelta(minutes=1)
#: At most this many statement ids are listed in one alert's evidence.
_MAX_IDS = 50
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def option(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: Sequence[str] = (),
) -> Any:
    """
    Declare one setting with limits (a dataclass field); `whodunit.watch.settings` checks it.

    Args:
        default: The value when the settings do not give one.
        low: The smallest number allowed (default 0: no setting may be negative; a
            duration must be longer than 0).
        high: The largest number allowed.
        choices: The only strings allowed (for a list: for each item).
    """
    metadata = {"low": low, "high": high, "choices": tuple(choices)}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class WorkingHours:
    """A daily span of local time, ``08:00-18:00``; the end may be past midnight."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> WorkingHours:
        """
        Read ``HH:MM-HH:MM``.

        Raises:
            ValueError: *text* is not two times joined by ``-``.
        """
        first, sep, last = text.partition("-")
        if not sep:
            raise ValueError(f"{text!r} is not a span of hours such as 08:00-18:00")
        return cls(time.fromisoformat(first.strip()), time.fromisoformat(last.strip()))

    def __contains__(self, moment: time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


@dataclass(frozen=True)
class DetectorOptions:
    """
    What every detector takes.

    Args:
        enabled: False switches the rule off.
        severity: The severity of its alerts.
    """

    enabled: bool = True
    severity: Severity = Severity.WARNING


OptionsT = TypeVar("OptionsT", bound=DetectorOptions)


class Detector(Generic[OptionsT]):
    """
    One rule: sees each event once, in order, and returns the alerts it completes.

    Args:
        options: The rule's settings.
    """

    rule: ClassVar[str]
    category: ClassVar[Category]
    options_type: ClassVar[type[DetectorOptions]]

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    @property
    def window(self) -> timedelta:
        """How far back the rule looks; the daemon keeps (and restores) that much."""
        return timedelta(0)

    def observe(self, event: Event) -> list[Alert]:
        """Take the next event; return the alerts it completes."""
        raise NotImplementedError

    def end_batch(self, horizon: datetime) -> None:
        """
        Forget what no later event needs.

        Called when every transaction seen so far has been read whole: per-transaction
        totals end, and windows drop events stamped before *horizon*.
        """

    def _alert(self, key: str, at: datetime, **fields: Any) -> Alert:
        return Alert(
            key=f"{self.rule}:{key}",
            rule=self.rule,
            severity=self.options.severity,
            category=self.category,
            at=at,
            **fields,
        )


# -- mass DELETE / UPDATE --------------------------------------------------------------


@dataclass(frozen=True)
class MassChangeOptions(DetectorOptions):
    """
    Thresholds of rows changed, in four scopes; 0 turns a scope off.

    Args:
        statement_rows: Rows in one statement.
        transaction_rows: Rows in one transaction, over its statements and tables.
        actor_rows: Rows by one actor (app user, else DB role) within *actor_window*.
        actor_window: See *actor_rows*.
        table_rows: Rows of one table, by anyone, within *table_window*.
        table_window: See *table_rows*.
        ignore_tables: Tables not counted, as ``schema.table`` globs (``public.tmp_*``).
        ignore_roles: DB roles not counted (a retention job's).
    """

    severity: Severity = Severity.CRITICAL
    statement_rows: int = option(1000)
    transaction_rows: int = option(5000)
    actor_rows: int = option(10_000)
    actor_window: timedelta = timedelta(minutes=10)
    table_rows: int = option(50_000)
    table_window: timedelta = timedelta(minutes=10)
    ignore_tables: tuple[str, ...] = ()
    ignore_roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class MassUpdateOptions(MassChangeOptions):
    """The thresholds of `MassChangeOptions`, higher: updates are routine in bulk."""

    severity: Severity = Severity.WARNING
    statement_rows: int = option(10_000)
    transaction_rows: int = option(50_000)
    actor_rows: int = option(100_000)
    table_rows: int = option(500_000)


class _MassChange(Detector[MassChangeOptions]):
    """
    Many rows deleted (or updated): per statement, transaction, actor or table.

    One event raises at most one alert, for the narrowest scope that crossed its
    threshold; the wider scopes that crossed too are named in its evidence.
    """

    category = Category.DATABASE
    op: ClassVar[str]
    verb: ClassVar[str]

    def __init__(self, options: MassChangeOptions) -> None:
        super().__init__(options)
        self._transactions = _Totals()
        self._actors = _Window(options.actor_window)
        self._tables = _Window(options.table_window)

    @property
    def window(self) -> timedelta:
        return max(self.options.actor_window, self.options.table_window)

    def observe(self, event: Event) -> list[Alert]:
        o = self.options
        if not (
            isinstance(event, StatementEvent)
            and event.op == self.op
            and event.rows
            and not _ignored(event, o.ignore_tables, o.ignore_roles)
        ):
            return []
        s = event
        table = _table(s)
        crossed: list[tuple[str, str, int, list[int], datetime]] = []
        if _crosses(s.rows, 0, o.statement_rows):
            crossed.append(("statement", str(s.id), s.rows, [s.id], s.at))
        total, ids = self._transactions.add(s.txid, s.id, s.rows)
        if _crosses(total, total - s.rows, o.transaction_rows):
            crossed.append(("transaction", s.txid, total, list(ids), s.at))
        for scope, window, subject, threshold in (
            ("actor", self._actors, _subject(s), o.actor_rows),
            ("table", self._tables, table, o.table_rows),
        ):
            hit = window.add(subject, s.at, s.id, s.rows, threshold)
            if hit:
                crossed.append((scope, f"{subject}:{s.id}", hit.total, hit.ids, hit.first))
        if not crossed:
            return []
        scope, subject, rows, ids, first = crossed[0]
        who = _who(s)
        span = {
            "statement": "in one statement",
            "transaction": "in one transaction",
            "actor": f"within {_span(o.actor_window)}",
            "table": f"within {_span(o.table_window)}",
        }[scope]
        evidence = _statement_evidence(s) | {
            "scope": scope,
            "rows": f"{rows:,}",
            "statement_ids": _ids(ids),
        }
        if len(crossed) > 1:
            evidence["also_crossed"] = ", ".join(c[0] for c in crossed[1:])
        return [
            self._alert(
                f"{scope}:{subject}",
                s.at,
                title=f"{who} {self.verb} {_rows(rows)} of {table} {span}",
                summary=(
                    f"{who} {self.verb} {_rows(rows)} {span} (threshold "
                    f"{_threshold(o, scope):,}); the last statement, {s.id} at "
                    f"{_clock(s.at)}, {self.verb} {_rows(s.rows)} of {table}"
                    f"{_via(s)}."
                ),
                evidence=evidence,
                investigate=_investigate(first, s.at, table if scope != "actor" else None),
                statement_ids=tuple(ids),
            )
        ]

    def end_batch(self, horizon: datetime) -> None:
        self._transactions.clear()
        self._actors.prune(horizon)
        self._tables.prune(horizon)


class MassDelete(_MassChange):
    """Many rows deleted: ``[detectors.mass_delete]``."""

    rule = "mass_delete"
    op = "DELETE"
    verb = "deleted"
    options_type = MassChangeOptions


class MassUpdate(_MassChange):
    """Many rows updated: ``[detectors.mass_update]``."""

    rule = "mass_update"
    op = "UPDATE"
    verb = "updated"
    options_type = MassUpdateOptions


# -- TRUNCATE / DROP -------------------------------------------------------------------


@dataclass(frozen=True)
class TruncateOptions(DetectorOptions):
    """
    Args:
        min_rows: Only a TRUNCATE of a table that held at least this many rows.
        ignore_tables: Tables not watched, as ``schema.table`` globs.
        ignore_roles: DB roles not watched.
    """

    severity: Severity = Severity.CRITICAL
    min_rows: int = option(0)
    ignore_tables: tuple[str, ...] = ()
    ignore_roles: tuple[str, ...] = ()


class Truncate(Detector[TruncateOptions]):
    """A TRUNCATE of an audited table: ``[detectors.truncate]``."""

    rule = "truncate"
    category = Category.DATABASE
    options_type = TruncateOptions

    def observe(self, event: Event) -> list[Alert]:
        o = self.options
        if not (
            isinstance(event, StatementEvent)
            and event.op == "TRUNCATE"
            and event.rows >= o.min_rows
            and not _ignored(event, o.ignore_tables, o.ignore_roles)
        ):
            return []
        s, table = event, _table(event)
        return [
            self._alert(
                f"statement:{s.id}",
                s.at,
                title=f"{_who(s)} truncated {table} ({_rows(s.rows)})",
                summary=(
                    f"{_who(s)} truncated {table} at {_clock(s.at)}{_via(s)}: "
                    f"{_rows(s.rows)} gone, {_saved(s)}."
                ),
                evidence=_statement_evidence(s) | {"rows": f"{s.rows:,}"},
                investigate=_investigate(s.at, s.at, table),
                statement_ids=(s.id,),
            )
        ]


@dataclass(frozen=True)
class DropOptions(DetectorOptions):
    """
    Args:
        command_tags: The DDL commands watched.
        ignore_tables: Tables (``schema.table``) and schemas not watched, as globs.
        ignore_roles: DB roles not watched (a migration tool's).
    """

    severity: Severity = Severity.CRITICAL
    command_tags: tuple[str, ...] = ("DROP TABLE", "DROP SCHEMA")
    ignore_tables: tuple[str, ...] = ()
    ignore_roles: tuple[str, ...] = ()


class Drop(Detector[DropOptions]):
    """
    A table or schema dropped: ``[detectors.drop]``.

    One alert per dropped table (and schema): a ``DROP SCHEMA ... CASCADE`` raises one
    for each table it took; the outbox groups them.
    """

    rule = "drop"
    category = Category.DATABASE
    options_type = DropOptions

    def observe(self, event: Event) -> list[Alert]:
        o = self.options
        if not (
            isinstance(event, StatementEvent)
            and event.op == "DDL"
            and event.command_tag in o.command_tags
            and event.object_type in ("table", "schema")
            and not _ignored(event, o.ignore_tables, o.ignore_roles)
        ):
            return []
        s = event
        if s.table_name:
            noun, detail = f"table {_table(s)}", f"{_rows(s.rows)} gone, {_saved(s)}"
        else:
            noun, detail = f"schema {_table(s)}", "and whatever it held"
        return [
            self._alert(
                f"statement:{s.id}",
                s.at,
                title=f"{_who(s)} dropped {noun}" + (f" ({_rows(s.rows)})" if s.table_name else ""),
                summary=(
                    f"{_who(s)} ran {s.command_tag} at {_clock(s.at)}{_via(s)}, "
                    f"dropping {noun}: {detail}."
                ),
                evidence=_statement_evidence(s) | {"rows": f"{s.rows:,}"},
                investigate=_investigate(s.at, s.at, _table(s) if s.table_name else None),
                statement_ids=(s.id,),
            )
        ]


# -- privileges ------------------------------------------------------------------------


@dataclass(frozen=True)
class PrivilegeChangeOptions(DetectorOptions):
    """
    Args:
        command_tags: DDL commands that change privileges, as the trail records them.
            Role commands (CREATE / ALTER / DROP ROLE, GRANT role TO role) never reach
            the trail: no event trigger fires for them.
        app_actions: App events that change a user's permissions.
        ignore_roles: DB roles whose grants are routine (a migration tool's).
    """

    command_tags: tuple[str, ...] = ("GRANT", "REVOKE", "ALTER DEFAULT PRIVILEGES")
    app_actions: tuple[str, ...] = ("auth.permission_changed",)
    ignore_roles: tuple[str, ...] = ()


class PrivilegeChange(Detector[PrivilegeChangeOptions]):
    """
    GRANT, REVOKE, default privileges, and permission changes in the app.

    ``[detectors.privilege_change]``; one alert per command per transaction (a REVOKE of
    default privileges writes two rows).
    """

    rule = "privilege_change"
    category = Category.SECURITY
    options_type = PrivilegeChangeOptions

    def __init__(self, options: PrivilegeChangeOptions) -> None:
        super().__init__(options)
        self._seen: set[tuple[str, str | None]] = set()

    def observe(self, event: Event) -> list[Alert]:
        if isinstance(event, AppEvent):
            return self._app(event)
        o = self.options
        s = event
        if s.op != "DDL" or s.command_tag not in o.command_tags or _ignored(s, (), o.ignore_roles):
            return []
        if (s.txid, s.command_tag) in self._seen:
            return []
        self._seen.add((s.txid, s.command_tag))
        return [
            self._alert(
                f"transaction:{s.txid}:{s.command_tag}",
                s.at,
                title=f"{_who(s)} ran {s.command_tag}",
                summary=(
                    f"{_who(s)} ran {s.command_tag} at {_clock(s.at)}{_via(s)}: "
                    f"{_snippet(s.query) or 'SQL text not captured'}."
                ),
                evidence=_statement_evidence(s),
                investigate=_timeline("--db-user", s.db_session_user, s.at, s.at),
                statement_ids=(s.id,),
            )
        ]

    def _app(self, e: AppEvent) -> list[Alert]:
        if e.action not in self.options.app_actions:
            return []
        details = e.details if isinstance(e.details, Mapping) else {}
        permission = details.get("permission", "a permission")
        granted = details.get("granted")
        change = "changed" if granted is None else "granted" if granted else "revoked"
        actor = _app_actor(e) or "someone"
        return [
            self._alert(
                f"app_event:{e.id}",
                e.at,
                title=f"{actor} {change} {permission} for user {e.resource_id}",
                summary=(
                    f"{actor} {change} {permission} for user {e.resource_id} at "
                    f"{_clock(e.at)} (app event {e.id}, action {e.action})."
                ),
                evidence=_app_evidence(e) | {"permission": str(permission), "change": change},
                investigate=_app_command(e, e.at, e.at),
            )
        ]

    def end_batch(self, horizon: datetime) -> None:
        self._seen.clear()


# -- direct human access ---------------------------------------------------------------


@dataclass(frozen=True)
class HumanAccessOptions(DetectorOptions):
    """
    Args:
        applications: ``application_name`` globs of interactive tools (case-insensitive).
        allow_cidrs: When set, a change from a client address outside these networks
            is direct access too, whatever the application.
        allow_local: Unix-socket connections (no address) count as inside *allow_cidrs*.
        ignore_roles: DB roles never reported (the application's own).
        only_off_hours: Report only outside *working_hours* on *working_days*.
        working_hours: ``HH:MM-HH:MM`` in *timezone*.
        working_days: Days of the week (``mon`` ... ``sun``).
        timezone: The IANA time zone of *working_hours*.
    """

    applications: tuple[str, ...] = (
        "psql", "pgcli", "pgAdmin*", "DBeaver*", "DataGrip*", "*JetBrains*", "TablePlus*",
        "Postico*", "HeidiSQL*", "Navicat*", "DbVisualizer*", "Beekeeper*",
        "azuredatastudio*", "Azure Data Studio*",
    )  # fmt: skip
    allow_cidrs: tuple[Network, ...] = ()
    allow_local: bool = True
    ignore_roles: tuple[str, ...] = ()
    only_off_hours: bool = False
    working_hours: WorkingHours = WorkingHours(time(8), time(18))
    working_days: tuple[str, ...] = option(_DAYS[:5], choices=_DAYS)
    timezone: ZoneInfo = field(default=ZoneInfo("UTC"))


class HumanAccess(Detector[HumanAccessOptions]):
    """
    A person changing production by hand: ``[detectors.human_access]``.

    A console's ``application_name`` (the client sets it freely, so this catches habit,
    not intent) or a client address outside the allow-list; one alert per transaction.
    Reads are not in the trail: a person who only looks is not seen here.
    """

    rule = "human_access"
    category = Category.SECURITY
    options_type = HumanAccessOptions

    def __init__(self, options: HumanAccessOptions) -> None:
        super().__init__(options)
        self._seen: set[str] = set()

    def observe(self, event: Event) -> list[Alert]:
        o = self.options
        if not isinstance(event, StatementEvent) or _ignored(event, (), o.ignore_roles):
            return []
        s = event
        reasons = self._reasons(s)
        if not reasons or s.txid in self._seen:
            return []
        if o.only_off_hours and self._working(s.at):
            return []
        self._seen.add(s.txid)
        target = _table(s) if s.table_name else (s.object_identity or s.command_tag or s.op)
        role = s.db_session_user
        return [
            self._alert(
                f"transaction:{s.txid}",
                s.at,
                title=f"{role} changed {target} by hand ({'; '.join(reasons)})",
                summary=(
                    f"DB role {role} ran {s.command_tag or s.op} on {target} at "
                    f"{_clock(s.at)} from {s.application_name or 'no application name'}"
                    f" at {s.client_addr or 'the local socket'}: {'; '.join(reasons)}."
                ),
                evidence=_statement_evidence(s) | {"reasons": "; ".join(reasons)},
                investigate=_timeline("--db-user", role, s.at, s.at),
                statement_ids=(s.id,),
            )
        ]

    def end_batch(self, horizon: datetime) -> None:
        self._seen.clear()

    def _reasons(self, s: StatementEvent) -> list[str]:
        o = self.options
        reasons = []
        app = (s.application_name or "").lower()
        if app and any(fnmatch.fnmatchcase(app, glob.lower()) for glob in o.applications):
            reasons.append(f"console {s.application_name}")
        if o.allow_cidrs and not self._allowed(s.client_addr):
            reasons.append(f"address {s.client_addr or 'local socket'} outside the allow-list")
        if reasons and o.only_off_hours:
            reasons.append("off-hours")
        return reasons

    def _allowed(self, address: str | None) -> bool:
        if address is None:
            return self.options.allow_local
        return _in_networks(address, self.options.allow_cidrs)

    def _working(self, at: datetime) -> bool:
        local = at.astimezone(self.options.timezone)
        day = _DAYS[local.weekday()]
        return day in self.options.working_days and local.time() in self.options.working_hours


# -- app events: brute force, failure bursts -------------------------------------------


@dataclass(frozen=True)
class BruteForceOptions(DetectorOptions):
    """
    Args:
        actions: The app events that are failed logins (with outcome ``failure``).
        per_user: Failed logins for one username within *window*; 0: off.
        per_ip: Failed logins from one client address within *window*; 0: off.
        window: See *per_user*.
        allow_cidrs: Failures from these networks are not counted (a monitoring probe).
    """

    actions: tuple[str, ...] = ("auth.login_failed",)
    per_user: int = option(10)
    per_ip: int = option(20)
    window: timedelta = timedelta(minutes=5)
    allow_cidrs: tuple[Network, ...] = ()


class BruteForce(Detector[BruteForceOptions]):
    """Many failed logins for one user or from one address: ``[detectors.brute_force]``."""

    rule = "brute_force"
    category = Category.SECURITY
    options_type = BruteForceOptions

    def __init__(self, options: BruteForceOptions) -> None:
        super().__init__(options)
        self._users = _Window(options.window)
        self._ips = _Window(options.window)

    @property
    def window(self) -> timedelta:
        return self.options.window

    def observe(self, event: Event) -> list[Alert]:
        o = self.options
        if not (
            isinstance(event, AppEvent)
            and event.action in o.actions
            and event.outcome == "failure"
            and not (event.client_ip and _in_networks(event.client_ip, o.allow_cidrs))
        ):
            return []
        e = event
        alerts = []
        for scope, window, subject, threshold, noun in (
            ("user", self._users, e.resource_id, o.per_user, f"for user {e.resource_id}"),
            ("ip", self._ips, e.client_ip, o.per_ip, f"from {e.client_ip}"),
        ):
            if subject is None:
                continue
            hit = window.add(subject, e.at, e.id, 1, threshold)
            if not hit:
                continue
            alerts.append(
                self._alert(
                    f"{scope}:{subject}:{e.id}",
                    e.at,
                    title=f"{hit.total} failed logins {noun} within {_span(o.window)}",
                    summary=(
                        f"{hit.total} failed logins {noun} between {_clock(hit.first)} and "
                        f"{_clock(e.at)} (threshold {threshold}); the last one for user "
                        f"{e.resource_id} from {e.client_ip or 'an unknown address'}"
                        f"{f', reason {e.error}' if e.error else ''}."
                    ),
                    evidence=_app_evidence(e)
                    | {"scope": scope, "count": str(hit.total), "app_event_ids": _ids(hit.ids)},
                    investigate=_app_command(e, hit.first, e.at),
                )
            )
        return alerts

    def end_batch(self, horizon: datetime) -> None:
        self._users.prune(horizon)
        self._ips.prune(horizon)


@dataclass(frozen=True)
class FailureBurstOptions(DetectorOptions):
    """
    Args:
        count: Failed app events within *window*.
        window: See *count*.
        group_by: Count ``all`` failures together, or per ``action`` or ``actor``.
        ignore_actions: Actions not counted (failed logins have their own rule).
    """

    count: int = option(50, low=1)
    window: timedelta = timedelta(minutes=1)
    group_by: str = option("all", choices=("all", "action", "actor"))
    ignore_actions: tuple[str, ...] = ("auth.login_failed",)


class FailureBurst(Detector[FailureBurstOptions]):
    """A burst of failed app events (outcome ``failure``): ``[detectors.failure_burst]``."""

    rule = "failure_burst"
    category = Category.APPLICATION
    options_type = FailureBurstOptions

    def __init__(self, options: FailureBurstOptions) -> None:
        super().__init__(options)
        self._groups = _Window(options.window)

    @property
    def window(self) -> timedelta:
        return self.options.window

    def observe(self, event: Event) -> list[Alert]:
        o = self.options
        if not (
            isinstance(event, AppEvent)
            and event.outcome == "failure"
            and event.action not in o.ignore_actions
        ):
            return []
        e = event
        group = {"all": "all", "action": e.action, "actor": _app_actor(e) or "anonymous"}[
            o.group_by
        ]
        hit = self._groups.add(group, e.at, e.id, 1, o.count)
        if not hit:
            return []
        of = "" if o.group_by == "all" else f" ({o.group_by} {group})"
        return [
            self._alert(
                f"{o.group_by}:{group}:{e.id}",
                e.at,
                title=f"{hit.total} failed app events{of} within {_span(o.window)}",
                summary=(
                    f"{hit.total} app events failed{of} between {_clock(hit.first)} and "
                    f"{_clock(e.at)}; the last: {e.action}"
                    f"{f' ({e.error})' if e.error else ''}."
                ),
                evidence=_app_evidence(e)
                | {"count": str(hit.total), "app_event_ids": _ids(hit.ids), "group": group},
                investigate=_app_command(e, hit.first, e.at),
            )
        ]

    def end_batch(self, horizon: datetime) -> None:
        self._groups.prune(horizon)


#: Every detector by rule name: the ``[detectors.<rule>]`` sections that may exist.
DETECTORS: dict[str, type[Detector[Any]]] = {
    d.rule: d
    for d in (
        MassDelete,
        MassUpdate,
        Truncate,
        Drop,
        PrivilegeChange,
        HumanAccess,
        BruteForce,
        FailureBurst,
    )
}


def build(options: Mapping[str, DetectorOptions] | None = None) -> list[Detector[Any]]:
    """
    Return the enabled detectors: *options* by rule name, defaults for the rules missing.
    """
    given = options or {}
    detectors = []
    for rule, kind in DETECTORS.items():
        settings = given.get(rule) or kind.options_type()
        if settings.enabled:
            detectors.append(kind(settings))
    return detectors


# -- counting ---------------------------------------------------------------------------


class _Totals:
    """Running totals per transaction, with the statements that made them."""

    def __init__(self) -> None:
        self._totals: dict[str, int] = {}
        self._ids: dict[str, list[int]] = {}

    def add(self, txid: str, ident: int, weight: int) -> tuple[int, list[int]]:
        """Count a statement; return its transaction's total and statement ids so far."""
        self._totals[txid] = total = self._totals.get(txid, 0) + weight
        ids = self._ids.setdefault(txid, [])
        ids.append(ident)
        return total, ids

    def clear(self) -> None:
        self._totals.clear()
        self._ids.clear()


@dataclass(frozen=True)
class _Hit:
    """A window's total crossed its threshold at an event."""

    total: int
    first: datetime
    ids: list[int]


@dataclass
class _Series:
    """One subject's events in ``(at, id)`` order, with running totals (``totals[0] = 0``)."""

    keys: list[tuple[datetime, int]] = field(default_factory=list)
    totals: list[int] = field(default_factory=lambda: [0])

    def insert(self, key: tuple[datetime, int], weight: int) -> int:
        """Add an event; return its index."""
        index = bisect.bisect_right(self.keys, key)
        self.keys.insert(index, key)
        # Late events (a long transaction's) land before the end: totals after them shift.
        self.totals.insert(index + 1, self.totals[index] + weight)
        for i in range(index + 2, len(self.totals)):
            self.totals[i] += weight
        return index

    def drop_before(self, horizon: datetime) -> None:
        cut = bisect.bisect_left(self.keys, (horizon, -1))
        base = self.totals[cut]
        del self.keys[:cut]
        self.totals = [t - base for t in self.totals[cut:]]


class _Window:
    """
    Sliding sums per subject: the weight of the events in ``(at - width, at]``.

    The window ends at each event in ``(at, id)`` order; events that ran later (a long
    transaction's rows read after newer ones) are not counted in an earlier one's window.
    """

    def __init__(self, width: timedelta) -> None:
        self.width = width
        self._series: dict[str, _Series] = {}

    def add(
        self, subject: str, at: datetime, ident: int, weight: int, threshold: int
    ) -> _Hit | None:
        """Count an event; return the window's total when the event made it cross."""
        if threshold <= 0:  # the scope is off: nothing to remember either
            return None
        series = self._series.setdefault(subject, _Series())
        index = series.insert((at, ident), weight)
        start = bisect.bisect_right(series.keys, (at - self.width, 2**63))
        total = series.totals[index + 1] - series.totals[start]
        if not _crosses(total, total - weight, threshold):
            return None
        return _Hit(total, series.keys[start][0], [i for _, i in series.keys[start : index + 1]])

    def prune(self, horizon: datetime) -> None:
        for subject in list(self._series):
            series = self._series[subject]
            series.drop_before(horizon)
            if not series.keys:
                del self._series[subject]


def _crosses(total: int, before: int, threshold: int) -> bool:
    return 0 < threshold <= total and before < threshold


# -- what alerts say --------------------------------------------------------------------


def _table(s: StatementEvent) -> str:
    return qualified_name(s.schema_name, s.table_name) or s.object_identity or "?"


def _ignored(s: StatementEvent, tables: Iterable[str], roles: Sequence[str]) -> bool:
    if s.db_session_user in roles or s.db_current_user in roles:
        return True
    if s.table_name:
        names = [f"{s.schema_name}.{s.table_name}"]
    else:  # a dropped schema: its name is the object's identity
        names = [n for n in (s.schema_name, s.object_identity) if n]
    return any(fnmatch.fnmatchcase(name, glob) for glob in tables for name in names)


def _subject(s: StatementEvent) -> str:
    """Who a per-actor window counts: the app user when there is one, else the DB role."""
    return f"app:{s.actor_id}" if s.actor_id else f"db:{s.db_current_user}"


def _who(s: StatementEvent) -> str:
    app = s.actor_name or s.actor_id
    return f"{app} (DB role {s.db_current_user})" if app else f"DB role {s.db_current_user}"


def _via(s: StatementEvent) -> str:
    parts = []
    if s.application_name:
        parts.append(f"from {s.application_name}")
    parts.append(f"at {s.client_addr}" if s.client_addr else "over the local socket")
    if s.correlation_id:
        parts.append(f"in request {s.correlation_id}")
    return " (" + ", ".join(parts) + ")"


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


def _saved(s: StatementEvent) -> str:
    if s.rows_captured is None:
        return "no rows saved in the trail"
    return f"{s.rows_captured:,} of them saved in the trail"


def _statement_evidence(s: StatementEvent) -> dict[str, str]:
    app = s.actor_name or s.actor_id
    facts = {
        "table": _table(s) if s.table_name or s.object_identity else None,
        "actor": app or s.db_current_user,
        "db_role": s.db_session_user
        + (f" as {s.db_current_user}" if s.db_current_user != s.db_session_user else ""),
        "client": s.client_addr or "local socket",
        "application": s.application_name,
        "statement_ids": str(s.id),
        "txid": s.txid,
        "command": s.command_tag or s.op,
        "sql": _snippet(s.query),
        "correlation_id": s.correlation_id,
        "client_ip": s.client_ip,
        "at": s.at.astimezone(UTC).isoformat(),
    }
    return {k: v for k, v in facts.items() if v}


def _app_actor(e: AppEvent) -> str | None:
    return e.actor_name or e.actor_id


def _app_evidence(e: AppEvent) -> dict[str, str]:
    facts = {
        "actor": _app_actor(e),
        "action": e.action,
        "resource": ":".join(p for p in (e.resource_type, e.resource_id) if p) or None,
        "outcome": e.outcome,
        "error": e.error,
        "client_ip": e.client_ip,
        "correlation_id": e.correlation_id,
        "app_event_ids": str(e.id),
        "at": e.at.astimezone(UTC).isoformat(),
    }
    return {k: v for k, v in facts.items() if v}


def _snippet(query: str | None) -> str | None:
    return " ".join(query.split()) if query else None


def _ids(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:_MAX_IDS])
    return shown + (f" … ({len(ids)} in all)" if len(ids) > _MAX_IDS else "")


def _threshold(o: MassChangeOptions, scope: str) -> int:
    value: int = getattr(o, f"{scope}_rows")
    return value


def _in_networks(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _span(width: timedelta) -> str:
    seconds = int(width.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _clock(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _investigate(first: datetime, last: datetime, table: str | None) -> str:
    args = ["whodunit", "investigate", "--from", _iso(first - _PAD), "--to", _iso(last + _PAD)]
    return shlex.join(args + (["--table", table] if table else []))


def _timeline(flag: str, value: str, first: datetime, last: datetime) -> str:
    window = ["--from", _iso(first - _PAD), "--to", _iso(last + _PAD)]
    return shlex.join(["whodunit", "timeline", flag, value, *window])


def _app_command(e: AppEvent, first: datetime, last: datetime) -> str | None:
    """The command that shows what the address, user or request of *e* did."""
    if e.client_ip:
        return _timeline("--client-addr", e.client_ip, first, last)
    if e.actor_id:
        return _timeline("--actor", e.actor_id, first, last)
    if e.correlation_id:
        return shlex.join(["whodunit", "trace", e.correlation_id])
    return None
