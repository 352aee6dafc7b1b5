"""Verifying the devices' hash chains (DESIGN.md §10, :mod:`edge.store.chain` for how they are made).

A chain is one device's ``rating`` and ``broadcast`` events of one epoch, numbered ``n`` = 1, 2, ...
and each holding the SHA-256 of its predecessor's canonical form. Given the events as the collector
stored them, :class:`ChainVerifier` names every break:

- ``missing``: an ``n`` that never arrived: a rating deleted on the device before it was sent, or
  lost in transit (or, after a quarantine, a row the damaged store could not give back);
- ``altered``: an event that no longer hashes to what its successor recorded (its score, officer,
  time or seq changed, or it was replaced by another);
- ``reordered``: events whose seq order disagrees with their chain order;
- ``duplicate``: two different events claiming one ``n`` (a forged event beside a real one);
- ``malformed``: a chain member that is not ``{"epoch", "n", "prev"}`` as the device writes it;
- ``unchained``: a rating or proof of play without a chain member (stripped, or from a device
  that does not chain), which nothing vouches for.

Events are verified in chain order, whatever order they arrive in: the collector may receive a
live rating before the backlog behind it, so a gap is reported as ``missing`` for as long as it
lasts, and disappears once the events arrive. ``verified`` is how many events from ``n`` = 1 on
are present with every link holding, up to the first break. The newest event's content is vouched for only once the next
one arrives, or by the seal a device sends when an epoch ends (the ``old_chain`` of a
``store_quarantined`` or ``store_moved`` ``security`` event), which also tells how long the old
chain was, so events lost at its end show as missing.

The collector can keep a verifier and call :meth:`ChainVerifier.feed` with each batch it stores
(only the events it newly stored); :func:`verify_db` verifies every chain of a collector's database
(:mod:`edge.server.db`: SQLite or PostgreSQL) and :func:`record` writes the statuses to its ``chains`` table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edge.clock import now_iso
from edge.jsonfmt import compact
from edge.messages import EventBatch
from edge.server.db import CollectorDb, Row
from edge.store.chain import CHAINED_TYPES, GENESIS, event_digest

log = logging.getLogger(__name__)

BreakKind = Literal["missing", "altered", "reordered", "duplicate", "malformed", "unchained"]
#: ``(commune, device, epoch)``: one chain.
ChainKey = tuple[str, str, str]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SEAL_KINDS = frozenset({"store_quarantined", "store_moved"})

#: The ``chains`` table: per device and epoch, what was verified and the first break. Created by
#: :func:`record`; the collector writes it as it stores, ``edge verify --record`` on demand.
CHAINS_SCHEMA = """
CREATE TABLE IF NOT EXISTS chains (
    commune      TEXT    NOT NULL,
    device       TEXT    NOT NULL,
    epoch        TEXT    NOT NULL,                 -- the epoch the chain was made in
    events       INTEGER NOT NULL,                 -- chained events received
    length       INTEGER NOT NULL,                 -- the highest n received, or sealed by the device
    verified     INTEGER NOT NULL,                 -- n = 1..verified are present and every link holds
    whole        INTEGER NOT NULL,                 -- 1: no break at all
    breaks       INTEGER NOT NULL,                 -- how many breaks
    first_break_kind TEXT,                         -- missing|altered|reordered|duplicate|malformed|unchained
    first_break_n    INTEGER,
    first_break      TEXT,                         -- the first break, in words
    detail       TEXT    NOT NULL,                 -- JSON: the whole status, every break
    updated_at   TEXT    NOT NULL,
    PRIMARY KEY (commune, device, epoch)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class ChainBreak:
    """One break in a chain. ``n`` (to ``to_n`` for a run of missing events) is the position; ``seq``
    and ``id`` name the stored event concerned, when there is one."""

    kind: BreakKind
    n: int | None
    detail: str
    to_n: int | None = None
    seq: int | None = None
    id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n": self.n,
            "to_n": self.to_n,
            "seq": self.seq,
            "id": self.id,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class ChainEvent:
    """A chained event as stored: where it says it stands (``n``, ``prev``) and what it hashes to."""

    id: str
    seq: int
    type: str
    ts: str
    n: int
    prev: str
    digest: str
    #: The epoch of the batch it was stored from (another than the chain's for a carried event).
    stored_epoch: str


@dataclass
class ChainStatus:
    """What is known of one chain."""

    commune: str
    device: str
    epoch: str
    events: int
    length: int
    verified: int
    breaks: list[ChainBreak]
    #: Events of this chain that arrived in another epoch's batches (salvaged, or resent after a move).
    carried: int = 0
    #: The length the device reported when the epoch ended, if it did.
    sealed: int | None = None
    first_ts: str | None = None
    last_ts: str | None = None

    @property
    def key(self) -> ChainKey:
        return (self.commune, self.device, self.epoch)

    @property
    def whole(self) -> bool:
        return not self.breaks

    @property
    def first_break(self) -> ChainBreak | None:
        return self.breaks[0] if self.breaks else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "commune": self.commune,
            "device": self.device,
            "epoch": self.epoch,
            "whole": self.whole,
            "events": self.events,
            "length": self.length,
            "verified": self.verified,
            "carried": self.carried,
            "sealed": self.sealed,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "breaks": [b.as_dict() for b in self.breaks],
        }


def _where(e: ChainEvent) -> str:
    return f"n={e.n} (seq {e.seq}, id {e.id})"


@dataclass
class _Chain:
    key: ChainKey
    by_n: dict[int, list[ChainEvent]] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)
    #: Breaks that have no place in the order (malformed and unchained events), in arrival order.
    loose: list[ChainBreak] = field(default_factory=list)
    carried: int = 0
    seal: tuple[int, str] | None = None
    #: ``n`` = 1..prefix are verified; ``tip`` is event ``prefix``. Kept as events arrive, so a
    #: status only has to look at what follows it.
    prefix: int = 0
    tip: ChainEvent | None = None
    first_ts: str | None = None
    last_ts: str | None = None

    def add(self, event: ChainEvent) -> bool:
        if event.id in self.ids:
            return False  # a repeat: the collector keeps the first copy
        self.ids.add(event.id)
        self.by_n.setdefault(event.n, []).append(event)
        if event.stored_epoch != self.key[2]:
            self.carried += 1
        self._seen(event.ts)
        if event.n <= self.prefix:
            # A second event for a position already verified: the prefix ends before it.
            self.prefix = event.n - 1
            self.tip = self.by_n[self.prefix][0] if self.prefix else None
        self._advance()
        return True

    def _seen(self, ts: str) -> None:
        # ISO times of one device compare as text well enough to show a range to people.
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts = ts
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts

    def _advance(self) -> None:
        while True:
            at = self.by_n.get(self.prefix + 1)
            if at is None or len(at) != 1:
                return
            event = at[0]
            if event.prev != (self.tip.digest if self.tip is not None else GENESIS):
                return
            if self.tip is not None and event.seq <= self.tip.seq:
                return
            self.prefix, self.tip = event.n, event

    def status(self) -> ChainStatus:
        commune, device, epoch = self.key
        breaks: list[ChainBreak] = []
        positions = sorted(n for n in self.by_n if n > self.prefix)
        chosen: dict[int, ChainEvent] = {}
        if self.tip is not None:
            chosen[self.prefix] = self.tip
        for n in positions:
            candidates = sorted(self.by_n[n], key=lambda e: e.seq)
            if len(candidates) > 1:
                # Follow the one that links to its predecessor, if one does.
                before = chosen.get(n - 1)
                want = GENESIS if n == 1 else (before.digest if before is not None else None)
                linked = [e for e in candidates if e.prev == want]
                keep = linked[0] if linked else candidates[0]
                others = ", ".join(_where(e) for e in candidates if e is not keep)
                breaks.append(
                    ChainBreak(
                        "duplicate", n, f"{others} claim(s) the place of {_where(keep)}", seq=keep.seq, id=keep.id
                    )
                )
                chosen[n] = keep
            else:
                chosen[n] = candidates[0]
        # Positions inside the verified prefix that got a second event later are counted above only
        # if they are past the prefix; the prefix is cut back when one arrives (see add), so none are.
        top = max(chosen) if chosen else 0
        length = max(top, self.seal[0] if self.seal else 0)
        # Missing runs, from 1 (or the prefix) to the length.
        expect = self.prefix + 1
        for n in [*positions, length + 1]:
            if n > expect:
                last = min(n - 1, length)
                if last >= expect:
                    breaks.append(self._missing(expect, last, chosen))
            expect = max(expect, n + 1)
        breaks.extend(self._links(chosen))
        breaks.extend(self._sealed(chosen))
        breaks.extend(self.loose)
        breaks.sort(key=lambda b: (b.n if b.n is not None else 1 << 62, b.kind))
        events = sum(len(v) for v in self.by_n.values())
        # The prefix's links hold, but its last events may be what a later link shows was changed.
        placed = [b.n for b in breaks if b.n is not None]
        verified = min(self.prefix, min(placed) - 1) if placed else self.prefix
        return ChainStatus(
            commune,
            device,
            epoch,
            events=events,
            length=length,
            verified=verified,
            breaks=breaks,
            carried=self.carried,
            sealed=self.seal[0] if self.seal else None,
            first_ts=self.first_ts,
            last_ts=self.last_ts,
        )

    def _missing(self, first: int, last: int, chosen: Mapping[int, ChainEvent]) -> ChainBreak:
        after, before = chosen.get(first - 1), chosen.get(last + 1)
        where = []
        if after is not None:
            where.append(f"after seq {after.seq}")
        if before is not None:
            where.append(f"before seq {before.seq}")
        what = f"n={first}" if first == last else f"n={first}..{last} ({last - first + 1} events)"
        return ChainBreak(
            "missing",
            first,
            f"{what} not received" + (f" ({', '.join(where)})" if where else ""),
            to_n=last if last != first else None,
        )

    def _links(self, chosen: Mapping[int, ChainEvent]) -> list[ChainBreak]:
        """Breaks between neighbours past the verified prefix: order, then hashes."""
        out: list[ChainBreak] = []
        ns = sorted(chosen)
        first = chosen.get(1)
        if first is not None and first.prev != GENESIS and self.prefix < 1:
            out.append(ChainBreak("altered", 1, f"{_where(first)} does not start a chain", seq=first.seq, id=first.id))
        pairs = [(chosen[a], chosen[a + 1]) for a in ns if a + 1 in chosen and a + 1 > self.prefix]
        reordered: set[str] = set()
        for a, b in pairs:
            if b.seq <= a.seq:
                reordered.update((a.id, b.id))
                out.append(
                    ChainBreak(
                        "reordered",
                        a.n,
                        f"n={b.n} (seq {b.seq}) is stored before n={a.n} (seq {a.seq})",
                        seq=a.seq,
                        id=a.id,
                    )
                )
        bad = [(a, b) for a, b in pairs if b.prev != a.digest and a.id not in reordered and b.id not in reordered]
        bad_after = {a.id for a, _ in bad}
        blamed: set[str] = set()
        for a, b in bad:
            # One changed event breaks the link to its successor only; an event whose own link was
            # also changed (or that was replaced) breaks the links on both sides of it.
            culprit = b if b.id in bad_after else a
            if culprit.id in blamed:
                continue
            blamed.add(culprit.id)
            nxt = chosen.get(culprit.n + 1)
            detail = (
                f"{_where(culprit)} does not hash to what n={culprit.n + 1} (seq {nxt.seq}) recorded"
                if nxt is not None
                else f"{_where(culprit)} is not what the chain recorded"
            )
            out.append(ChainBreak("altered", culprit.n, detail, seq=culprit.seq, id=culprit.id))
        return out

    def _sealed(self, chosen: Mapping[int, ChainEvent]) -> list[ChainBreak]:
        if self.seal is None:
            return []
        n, digest = self.seal
        last = chosen.get(n)
        if last is None or last.digest == digest:
            return []
        return [
            ChainBreak(
                "altered",
                n,
                f"{_where(last)} is not the event the device sealed its chain with",
                seq=last.seq,
                id=last.id,
            )
        ]


class ChainVerifier:
    """Verifies chains as events arrive, in any order. Not thread-safe: one storing thread feeds it."""

    def __init__(self) -> None:
        self._chains: dict[ChainKey, _Chain] = {}

    def _chain(self, key: ChainKey) -> _Chain:
        chain = self._chains.get(key)
        if chain is None:
            chain = self._chains[key] = _Chain(key)
        return chain

    def feed(self, batch: EventBatch) -> set[ChainKey]:
        """Take the events of one stored batch; returns the chains it changed."""
        changed: set[ChainKey] = set()
        for e in batch.events:
            key = self.feed_event(batch.commune, batch.device, batch.epoch, e.id, e.seq, e.type, e.ts, e.data)
            if key is not None:
                changed.add(key)
        return changed

    def feed_rows(self, rows: Iterable[Row]) -> set[ChainKey]:
        """Take events as read from the collector's database."""
        changed: set[ChainKey] = set()
        for r in rows:
            key = self.feed_event(r.commune, r.device, r.epoch, r.id, r.seq, r.type, r.ts, r.data)
            if key is not None:
                changed.add(key)
        return changed

    def feed_event(
        self,
        commune: str,
        device: str,
        epoch: str,
        event_id: str,
        seq: int,
        event_type: str,
        ts: str,
        data: Mapping[str, Any] | None,
    ) -> ChainKey | None:
        """Take one stored event (``epoch`` is its batch's); returns the chain it changed, if any."""
        if event_type == "security":
            return self._seal(commune, device, data)
        if event_type not in CHAINED_TYPES:
            return None
        member = data.get("chain") if isinstance(data, Mapping) else None
        if member is None:
            key = (commune, device, epoch)
            self._chain(key).loose.append(
                ChainBreak(
                    "unchained", None, f"{event_type} seq {seq} (id {event_id}) carries no chain", seq=seq, id=event_id
                )
            )
            return key
        parsed = _member(member)
        if parsed is None or data is None:
            key = (commune, device, epoch)
            self._chain(key).loose.append(
                ChainBreak(
                    "malformed",
                    None,
                    f"{event_type} seq {seq} (id {event_id}) has a malformed chain",
                    seq=seq,
                    id=event_id,
                )
            )
            return key
        chain_epoch, n, prev = parsed
        key = (commune, device, chain_epoch)
        digest = event_digest(event_id, seq, event_type, ts, data)
        added = self._chain(key).add(ChainEvent(event_id, seq, event_type, ts, n, prev, digest, epoch))
        return key if added else None

    def _seal(self, commune: str, device: str, data: Mapping[str, Any] | None) -> ChainKey | None:
        if not isinstance(data, Mapping) or data.get("kind") not in _SEAL_KINDS:
            return None
        seal = data.get("old_chain")
        if not isinstance(seal, Mapping):
            return None
        epoch, n, digest = seal.get("epoch"), seal.get("n"), seal.get("digest")
        if not isinstance(epoch, str) or not isinstance(n, int) or n < 1 or not isinstance(digest, str):
            return None
        key = (commune, device, epoch)
        self._chain(key).seal = (n, digest)
        return key

    def status(self, key: ChainKey) -> ChainStatus:
        return self._chain(key).status()

    def statuses(self, keys: Iterable[ChainKey] | None = None) -> list[ChainStatus]:
        """Status of the given chains (default: all), sorted by commune, device and first event."""
        chosen = list(self._chains) if keys is None else list(keys)
        out = [self._chain(k).status() for k in chosen]
        out.sort(key=lambda s: (s.commune, s.device, s.first_ts or "", s.epoch))
        return out


def _member(member: Any) -> tuple[str, int, str] | None:
    if not isinstance(member, Mapping):
        return None
    epoch, n, prev = member.get("epoch"), member.get("n"), member.get("prev")
    if not isinstance(epoch, str) or not epoch or isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return None
    if not isinstance(prev, str) or not _HEX64.match(prev):
        return None
    return epoch, n, prev


def verify_db(db: CollectorDb, *, commune: str | None = None, device: str | None = None) -> list[ChainStatus]:
    """Every chain in a collector database, SQLite or PostgreSQL (of one commune or device)."""
    verifier = ChainVerifier()
    verifier.feed_rows(db.events([*sorted(CHAINED_TYPES), "security"], commune=commune, device=device))
    return verifier.statuses()


#: Writes one row of :func:`chain_rows` to the ``chains`` table, replacing the chain's earlier status
#: (``?`` placeholders; the same statement runs on PostgreSQL with ``%s``).
UPSERT_CHAIN = (
    "INSERT INTO chains (commune, device, epoch, events, length, verified, whole, breaks, first_break_kind, "
    "first_break_n, first_break, detail, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (commune, device, epoch) DO UPDATE SET events = excluded.events, length = excluded.length, "
    "verified = excluded.verified, whole = excluded.whole, breaks = excluded.breaks, "
    "first_break_kind = excluded.first_break_kind, first_break_n = excluded.first_break_n, "
    "first_break = excluded.first_break, detail = excluded.detail, updated_at = excluded.updated_at"
)


def chain_rows(statuses: Iterable[ChainStatus]) -> list[tuple[Any, ...]]:
    """The ``chains`` table's rows for ``statuses``, in the column order of :data:`UPSERT_CHAIN`."""
    now = now_iso()
    rows: list[tuple[Any, ...]] = []
    for s in statuses:
        first = s.first_break
        rows.append(
            (
                s.commune,
                s.device,
                s.epoch,
                s.events,
                s.length,
                s.verified,
                int(s.whole),
                len(s.breaks),
                first.kind if first else None,
                first.n if first else None,
                first.detail if first else None,
                compact(s.as_dict()),
                now,
            )
        )
    return rows


def record(db: CollectorDb, statuses: Iterable[ChainStatus]) -> int:
    """Write statuses to the ``chains`` table (created if need be) in one transaction; returns how many.
    ``db`` is opened with ``write=True``."""
    rows = chain_rows(statuses)
    # WITHOUT ROWID is SQLite's storage hint; PostgreSQL's table is otherwise the same.
    schema = CHAINS_SCHEMA if db.dialect == "sqlite" else CHAINS_SCHEMA.replace(") WITHOUT ROWID;", ");")
    db.write([(schema, None), (UPSERT_CHAIN, rows)])
    return len(rows)
