"""``replay-webhook``: saved webhook bodies through the pipeline ``serve`` uses, a chunk at a time.

Every body is parsed (and verified) before any of them is stored, so one bad body means none is
applied. The bodies are then stored and applied ``REPLAY_CHUNK`` at a time, each chunk in one
transaction: nothing is acknowledged between two bodies of a file, so they need no commit of
their own. A replay stopped midway leaves whole chunks applied; running the file again applies
the rest (the others are duplicates by then).

The bodies of the first ``REPLAY_WINDOW_CHUNKS`` chunks stay parsed from that first pass until
they are applied; a longer file's later bodies are kept as received and parsed again a window at
a time, so memory stays bounded however long the file.

Reading and writing SQLite is about half of a replay's time, and merging in between is pure
Python. So a chunk of plain updates to linked contacts (what a burst of ContactUpdate webhooks
is) has its SQLite work done by a writer thread, on the other core, while the main thread merges
the next chunk: see ``_Pipeline`` for why that gives exactly what applying the chunks one after
another gives. Any other chunk is applied the usual way (``inbox.receive_many`` and
``inbox.process_pending`` in one transaction).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import ValidationError as PydanticValidationError

from ghlsync_cli.errors import InputError
from ghlsync_cli.gcpause import gc_paused
from ghlsync_cli.ghl.models import GhlContact, validate_contact
from ghlsync_cli.jsontext import dumps
from ghlsync_cli.store import Statement, Store, decode_linked
from ghlsync_cli.sync.engine import Progress, SyncEngine, no_progress
from ghlsync_cli.sync.inbox import (
    inbox_status,
    process_pending,
    receive_many,
    replay_outcome,
)
from ghlsync_cli.timeutil import utc_now
from ghlsync_cli.webhooks import (
    CONTACT_EVENTS,
    SavedBody,
    SignatureVerifier,
    WebhookEvent,
    parse_event,
    split_saved,
)

# Bodies of a replayed file stored and applied per transaction.
REPLAY_CHUNK = 1000
# Chunks of parsed bodies kept at a time (a parsed body takes about 4 KB, its text about 0.6): the
# first window's are parsed once, every later window's parsed again when its turn comes.
REPLAY_WINDOW_CHUNKS = 100
# The inbox columns a replayed body is stored in, already applied (see _Pipeline._write).
_INBOX_INSERT = (
    "INSERT INTO inbox (dedup_key, received_at, location_id, type, body, headers, status, "
    "outcome, processed_at)"
)
_BODY_COLUMN = 4
# While the writer thread works, how long it may wait for the GIL before the main thread must
# hand it over (Python's default is 5 ms). The writer needs the GIL only between two statements,
# briefly, but it needs it about 15 times a chunk: at 5 ms a wait, it would idle more than work.
WRITER_SWITCH_INTERVAL = 0.0002
# Chunks read ahead while the files are parsed: at most this many reads waiting for the writer
# thread at a time (it reads a chunk a little slower than one is parsed), and this many in all
# (each holds its rows as text until its turn: about 1.5 MB).
READ_AHEAD_QUEUE = 2
READ_AHEAD_CHUNKS = 64

Chunk = Sequence[tuple[str, WebhookEvent]]  # (where in the files, event)


@dataclass(slots=True)  # (not frozen: a frozen dataclass sets each field through a call)
class Replayed:
    """One replayed body and what happened to it."""

    source: str
    type: str
    location_id: str | None
    ghl_id: str | None
    contact_id: str | None
    duplicate: bool
    outcome: str


def replay(
    store: Store,
    sources: Sequence[tuple[str, bytes]],
    *,
    verifier: SignatureVerifier | None = None,
    region: str = "US",
    progress: Progress | None = None,
) -> list[Replayed]:
    """Run saved bodies (``(name, file bytes)``) through the pipeline ``serve`` uses.

    Every body is parsed (and verified) before anything of the files is stored, so one bad body
    means none of them is applied. A body received before is reported ``unchanged``, as a
    duplicate. Bodies stored earlier (by ``serve``) and not applied yet are applied first, as
    they arrived first. ``progress`` is told of the bodies checked (phase "check") and applied
    ("apply"), a chunk at a time.
    """
    report = progress or no_progress
    # Every parsed body of a window stays alive until it is applied: see ghlsync_cli.gcpause.
    with gc_paused(), store.bulk_checkpoints(), store.mapped_reads(), store.temp_in_memory():
        # (before parsing: rows are read ahead while the files are parsed)
        process_pending(store, region=region)
        with _Pipeline(store, region) as pipeline:
            window = REPLAY_CHUNK * REPLAY_WINDOW_CHUNKS
            chunks, later = _parse_files(
                sources, verifier, window, parsed=pipeline.read_ahead, progress=report
            )
            total = sum(map(len, chunks)) + len(later)
            pipeline.applied = lambda done: report("apply", done, total)
            results = pipeline.run(chunks)
            del chunks  # (the first window's parsed bodies go before the next one's are made)
            for start in range(0, len(later), window):
                again = _Chunks(parsed=pipeline.read_ahead)
                for where, saved in later[start : start + window]:
                    # (verified and parsed once already: the same bytes parse the same way)
                    again.add(where, parse_event(saved.raw, saved.headers))
                results += pipeline.run(again.finish())
            return results


class _Chunks:
    """Parsed bodies gathered in chunks of ``REPLAY_CHUNK``; ``parsed`` is told of each chunk as
    soon as it is whole (the last one at ``finish``)."""

    def __init__(self, *, parsed: Callable[[int, Chunk], None]) -> None:
        self.chunks: list[Chunk] = []
        self._chunk: list[tuple[str, WebhookEvent]] = []
        self._parsed = parsed

    def add(self, where: str, event: WebhookEvent) -> None:
        self._chunk.append((where, event))
        if len(self._chunk) == REPLAY_CHUNK:
            self._close()

    def finish(self) -> list[Chunk]:
        if self._chunk:
            self._close()
        return self.chunks

    def _close(self) -> None:
        self.chunks.append(self._chunk)
        self._parsed(len(self.chunks) - 1, self._chunk)
        self._chunk = []


def _parse_files(
    sources: Sequence[tuple[str, bytes]],
    verifier: SignatureVerifier | None,
    window: int,
    *,
    parsed: Callable[[int, Chunk], None],
    progress: Progress,
) -> tuple[list[Chunk], list[tuple[str, SavedBody]]]:
    """Every body parsed (and verified): the first ``window`` of them in chunks (see
    ``_Chunks``), and each body after them as received, to be parsed again in its turn.
    ``progress`` is told of the bodies checked, a chunk's worth at a time."""
    first = _Chunks(parsed=parsed)
    later: list[tuple[str, SavedBody]] = []
    count = 0
    for name, data in sources:
        for index, saved in enumerate(split_saved(data), start=1):
            where = f"{name}#{index}"
            try:
                if verifier is not None:
                    verifier.verify(saved.raw, saved.headers)
                event = parse_event(saved.raw, saved.headers, document=saved.document)
            except InputError as exc:
                raise InputError(f"{where}: {exc.message}", hint=exc.hint) from None
            if count < window:
                first.add(where, event)
            else:
                later.append((where, SavedBody(saved.raw, saved.headers)))
            count += 1
            if count % REPLAY_CHUNK == 0:
                progress("check", count, None)
    progress("check", count, count)
    return first.finish(), later


def apply_chunk(store: Store, chunk: Chunk, *, region: str) -> list[Replayed]:
    """Store and apply one chunk the usual way, in one transaction (with any bodies pending)."""
    with store.write():
        stored = receive_many(store, [event for _, event in chunk])
        # The rows just stored hold exactly these bodies: apply the events already parsed.
        fresh = {r.inbox_id: r.event for r in stored if not r.duplicate}
        done = {p.inbox_id: p for p in process_pending(store, region=region, parsed=fresh)}
    results = []
    for (where, event), receipt in zip(chunk, stored, strict=True):
        # A duplicate (received before, or earlier in these files) was not applied again.
        processed = None if receipt.duplicate else done.get(receipt.inbox_id)
        results.append(
            _replayed(
                where,
                event,
                contact_id=processed.contact_id if processed else None,
                duplicate=receipt.duplicate,
                outcome=processed.outcome if processed else "unchanged",
            )
        )
    return results


def _replayed(
    where: str, event: WebhookEvent, *, contact_id: str | None, duplicate: bool, outcome: str
) -> Replayed:
    ghl_id = event.body.get("id")
    # (source, type, location_id, ghl_id, contact_id, duplicate, outcome: by position, as a class
    # given keywords builds a dict of them first, and a replay reports every body)
    return Replayed(
        where,
        event.type,
        event.location_id,
        ghl_id if isinstance(ghl_id, str) else None,
        contact_id,
        duplicate,
        outcome,
    )


class _Read(NamedTuple):
    """What a chunk's merge needs from the database, read ahead by the writer thread."""

    version: int  # Store.data_version when read
    location: dict[str, Any] | None
    stored_keys: set[str]  # dedup keys of the chunk's bodies stored before
    linked: bytes | None  # Store.linked_json: None if JSON cannot carry the rows


class _Plan(NamedTuple):
    """A chunk merged in memory: what it writes, and what the replay reports for it."""

    version: int
    statements: list[Statement]  # the bodies, stored already applied, and the merge's writes
    results: list[Replayed]


class _Stale(Exception):
    """Another connection committed between a chunk's read and its write."""


class _Pipeline:
    """Applies chunks with SQLite's work on a writer thread, beside the main thread's merging.

    For each chunk the writer thread reads what the merge needs (``_read``: the location, which
    bodies were stored before, the linked contacts with their base copies); the main thread
    merges in memory (``SyncEngine.plan_linked``) and hands the writes back (``_write``: the
    bodies, stored already applied, and the merge's writes, in one transaction). Meanwhile the
    main thread goes on with the next chunk. Why the result is what applying the chunks one after
    another gives:

    - Only a chunk of contact changes of one connected location, each for a different contact
      already linked, goes this way; anything else (a create, a delete, an install event, a
      payload that is not a contact, a contact twice) is applied the usual way once the writer
      has finished (``apply_chunk``), and the chunk after it is read only then.
    - The next chunk is read before this one is written only when the two share no contact: the
      rows it reads are ones this write leaves alone. Otherwise it is read after the write. The
      chunk after it likewise, before both writes, when it shares no contact with either.
    - While the files are still parsed (the writer thread would idle), a parsed chunk is read
      ahead when no chunk before it holds any of its contacts (``read_ahead``): no write before
      its own touches its rows either. (Before it in its window: the windows before are written
      by the time a window's bodies are parsed again.)
    - A chunk applied the usual way may change anything (a contact created, a location
      disconnected): every chunk read before it is read again.
    - Another program (or ``serve``) may commit between a read and its write: the write checks
      SQLite's ``data_version`` inside its transaction and, if anything was committed meanwhile,
      rolls back; the chunk is then applied the usual way, reading inside the transaction.
    - Every statement of the writer thread runs as one step (rows travel as JSON arrays:
      ``Store.rows_statements``, ``Store.linked_json``), built and decoded by the main thread,
      so SQLite works without the GIL the whole time. Rows JSON cannot carry exactly make the
      chunk go the usual way.
    """

    def __init__(self, store: Store, region: str) -> None:
        self.store = store
        self.region = region
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ghlsync-writer")
        self._queued: list[Future[Any]] = []
        self._results: list[list[Replayed]] = []
        # Every dedup key of the chunks handed on so far (their bodies may not be stored yet).
        self._seen: set[str] = set()
        # The last chunk handed to the writer: (its write, its index, the chunk).
        self._writing: tuple[Future[bool], int, Chunk] | None = None
        # Chunks read while the files were parsed, by index; and every GHL id parsed so far.
        self._ahead: dict[int, Future[_Read]] = {}
        self._parsed_ids: set[str] = set()
        # What read_ahead found of each chunk it was told of: its GHL ids and its location.
        self._told: dict[int, tuple[set[str], str | None]] = {}
        # Told of the bodies handed on so far (to the writer thread, or applied), chunk by chunk.
        self.applied: Callable[[int], None] = lambda done: None
        self._handed_on = 0

    def __enter__(self) -> _Pipeline:
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(WRITER_SWITCH_INTERVAL)
        return self

    def __exit__(self, *exc: object) -> None:
        # Nothing may use the connection while the writer still does.
        self._writer.shutdown(wait=True, cancel_futures=True)
        sys.setswitchinterval(self._switch_interval)

    def read_ahead(self, index: int, chunk: Chunk) -> None:
        """While the files are parsed: read a parsed chunk's rows now, if no chunk before it
        holds any of its contacts, and the writer thread is not behind already (a write must not
        queue behind reads)."""
        ids, location_id = self._told[index] = _ghl_ids(chunk), _only_location(chunk)
        fresh = self._parsed_ids.isdisjoint(ids)
        self._parsed_ids |= ids
        behind = sum(not future.done() for future in self._ahead.values())
        if fresh and behind < READ_AHEAD_QUEUE and len(self._ahead) < READ_AHEAD_CHUNKS:
            future = self._submit_read(chunk, location_id, ids)
            if future is not None:
                self._ahead[index] = future

    def run(self, chunks: Sequence[Chunk]) -> list[Replayed]:
        """Apply every chunk in order (read_ahead was told of them, or none); what happened to
        each body. Once more for each window of a replay: every write of a window is done when
        it returns."""
        self._results = []
        told = [
            self._told.get(index) or (_ghl_ids(chunk), _only_location(chunk))
            for index, chunk in enumerate(chunks)
        ]
        ids = [chunk_ids for chunk_ids, _ in told]
        locations = [location_id for _, location_id in told]
        reading = self._ahead.pop(0, None)
        if chunks and reading is None:
            reading = self._submit_read(chunks[0], locations[0], ids[0])
        for index, chunk in enumerate(chunks):
            following = chunks[index + 1] if index + 1 < len(chunks) else None
            read = reading
            reading = self._ahead.pop(index + 1, None)
            if following is not None and reading is None and ids[index].isdisjoint(ids[index + 1]):
                # Its rows are ones this chunk's write leaves alone: read them before it.
                reading = self._submit_read(following, locations[index + 1], ids[index + 1])
            self._read_after_next(index, chunks, ids, locations)
            plan = self._plan(chunk, locations[index], read)
            self._seen.update(event.dedup_key for _, event in chunk)
            if self._settle():
                # The previous chunk was applied again after this one was read: read again.
                plan, reading = None, None
                self._ahead.clear()
            if plan is None:
                self._drain()
                self._results.append(apply_chunk(self.store, chunk, region=self.region))
                # The chunk may have changed what was read ahead.
                reading = None
                self._ahead.clear()
            else:
                self._results.append(plan.results)
                self._writing = (self._submit(self._write, plan), index, chunk)
            if following is not None and reading is None:
                # after this write
                reading = self._submit_read(following, locations[index + 1], ids[index + 1])
            self._handed_on += len(chunk)
            self.applied(self._handed_on)
        self._settle()
        # (the next window's chunks are numbered from 0 again, and no write is left to wait for)
        self._told.clear()
        self._parsed_ids.clear()
        return [r for results in self._results for r in results]

    # ---- main thread -----------------------------------------------------------------------

    def _read_after_next(
        self,
        index: int,
        chunks: Sequence[Chunk],
        ids: Sequence[set[str]],
        locations: Sequence[str | None],
    ) -> None:
        """Read the chunk after the next one now, before this chunk's write and the next one's,
        if neither of them holds any of its contacts: then a write that is late costs the main
        thread one wait (for that write) instead of two (for it, then for the read queued
        behind it)."""
        after_next = index + 2
        if after_next >= len(chunks) or after_next in self._ahead:
            return
        if ids[after_next].isdisjoint(ids[index]) and ids[after_next].isdisjoint(ids[index + 1]):
            future = self._submit_read(chunks[after_next], locations[after_next], ids[after_next])
            if future is not None:
                self._ahead[after_next] = future

    def _plan(
        self, chunk: Chunk, location_id: str | None, read: Future[_Read] | None
    ) -> _Plan | None:
        """The chunk (of ``location_id``: ``_only_location``) merged from its rows read ahead,
        or None to apply it the usual way."""
        fetched = read.result() if read is not None else None
        if location_id is None or fetched is None or fetched.linked is None:
            return None
        linked = decode_linked(fetched.linked)
        if linked is None:
            return None
        location = fetched.location
        if location is None or location["disconnected_at"]:
            return None
        fresh: list[tuple[str, WebhookEvent, GhlContact]] = []
        duplicates: set[int] = set()
        keys: set[str] = set()
        ghl_ids: set[str] = set()
        for n, (where, event) in enumerate(chunk):
            key = event.dedup_key
            if key in self._seen or key in fetched.stored_keys or key in keys:
                duplicates.add(n)
                continue
            keys.add(key)
            try:
                contact = validate_contact(event.contact_payload)
            except PydanticValidationError:
                return None
            if contact.id in ghl_ids or contact.id not in linked.contacts:
                return None
            ghl_ids.add(contact.id)
            fresh.append((where, event, contact))
        engine = SyncEngine(self.store, None, location_id=location_id, region=self.region)
        try:
            applied, writes = engine.plan_linked(
                [contact for _, _, contact in fresh],
                linked,
                event_times={contact.id: event.event_time for _, event, contact in fresh},
            )
        except Exception:  # a bad event: the usual way finds it and applies the others
            return None
        outcomes = iter(zip(applied.outcomes, applied.contact_ids, strict=True))
        received_at = utc_now()
        inbox_rows = []
        results = []
        for n, (where, event) in enumerate(chunk):
            if n in duplicates:
                results.append(
                    _replayed(where, event, contact_id=None, duplicate=True, outcome="unchanged")
                )
                continue
            merged, contact_id = next(outcomes)
            outcome = replay_outcome(merged)
            inbox_rows.append(
                (
                    event.dedup_key,
                    received_at,
                    event.location_id,
                    event.type,
                    event.raw,
                    dumps(event.headers) if event.headers else "{}",  # (a bare body has none)
                    inbox_status(outcome),
                    outcome,
                    writes.now,
                )
            )
            results.append(
                _replayed(where, event, contact_id=contact_id, duplicate=False, outcome=outcome)
            )
        statements = [
            *self.store.rows_statements(_INBOX_INSERT, inbox_rows, blobs={_BODY_COLUMN}),
            *writes.statements(self.store, one_statement=True),
        ]
        return _Plan(fetched.version, statements, results)

    def _settle(self) -> bool:
        """Wait for the last write; True when it was stale and its chunk applied again."""
        if self._writing is None:
            return False
        future, index, chunk = self._writing
        self._writing = None
        if future.result():
            return False
        self._drain()
        self._results[index] = apply_chunk(self.store, chunk, region=self.region)
        return True

    def _submit(self, job: Any, *args: Any) -> Future[Any]:
        # (jobs done are let go, but for a failure _drain is to raise: a read's result holds its
        # chunk's rows)
        self._queued = [f for f in self._queued if not f.done() or f.exception() is not None]
        future = self._writer.submit(job, *args)
        self._queued.append(future)
        return future

    def _submit_read(
        self, chunk: Chunk, location_id: str | None, ghl_ids: set[str]
    ) -> Future[_Read] | None:
        if location_id is None:
            return None
        keys = [event.dedup_key for _, event in chunk]
        return self._submit(self._read, location_id, list(ghl_ids), keys)

    def _drain(self) -> None:
        """Wait until the writer has nothing left to do (then the main thread may use SQLite)."""
        for future in self._queued:
            future.result()
        self._queued.clear()

    # ---- writer thread ---------------------------------------------------------------------

    def _read(self, location_id: str, ghl_ids: list[str], keys: list[str]) -> _Read:
        store = self.store
        return _Read(
            version=store.data_version(),
            location=store.get_location(location_id),
            stored_keys={
                row[0]
                for row in store.rows_in("SELECT dedup_key FROM inbox WHERE dedup_key IN", keys)
            },
            linked=store.linked_json(location_id, ghl_ids),
        )

    def _write(self, plan: _Plan) -> bool:
        """Store the chunk's bodies (applied) and its merge's writes; False if stale."""
        try:
            with self.store.write():
                if self.store.data_version() != plan.version:
                    raise _Stale
                self.store.run(plan.statements)
        except _Stale:
            return False
        return True


def _only_location(chunk: Chunk) -> str | None:
    """The one location every event of the chunk is for, if there is one."""
    locations = {event.location_id for _, event in chunk}
    location_id = locations.pop() if len(locations) == 1 else None
    if location_id is None or any(event.type not in CONTACT_EVENTS for _, event in chunk):
        return None
    return location_id


def _ghl_ids(chunk: Chunk) -> set[str]:
    """The GHL ids of a chunk's events (an id that is not text makes a chunk go the usual way)."""
    return {i for _, event in chunk if isinstance(i := event.body.get("id"), str)}
