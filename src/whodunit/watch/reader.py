"""
Reading the trail as it grows, without skipping a late commit, and resuming after a restart.

Statement ids cannot say where a reader stopped.  They are drawn when a statement runs
(each session takes 32 at a time), and a row becomes visible when its transaction
commits: a session holding ids 1-32 may commit id 2 an hour after id 40 was read.  So a
position is a *snapshot* (``pg_current_snapshot()``): the rows read are those of the
transactions it shows as finished; the next read takes the rows finished in the new
snapshot and not in the old one, whatever their ids, exactly once.

Finding those rows must not scan the trail: there is no index on ``txid`` (it would cost
every audited write).  A position therefore also bounds the ``at`` of every row it has not
seen: ``floor`` (when it was taken, less a safety margin) for transactions that had
written nothing then, and each older *session* still in a transaction (its start) for
the others.  The next read scans ``at >= floor`` with the index, going further back only
for the sessions that have since finished their transaction.  A session idle in a
transaction for a day costs nothing until it ends, then one scan from its start.

The ``whodunit`` channel's NOTIFY (sent for destructive statements) only wakes the
reader early; what is read is decided by the snapshots alone.
"""

from __future__ import annotations

import dataclasses
import os
import select
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from whodunit.db import sql_text
from whodunit.errors import (
    PrivilegeError,
    SchemaNotInstalledError,
    SchemaVersionError,
    WhodunitError,
)

__all__ = [
    "CHANNEL",
    "MARGIN",
    "SCHEMA_VERSION",
    "AppEvent",
    "Checkpoint",
    "Event",
    "Position",
    "Reader",
    "Session",
    "StatementEvent",
    "Waker",
]

#: The NOTIFY channel the capture wakes the watcher on.
CHANNEL = "whodunit"
#: The first schema version with the watcher's objects (``0004_watch.sql``).
SCHEMA_VERSION = 4
#: How far before a position's time a row it did not see may be stamped.  A session
#: reports its transaction a few microseconds after stamping its statement; a second
#: covers that, and small steps of the clock.
MARGIN = timedelta(seconds=1)
#: The snapshot in which nothing is finished: reading from it reads the whole trail.
EMPTY_SNAPSHOT = "1:1:"
#: Before every row: the floor of a session whose start is unknown.
NEVER = datetime.min.replace(tzinfo=UTC)

Start = Literal["now", "beginning"]


@dataclass(frozen=True, slots=True)
class StatementEvent:
    """One row of ``whodunit.statement``, as the detectors see it (SQL text capped)."""

    id: int
    at: datetime
    txid: str
    op: str
    schema_name: str | None
    table_name: str | None
    rows: int
    rows_captured: int | None
    command_tag: str | None
    object_type: str | None
    object_identity: str | None
    query: str | None
    db_session_user: str
    db_current_user: str
    client_addr: str | None
    application_name: str | None
    backend_pid: int
    actor_id: str | None
    actor_name: str | None
    correlation_id: str | None
    client_ip: str | None


@dataclass(frozen=True, slots=True)
class AppEvent:
    """One row of ``whodunit.app_event`` (error text capped)."""

    id: int
    at: datetime
    txid: str
    action: str
    resource_type: str | None
    resource_id: str | None
    outcome: str
    error: str | None
    details: Any
    db_session_user: str
    db_current_user: str
    client_addr: str | None
    application_name: str | None
    actor_id: str | None
    actor_name: str | None
    correlation_id: str | None
    client_ip: str | None


Event = StatementEvent | AppEvent


@dataclass(frozen=True, slots=True)
class Session:
    """
    A transaction that was open when a position was taken and may commit older rows.

    Args:
        pid: Its backend; None for a prepared (two-phase) transaction, which has none.
        xact_start: When its transaction started (None when prepared).
        start: No row it commits is stamped earlier.
        xid: Its transaction id (32-bit) once it wrote, to follow it into PREPARE.
    """

    pid: int | None
    xact_start: datetime | None
    start: datetime
    xid: str | None

    def to_json(self) -> dict[str, Any]:
        """The session as stored in ``watch_checkpoint.sessions``."""
        return {
            "pid": self.pid,
            "xact_start": self.xact_start.isoformat() if self.xact_start else None,
            "start": self.start.isoformat(),
            "xid": self.xid,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Session:
        """The session `to_json` (or ``watch_position()``) wrote."""
        xact_start = data.get("xact_start")
        return cls(
            pid=data.get("pid"),
            xact_start=_time(xact_start) if xact_start else None,
            start=_time(data["start"]),
            xid=data.get("xid"),
        )


@dataclass(frozen=True)
class Position:
    """
    Where the trail stands at one moment: what a read up to here covers.

    Args:
        snapshot: ``pg_current_snapshot()`` as text.
        floor: Rows not finished in *snapshot* are stamped at or after this, unless they
            belong to one of *sessions*.
        sessions: The older open transactions (see `Session`).
        open: ``(pid, xact_start)`` of every transaction open just after the snapshot.
        prepared: Prepared transactions (xids) pending just after the snapshot.
    """

    snapshot: str
    floor: datetime
    sessions: tuple[Session, ...]
    open: frozenset[tuple[int, datetime]]
    prepared: frozenset[str]

    def pending(self, session: Session) -> bool:
        """Whether *session* (of an earlier position) had still not finished here."""
        if session.pid is None:
            return session.xid in self.prepared
        return (session.pid, session.xact_start) in self.open


@dataclass(frozen=True)
class Checkpoint:
    """
    Where a watcher stopped: everything finished in *snapshot* has been read.

    Args:
        name: The watcher's name (one checkpoint each).
        snapshot: See `Position`.
        floor: See `Position`.
        sessions: See `Position`.
        history_from: The detectors' look-back starts here; on a restart they re-read
            the events since (see ``Reader.history``).
        statement_id: The highest statement id read so far (progress, not a position).
        app_event_id: The same for ``app_event``.
    """

    name: str
    snapshot: str
    floor: datetime
    sessions: tuple[Session, ...] = ()
    history_from: datetime = NEVER
    statement_id: int = 0
    app_event_id: int = 0

    def scan_from(self, until: Position) -> datetime:
        """
        The earliest ``at`` a row finished between this checkpoint and *until* can have.

        A session still in the same transaction at *until* has committed nothing yet, so
        its start does not count; one that moved on may have, so it does.
        """
        starts = [s.start for s in self.sessions if not until.pending(s)]
        return min([self.floor, *starts])

    def advance(
        self, until: Position, *, history_from: datetime, statement_id: int, app_event_id: int
    ) -> Checkpoint:
        """The checkpoint after everything up to *until* was read."""
        return dataclasses.replace(
            self,
            snapshot=until.snapshot,
            floor=until.floor,
            sessions=until.sessions,
            history_from=max(self.history_from, history_from),
            statement_id=max(self.statement_id, statement_id),
            app_event_id=max(self.app_event_id, app_event_id),
        )


class Reader:
    """
    Reads the trail for one named watcher: its checkpoint, positions, new events.

    Args:
        conn: An autocommit connection as a superuser or a member of ``whodunit_watcher``.
        name: The watcher's name; two watchers of one name would share a checkpoint, so
            `lock` lets only one run.
        batch_size: Rows per page: memory stays bounded however far behind it is.
        snippet_chars: SQL and error texts are cut to this length.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        name: str,
        *,
        batch_size: int = 5000,
        snippet_chars: int = 300,
    ) -> None:
        self.conn = conn
        self.name = name
        self.batch_size = batch_size
        self.snippet_chars = snippet_chars

    def check(self) -> None:
        """
        Fail early, naming the fix, when the schema or the privileges do not fit.

        Raises:
            SchemaNotInstalledError: whodunit is not installed.
            SchemaVersionError: the schema predates the watcher's objects.
            PrivilegeError: the role may not read the trail.
        """
        from whodunit.db.install import installed_version

        version = installed_version(self.conn)
        if version is None:
            raise SchemaNotInstalledError(
                "whodunit is not installed in this database: run 'whodunit install'"
            )
        if version < SCHEMA_VERSION:
            raise SchemaVersionError(
                f"schema is v{version}, 'whodunit watch' needs v{SCHEMA_VERSION}: "
                "run 'whodunit install' to upgrade"
            )
        row = self.conn.execute(
            "SELECT has_function_privilege('whodunit.watch_position()', 'EXECUTE') "
            "AND has_table_privilege('whodunit.statement', 'SELECT') "
            "AND has_table_privilege('whodunit.app_event', 'SELECT') "
            "AND has_table_privilege('whodunit.watch_checkpoint', 'INSERT') "
            "AND has_table_privilege('whodunit.watch_checkpoint', 'UPDATE'), "
            "current_user"
        ).fetchone()
        if not row or not row[0]:
            user = row[1] if row else "?"
            raise PrivilegeError(
                f"role {user!r} may not read the trail: run 'GRANT whodunit_watcher TO "
                f"{user}' as a superuser, or connect as one"
            )

    def lock(self) -> None:
        """
        Take the watcher's name for this connection's lifetime.

        Raises:
            WhodunitError: another watcher of the same name is running.
        """
        row = self.conn.execute(sql_text("watch_lock.sql"), {"name": self.name}).fetchone()
        if not row or not row[0]:
            raise WhodunitError(
                f"a watcher named {self.name!r} is already running on this database: stop "
                "it, or give this one another --name (it then keeps its own checkpoint)"
            )

    def load(self, start: Start = "now") -> Checkpoint:
        """
        Return the saved checkpoint; on the first run, create one.

        Args:
            start: Where a first run begins: ``now`` (events committed from now on) or
                ``beginning`` (the whole trail).
        """
        cur = self.conn.cursor(row_factory=dict_row)
        row = cur.execute(sql_text("watch_checkpoint_load.sql"), {"name": self.name}).fetchone()
        if row:
            return Checkpoint(
                name=self.name,
                snapshot=row["snapshot"],
                floor=row["floor"],
                sessions=tuple(Session.from_json(s) for s in row["sessions"]),
                history_from=row["history_from"],
                statement_id=row["statement_id"],
                app_event_id=row["app_event_id"],
            )
        if start == "beginning":
            checkpoint = Checkpoint(self.name, EMPTY_SNAPSHOT, NEVER)
        else:
            here = self.position()
            checkpoint = Checkpoint(self.name, here.snapshot, here.floor, here.sessions)
        self.save(checkpoint)
        return checkpoint

    def save(self, checkpoint: Checkpoint) -> None:
        """Store *checkpoint* (one row per watcher name)."""
        self.conn.execute(
            sql_text("watch_checkpoint_save.sql"),
            {
                "name": checkpoint.name,
                "snapshot": checkpoint.snapshot,
                "floor": checkpoint.floor,
                "sessions": Jsonb([s.to_json() for s in checkpoint.sessions]),
                "history_from": checkpoint.history_from,
                "statement_id": checkpoint.statement_id,
                "app_event_id": checkpoint.app_event_id,
            },
        )

    def position(self, previous: Checkpoint | None = None) -> Position:
        """
        Return where the trail stands now.

        Args:
            previous: The last checkpoint: a prepared transaction keeps the start its
                session had there (a prepared transaction has no session to ask).
        """
        cur = self.conn.cursor(row_factory=dict_row)
        row = cur.execute(sql_text("watch_position.sql")).fetchone()
        assert row is not None  # a function call returns one row
        floor = row["taken_at"] - MARGIN
        running = [Session.from_json(s) for s in row["running"]]
        known = {s.xid: s.start for s in (previous.sessions if previous else ()) if s.xid}
        prepared = [Session(None, None, known.get(xid, NEVER), xid) for xid in row["prepared"]]
        return Position(
            snapshot=row["snapshot"],
            floor=floor,
            sessions=tuple(s for s in running + prepared if s.start < floor),
            open=frozenset((o["pid"], _time(o["xact_start"])) for o in row["open"]),
            prepared=frozenset(row["still_prepared"]),
        )

    def statements(
        self, since: Checkpoint, until: Position, *, ops: Sequence[str] | None = None
    ) -> Iterator[list[StatementEvent]]:
        """
        Yield the statements finished in *until* and not in *since*, page by page.

        Pages are in ``(at, id)`` order, so a detector sees events in the order they ran.

        Args:
            since: Where the last read stopped.
            until: Where this read stops (`position`).
            ops: Only these ops (default: all).
        """
        return self._pages(
            "watch_statements.sql",
            StatementEvent,
            (since.snapshot, until.snapshot),
            since.scan_from(until),
            {"ops": list(ops) if ops is not None else None},
        )

    def app_events(
        self, since: Checkpoint, until: Position, *, failures: bool = False
    ) -> Iterator[list[AppEvent]]:
        """Yield the app events finished in *until* and not in *since* (see `statements`)."""
        return self._pages(
            "watch_app_events.sql",
            AppEvent,
            (since.snapshot, until.snapshot),
            since.scan_from(until),
            {"failures": failures},
        )

    def history(self, checkpoint: Checkpoint) -> Iterator[list[Event]]:
        """
        Yield what the windowed detectors had seen when *checkpoint* was saved.

        That is every DELETE and UPDATE and every failed app event already read (finished
        in its snapshot) and stamped at or after its ``history_from``: a restarted
        watcher counts a burst that began before it stopped.
        """
        read = (EMPTY_SNAPSHOT, checkpoint.snapshot)
        yield from self._pages(
            "watch_statements.sql",
            StatementEvent,
            read,
            checkpoint.history_from,
            {"ops": ["DELETE", "UPDATE"]},
        )
        yield from self._pages(
            "watch_app_events.sql", AppEvent, read, checkpoint.history_from, {"failures": True}
        )

    def _pages(
        self,
        query: str,
        kind: type[Any],
        snapshots: tuple[str, str],
        lower: datetime,
        extra: Mapping[str, Any],
    ) -> Iterator[list[Any]]:
        """Page through the rows finished in ``snapshots[1]`` but not in ``snapshots[0]``."""
        cur = self.conn.cursor(row_factory=class_row(kind))
        params = {
            "since": snapshots[0],
            "until": snapshots[1],
            "after_at": lower,
            "after_id": -1,
            "limit": self.batch_size,
            "snippet": self.snippet_chars,
            **extra,
        }
        while True:
            page = cur.execute(sql_text(query), params).fetchall()
            if page:
                yield page
            if len(page) < self.batch_size:
                return
            params["after_at"], params["after_id"] = page[-1].at, page[-1].id


class Waker:
    """
    LISTEN on the ``whodunit`` channel: the capture's NOTIFY ends a wait early.

    Args:
        conn: An autocommit connection used for nothing else (a notification arrives
            between queries otherwise, and would wait for the next one).
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        conn.execute(f"LISTEN {CHANNEL}")

    def wait(self, timeout: float, interrupt: int | None = None) -> bool:
        """
        Wait up to *timeout* seconds for a notification, or a byte on *interrupt*.

        Every notification already received is consumed: a burst of destructive
        statements wakes the reader once, and one read covers them all.

        Returns:
            Whether a notification arrived.

        Raises:
            psycopg.OperationalError: the connection was lost.
        """
        if self._drain():
            return True
        watched = [self.conn.fileno()] + ([interrupt] if interrupt is not None else [])
        ready, _, _ = select.select(watched, [], [], timeout)
        if interrupt is not None and interrupt in ready:
            os.read(interrupt, 512)
        return self.conn.fileno() in ready and self._drain()

    def _drain(self) -> bool:
        # Exhausted, not stopped at the first: the rest of a packet would be lost.
        return sum(1 for _ in self.conn.notifies(timeout=0)) > 0


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)
