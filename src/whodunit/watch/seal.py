"""
The hash chain over the trail: sealing what the watcher read, and verifying it later.

Each audit record (a ``statement`` row with its ``row_change`` images, or an
``app_event`` row) is serialised by PostgreSQL itself (``to_jsonb`` of the row, in UTC,
see ``sql/seal_*_hashes.sql``) and hashed with SHA-256.  After every batch the watcher
appends one seal: the ids it read, their record hashes, and

    hash = sha256(prev_hash || "\\n" || "statement:<id>:<hex>\\n" ... "app_event:<id>:<hex>\\n")

records in id order, statements first, ``prev_hash`` being the previous seal's hash.
Hashing happens after commit, in the watcher, never in the capture triggers: a chain in
the triggers would serialise every audited writer.

A seal covers *the rows read in one batch*, listed by id, not "every id up to N": ids
are drawn before commit and become visible in any order, so a lower id that commits
after a higher one was sealed is sealed by the next batch, once.  Each seal also keeps
the snapshots its batch read between; `verify` uses them to tell a row that should have
been sealed (a forgery dated into the past) from one not read yet.

The chain proves that the sealed records have not changed since they were sealed, as far
as the newest seal hash you hold from outside the database (the log stream, the
metrics, a ticket): a superuser can rebuild the whole chain, but not the hash you kept.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from whodunit.db import sql_text
from whodunit.errors import WhodunitError
from whodunit.watch.metrics import WatchMetrics

__all__ = [
    "GENESIS",
    "Finding",
    "Report",
    "Seal",
    "Sealer",
    "chain_hash",
    "parse_against",
    "record_hashes",
    "verify",
]

Kind = Literal["statement", "app_event"]
KINDS: tuple[Kind, ...] = ("statement", "app_event")
#: The ``prev_hash`` of a chain's first seal.
GENESIS = "0" * 64
_DIGEST = 32
_HEX = re.compile(r"[0-9a-f]{64}")
_log = logging.getLogger("whodunit.seal")


@dataclass(frozen=True, slots=True)
class Seal:
    """One appended seal, as published to the log stream."""

    id: int
    watcher: str
    sealed_at: datetime
    statements: int
    app_events: int
    prev_hash: str
    hash: str


def _utc(conn: psycopg.Connection[Any]) -> None:
    # to_jsonb renders timestamptz in the session's time zone and floats per
    # extra_float_digits: pin both, so the sealer and any later verifier hash one text.
    conn.execute("SET LOCAL TimeZone = 'UTC'")
    conn.execute("SET LOCAL extra_float_digits = 1")


def record_hashes(
    conn: psycopg.Connection[Any], kind: Kind, ids: Sequence[int]
) -> dict[int, tuple[bytes, str]]:
    """
    Hash the records of *kind* with these *ids* that exist (call inside a transaction).

    Returns:
        id -> (SHA-256 digest, txid); ids without a row are absent.
    """
    if not ids:
        return {}
    _utc(conn)
    rows = conn.execute(sql_text(f"seal_{kind}_hashes.sql"), {"ids": list(ids)}).fetchall()
    return {int(r[0]): (bytes(r[2]), str(r[1])) for r in rows}


def chain_hash(prev_hash: str, records: Iterable[tuple[Kind, int, bytes]]) -> str:
    """The seal hash over *prev_hash* and the ``(kind, id, digest)`` records, in order."""
    h = hashlib.sha256(prev_hash.encode() + b"\n")
    for kind, record_id, digest in records:
        h.update(f"{kind}:{record_id}:{digest.hex()}\n".encode())
    return h.hexdigest()


def _multirange(ids: Sequence[int]) -> str:
    """Sorted ids as an ``int8multirange`` literal of runs: ``{[1,4),[7,8)}``."""
    runs: list[str] = []
    start = prev = None
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:  # type: ignore[operator]
            prev = i
        else:
            runs.append(f"[{start},{prev + 1})")  # type: ignore[operator]
            start = prev = i
    if start is not None:
        runs.append(f"[{start},{prev + 1})")  # type: ignore[operator]
    return "{" + ",".join(runs) + "}"


def _split(blob: bytes) -> list[bytes]:
    return [blob[i : i + _DIGEST] for i in range(0, len(blob), _DIGEST)]


class Sealer:
    """
    Appends a seal for each batch the watcher read, and publishes its hash.

    Args:
        watcher: The watcher's name: each named watcher keeps a chain of its own, as it
            keeps a checkpoint of its own.
        metrics: Where ``whodunit_seal_last_*`` are set (optional).
        logger: Where each seal is published (default: ``whodunit.seal``).
    """

    def __init__(
        self,
        watcher: str,
        *,
        metrics: WatchMetrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.watcher = watcher
        self.metrics = metrics
        self.logger = logger or _log
        self._usable: bool | None = None

    def usable(self, conn: psycopg.Connection[Any]) -> bool:
        """
        Whether this connection may seal (schema v7 and INSERT on ``whodunit.seal``).

        A watcher on an older schema, or without the grant, keeps watching and warns
        once: alerts matter more than the chain, and the warning names the fix.
        """
        if self._usable is None:
            row = conn.execute(
                "SELECT to_regclass('whodunit.seal') IS NOT NULL "
                "AND has_table_privilege('whodunit.seal', 'INSERT') "
                "AND has_table_privilege('whodunit.row_change', 'SELECT')"
            ).fetchone()
            self._usable = bool(row and row[0])
            if not self._usable:
                self.logger.warning(
                    "the trail is not being sealed: run 'whodunit install' (schema v7) and "
                    "connect as a superuser or a member of whodunit_watcher"
                )
        return self._usable

    def seal(
        self,
        conn: psycopg.Connection[Any],
        *,
        since: str,
        until: str,
        statement_ids: Iterable[int],
        app_event_ids: Iterable[int],
    ) -> Seal | None:
        """
        Seal the rows a batch read: those finished in snapshot *until*, not in *since*.

        Ids some seal of this watcher already covers are left out (a batch read again
        after a crash, before its checkpoint moved), so every row is sealed once.  The
        new seal's ``since`` is the previous seal's ``until`` when there is one: the
        seals' snapshot ranges then follow each other without gap or overlap.

        Returns:
            The seal, or None when there was nothing new to seal.
        """
        if not self.usable(conn):
            return None
        with conn.transaction():
            new = conn.execute(
                sql_text("seal_new_ids.sql"),
                {
                    "watcher": self.watcher,
                    "statement_ids": sorted(set(statement_ids)),
                    "app_event_ids": sorted(set(app_event_ids)),
                },
            ).fetchall()
            if not new:
                return None
            ids: dict[Kind, list[int]] = {k: [] for k in KINDS}
            for kind, record_id in new:
                ids[kind].append(int(record_id))
            records: list[tuple[Kind, int, bytes]] = []
            blobs: dict[Kind, bytes] = {}
            for kind in KINDS:
                hashes = record_hashes(conn, kind, sorted(ids[kind]))
                ids[kind] = sorted(hashes)  # a row gone before sealing cannot be sealed
                records += [(kind, i, hashes[i][0]) for i in ids[kind]]
                blobs[kind] = b"".join(hashes[i][0] for i in ids[kind])
            if not records:
                return None
            cur = conn.cursor(row_factory=dict_row)
            last = cur.execute(sql_text("seal_last.sql"), {"watcher": self.watcher}).fetchone()
            prev_hash = last["hash"] if last else GENESIS
            digest = chain_hash(prev_hash, records)
            row = cur.execute(
                sql_text("seal_insert.sql"),
                {
                    "watcher": self.watcher,
                    "since": last["until"] if last else since,
                    "until": until,
                    "statement_ids": _multirange(ids["statement"]),
                    "app_event_ids": _multirange(ids["app_event"]),
                    "records": len(records),
                    "statement_hashes": blobs["statement"],
                    "app_event_hashes": blobs["app_event"],
                    "prev_hash": prev_hash,
                    "hash": digest,
                },
            ).fetchone()
            assert row is not None  # INSERT ... RETURNING one row
        seal = Seal(
            id=row["id"],
            watcher=self.watcher,
            sealed_at=row["sealed_at"],
            statements=len(ids["statement"]),
            app_events=len(ids["app_event"]),
            prev_hash=prev_hash,
            hash=digest,
        )
        self.publish(seal)
        return seal

    def publish(self, seal: Seal) -> None:
        """
        Put the seal's hash outside the database: one JSON log line and the metrics.

        Whoever keeps the log stream (Loki, files, a SIEM) keeps what a superuser who
        rebuilt the chain in the database cannot change.
        """
        self.logger.info(
            "seal %s of watcher %s: %s",
            seal.id,
            seal.watcher,
            seal.hash,
            extra={
                "seal": {
                    "id": seal.id,
                    "watcher": seal.watcher,
                    "hash": seal.hash,
                    "prev_hash": seal.prev_hash,
                    "statements": seal.statements,
                    "app_events": seal.app_events,
                    "sealed_at": seal.sealed_at.isoformat(),
                }
            },
        )
        if self.metrics is not None:
            self.metrics.sealed(seal.id, seal.sealed_at.timestamp())


# -- verify -----------------------------------------------------------------------------

FindingKind = Literal["altered", "missing", "inserted", "seal_altered", "chain_broken", "against"]


@dataclass(frozen=True, slots=True)
class Finding:
    """
    One sign of tampering.

    Args:
        kind: ``altered`` (a record's hash differs from the sealed one), ``missing`` (a
            sealed record is gone), ``inserted`` (a record that a seal should cover and
            none does), ``seal_altered`` (a seal's hash does not match its content),
            ``chain_broken`` (a seal's prev_hash is not the previous seal's hash),
            ``against`` (the chain does not hold the hash published outside).
        table: ``statement`` or ``app_event`` for record findings.
        id: The record's id (or the seal's, for seal findings).
        seal_id: The seal that covers (or should cover) it.
        detail: One sentence for people.
    """

    kind: FindingKind
    table: str | None
    id: int | None
    seal_id: int | None
    detail: str


@dataclass
class Report:
    """What `verify` found: intact when *findings* is empty."""

    watcher: str
    seals: int = 0
    records: int = 0
    last_seal_id: int | None = None
    last_hash: str | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """No tampering found."""
        return not self.findings

    @property
    def first(self) -> Finding | None:
        """The first finding in chain order: where to start looking."""
        return self.findings[0] if self.findings else None

    def to_json(self) -> dict[str, Any]:
        """The report for ``--json``."""
        return {
            "intact": self.intact,
            "watcher": self.watcher,
            "seals": self.seals,
            "records": self.records,
            "last_seal_id": self.last_seal_id,
            "last_hash": self.last_hash,
            "first": asdict(self.first) if self.first else None,
            "findings": [asdict(f) for f in self.findings],
        }


def parse_against(value: str) -> tuple[int | None, str]:
    """
    Parse ``--against``: ``HASH`` or ``SEAL_ID:HASH`` (hex SHA-256).

    Raises:
        WhodunitError: The value is neither.
    """
    seal_id, _, digest = value.strip().rpartition(":")
    digest = digest.lower()
    if not _HEX.fullmatch(digest) or (seal_id and not seal_id.isdigit()):
        raise WhodunitError(
            f"--against must be a seal hash (64 hex digits) or SEAL_ID:HASH, got {value!r}"
        )
    return (int(seal_id) if seal_id else None), digest


def verify(
    conn: psycopg.Connection[Any],
    *,
    watcher: str = "default",
    since: datetime | None = None,
    against: tuple[int | None, str] | None = None,
) -> Report:
    """
    Recompute a watcher's chain from the trail and report every sign of tampering.

    Args:
        conn: A connection that may read the trail and the seals.
        watcher: Whose chain.
        since: Check only the seals made at or after this time (the first one's
            prev_hash is taken as given).
        against: ``(seal id or None, hash)`` published outside the database: the chain
            must hold it, else it was rebuilt.
    """
    report = Report(watcher)
    with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        seals = cur.execute(sql_text("seal_chain.sql"), {"watcher": watcher}).fetchall()
        if against is not None:
            _check_against(report, seals, against)
        previous: dict[str, Any] | None = None
        checked: list[dict[str, Any]] = []
        for seal in seals:
            if since is not None and seal["sealed_at"] < since:
                previous = seal
                continue
            checked.append(seal)
            _check_seal(conn, report, seal, previous)
            previous = seal
        if checked:
            report.seals = len(checked)
            report.last_seal_id, report.last_hash = checked[-1]["id"], checked[-1]["hash"]
            first = checked[0]
            unsealed = conn.execute(
                sql_text("seal_unsealed.sql"),
                {"watcher": watcher, "since": first["since"], "until": checked[-1]["until"]},
            ).fetchall()
            for kind, record_id in unsealed:
                report.findings.append(
                    Finding(
                        "inserted",
                        kind,
                        int(record_id),
                        None,
                        f"{kind} {record_id} committed within the sealed range but no seal "
                        "covers it",
                    )
                )
    return report


def _check_against(
    report: Report, seals: Sequence[dict[str, Any]], against: tuple[int | None, str]
) -> None:
    seal_id, digest = against
    if seal_id is None:
        ok = any(s["hash"] == digest for s in seals)
        where = "no seal of the chain has it"
    else:
        match = [s for s in seals if s["id"] == seal_id]
        ok = bool(match) and match[0]["hash"] == digest
        where = f"seal {seal_id} has {match[0]['hash']}" if match else f"seal {seal_id} is gone"
    if not ok:
        report.findings.append(
            Finding(
                "against",
                None,
                seal_id,
                seal_id,
                f"the published hash {digest} is not in the chain ({where}): the chain was "
                "rebuilt or cut",
            )
        )


def _check_seal(
    conn: psycopg.Connection[Any],
    report: Report,
    seal: dict[str, Any],
    previous: dict[str, Any] | None,
) -> None:
    sid = seal["id"]
    expected_prev = previous["hash"] if previous else GENESIS
    if seal["prev_hash"] != expected_prev:
        report.findings.append(
            Finding(
                "chain_broken",
                None,
                sid,
                sid,
                f"seal {sid} links to {seal['prev_hash']}, not to the previous seal's "
                f"{expected_prev}",
            )
        )
    sealed: list[tuple[Kind, int, bytes]] = []
    for kind in KINDS:
        ids = [int(i) for i in seal[f"{kind}_ids"]]
        digests = _split(bytes(seal[f"{kind}_hashes"]))
        if len(ids) != len(digests):
            report.findings.append(
                Finding("seal_altered", None, sid, sid, f"seal {sid}: {kind} ids and hashes differ")
            )
            return
        sealed += [(kind, i, d) for i, d in zip(ids, digests, strict=True)]
    if chain_hash(seal["prev_hash"], sealed) != seal["hash"]:
        report.findings.append(
            Finding(
                "seal_altered",
                None,
                sid,
                sid,
                f"seal {sid}'s hash does not match the ids and record hashes it lists",
            )
        )
    report.records += len(sealed)
    for kind in KINDS:
        ids = [i for k, i, _ in sealed if k == kind]
        now = record_hashes(conn, kind, ids)
        for k, record_id, digest in sealed:
            if k != kind:
                continue
            found = now.get(record_id)
            if found is None:
                report.findings.append(
                    Finding(
                        "missing",
                        kind,
                        record_id,
                        sid,
                        f"{kind} {record_id}, sealed by seal {sid}, is gone",
                    )
                )
            elif found[0] != digest:
                report.findings.append(
                    Finding(
                        "altered",
                        kind,
                        record_id,
                        sid,
                        f"{kind} {record_id} differs from what seal {sid} sealed",
                    )
                )
