"""The SQLite file: schema (as migrations), transactions, and every query ghlsync runs.

Why it looks like this:
- Other programs read and write the ``contacts`` table directly, so it holds only the contract's
  columns (plus ``raw``); sync bookkeeping lives beside it: ``sync_state`` (the base copy: last
  values both sides agreed on), ``outbox`` (contacts with local changes to push), ``conflicts``,
  ``contact_flags``, ``sync_cursors``, ``sync_runs``, ``inbox`` and ``locations``.
- A change written by another program is caught by triggers that queue the contact in ``outbox`` in
  that program's own transaction. ghlsync's own writes set ``_ghlsync_guard.suppress`` inside their
  ``BEGIN IMMEDIATE`` transaction, so the triggers stay quiet for them; committed state always has
  ``suppress = 0`` (a crash rolls the flag back with everything else).
- WAL, a busy timeout and ``BEGIN IMMEDIATE`` let the webhook receiver and a timer run write the
  same file without "database is locked" surfacing. The file is created 0600.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import operator
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from ghlsync_cli.errors import (
    ConfigError,
    SchemaTooNewError,
    StorageError,
    UnusableDatabaseError,
)
from ghlsync_cli.jsontext import (
    dumps,
    dumps_normalised,
    holds_float,
    loads,
    may_hold_long_integer,
)
from ghlsync_cli.mapping import CONTACT_FIELDS, SYNC_FIELDS, join_name

# The contract's fields plus ``raw`` (GHL keys ghlsync does not map).
CONTACT_COLUMNS: tuple[str, ...] = (*CONTACT_FIELDS, "raw")
_COLUMN_SET = frozenset(CONTACT_COLUMNS)
_SYNC_FIELD_SET = frozenset(SYNC_FIELDS)
# An encoded row's values in CONTACT_COLUMNS order (one C-level call per row).
_column_values = operator.itemgetter(*CONTACT_COLUMNS)
# A new contact's columns but its timestamps, which are added when it is inserted (NewContact).
_STAMPS = ("created_at", "updated_at")
_NEW_COLUMNS: tuple[str, ...] = tuple(c for c in CONTACT_COLUMNS if c not in _STAMPS)
_new_column_values = operator.itemgetter(*_NEW_COLUMNS)
_NEW_ID, _NEW_TAGS, _NEW_DND, _NEW_RAW = (
    _NEW_COLUMNS.index(c) for c in ("id", "tags", "dnd", "raw")
)
_STATE_COLUMNS = ("contact_id", "base", "remote_updated_at", "synced_at")
_UPSERT_STATE = """ON CONFLICT (contact_id) DO UPDATE SET base = excluded.base,
                 remote_updated_at = coalesce(excluded.remote_updated_at,
                                              sync_state.remote_updated_at),
                 synced_at = excluded.synced_at"""
_UPSERT_OUTBOX = """ON CONFLICT (contact_id) DO UPDATE SET queued_at = excluded.queued_at,
                  reason = excluded.reason, failed = 0, last_error = NULL"""
STATUSES = ("active", "inactive", "deleted")
_WATCHED = (
    "first_name, last_name, name, email, phone, company, address1, city, state, "
    "postal_code, country, tags, status"
)
_NOW_SQL = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"

# Store.linked_json's sync_state columns, and whether any row holds a float, which JSON text would
# carry as SQLite's rounding of it. Only dnd can: every other column has TEXT affinity, which
# stores a number given to it as text.
_LINKED_STATE = ", ".join(f"json(s.{c})" if c == "base" else f"s.{c}" for c in _STATE_COLUMNS)
_LINKED_FLOAT = "typeof(c.dnd) = 'real'"
# The columns of a contacts row beside its synced fields.
_OTHER_COLUMNS = tuple(c for c in CONTACT_COLUMNS if c not in _SYNC_FIELD_SET)


def _agreed_sql() -> str:
    """Whether a contacts row ``c`` holds exactly its base copy ``s.base`` (what was last agreed).

    Its synced columns, written as a base copy is (keys sorted, compact), must be the base's text
    byte for byte, and its name the join of its first and last names, or null: then the row as
    ``decode_contact`` gives it has the base's values, and ``merge.local_values`` of it is the
    base. Any other spelling (padding, dnd as text, tags in other JSON) only fails the test, and
    the row is read and merged whole.

    The tags come last (the base's last key) as their own text, unparsed, when it is a list: a
    text that ends the object exactly where a valid base copy does is the JSON text of that list.
    """
    fields = sorted(SYNC_FIELDS)
    if fields[-1] != "tags":  # pragma: no cover (the tags' text must close the object)
        raise AssertionError(fields)
    pairs = []
    for field in fields[:-1]:
        if field == "dnd":
            value = "CASE WHEN c.dnd IS 1 THEN json('true') WHEN c.dnd IS 0 THEN json('false') END"
        else:
            value = f"c.{field}"
        pairs.append(f"'{field}', {value}")
    # (rtrim drops the one closing brace: the value before it, text or null, ends otherwise)
    synced = f"""rtrim(json_object({", ".join(pairs)}), '}}') || ',"tags":' || c.tags || '}}'"""
    joined = (
        "CASE WHEN c.first_name <> '' AND c.last_name <> '' "
        "THEN c.first_name || ' ' || c.last_name "
        "WHEN c.first_name <> '' THEN c.first_name WHEN c.last_name <> '' THEN c.last_name END"
    )
    return f"({synced} = s.base AND substr(c.tags, 1, 1) = '[' AND c.name IS {joined})"


# Store.linked_json's row: 1 and the columns beside the synced fields for a row that holds its
# base copy (decode_linked takes its synced values from the base), else 0 and every column; then
# each sync_state column.
_LINKED_ROW = (
    f"CASE WHEN {_agreed_sql()} "
    f"THEN json_array(1, {', '.join(f'c.{c}' for c in _OTHER_COLUMNS)}, {_LINKED_STATE}) "
    f"ELSE json_array(0, {', '.join(f'c.{c}' for c in CONTACT_COLUMNS)}, {_LINKED_STATE}) END"
)
# Page cache per connection. SQLite's 2 MiB default is too small for the contact indexes of a big
# location: every page of a pull re-reads and re-writes index pages it just evicted. 16 MiB is a
# fixed bound, so memory stays flat however many contacts there are.
CACHE_KIB = 16 * 1024

# WAL pages before SQLite copies them back into the database file (its default is 1,000).
DEFAULT_CHECKPOINT_PAGES = 1_000
# During bulk work a background thread copies the WAL back (see Store.bulk_checkpoints); the
# writing connection checkpoints by itself only if the WAL reaches this many pages (~200 MiB),
# a bound for when the thread cannot keep up.
BULK_CHECKPOINT_PAGES = 50_000
# How often the background thread checkpoints, in seconds.
CHECKPOINT_INTERVAL = 0.1
# The most of the database file bulk updates read through a memory map (Store.mapped_reads).
MAPPED_READ_BYTES = 1 << 30
# PRAGMA temp_store's value for temporary files held in memory (Store.temp_in_memory).
TEMP_STORE_MEMORY = 2

migrations = Migrations("ghlsync")


@migrations(name="m001_initial")
def _m001_initial(db: Database) -> None:
    changed = " OR ".join(f"OLD.{c.strip()} IS NOT NEW.{c.strip()}" for c in _WATCHED.split(","))
    for statement in (
        """CREATE TABLE locations (
            location_id TEXT PRIMARY KEY NOT NULL,
            name TEXT,
            token_kind TEXT,
            token_expires_at TEXT,
            connected_at TEXT NOT NULL,
            disconnected_at TEXT,
            default_region TEXT
        )""",
        f"""CREATE TABLE contacts (
            id TEXT PRIMARY KEY NOT NULL DEFAULT (lower(hex(randomblob(6)))),
            location_id TEXT NOT NULL,
            ghl_id TEXT,
            first_name TEXT,
            last_name TEXT,
            name TEXT,
            email TEXT,
            phone TEXT,
            company TEXT,
            address1 TEXT,
            city TEXT,
            state TEXT,
            postal_code TEXT,
            country TEXT,
            tags TEXT NOT NULL DEFAULT '[]',
            dnd INTEGER NOT NULL DEFAULT 0,
            source TEXT,
            status TEXT NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'inactive', 'deleted')),
            raw TEXT NOT NULL DEFAULT '{{}}',
            created_at TEXT NOT NULL DEFAULT ({_NOW_SQL}),
            updated_at TEXT NOT NULL DEFAULT ({_NOW_SQL})
        )""",
        "CREATE UNIQUE INDEX contacts_ghl_id ON contacts (location_id, ghl_id)",
        "CREATE INDEX contacts_email ON contacts (location_id, lower(email))",
        "CREATE INDEX contacts_phone ON contacts (location_id, phone)",
        "CREATE INDEX contacts_status ON contacts (location_id, status)",
        """CREATE TABLE sync_state (
            contact_id TEXT PRIMARY KEY NOT NULL,
            base TEXT NOT NULL,
            remote_updated_at TEXT,
            synced_at TEXT NOT NULL
        )""",
        """CREATE TABLE outbox (
            contact_id TEXT PRIMARY KEY NOT NULL,
            location_id TEXT,
            queued_at TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT 'local',
            attempts INTEGER NOT NULL DEFAULT 0,
            create_started_at TEXT,
            last_error TEXT,
            last_error_at TEXT,
            failed INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX outbox_location ON outbox (location_id, failed)",
        """CREATE TABLE conflicts (
            id INTEGER PRIMARY KEY,
            contact_id TEXT NOT NULL,
            location_id TEXT NOT NULL,
            field TEXT NOT NULL,
            local_value TEXT,
            ghl_value TEXT,
            base_value TEXT,
            winner TEXT NOT NULL DEFAULT 'ghl',
            source TEXT NOT NULL,
            detected_at TEXT NOT NULL
        )""",
        "CREATE INDEX conflicts_location ON conflicts (location_id, detected_at)",
        """CREATE TABLE contact_flags (
            contact_id TEXT NOT NULL,
            flag TEXT NOT NULL,
            detail TEXT,
            created_at TEXT NOT NULL,
            PRIMARY KEY (contact_id, flag)
        )""",
        """CREATE TABLE sync_cursors (
            location_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            search_after TEXT,
            high_water TEXT,
            fetched INTEGER NOT NULL DEFAULT 0,
            total INTEGER,
            started_at TEXT,
            updated_at TEXT,
            completed_at TEXT,
            PRIMARY KEY (location_id, kind)
        )""",
        """CREATE TABLE sync_runs (
            id INTEGER PRIMARY KEY,
            location_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            outcome TEXT NOT NULL DEFAULT 'running',
            counts TEXT NOT NULL DEFAULT '{}',
            error TEXT
        )""",
        "CREATE INDEX sync_runs_location ON sync_runs (location_id, kind, id)",
        """CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT)""",
        """CREATE TABLE _ghlsync_guard (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            suppress INTEGER NOT NULL DEFAULT 0
        )""",
        "INSERT INTO _ghlsync_guard (id, suppress) VALUES (1, 0)",
        # Another program's UPDATE of a synced column queues the contact for push.
        f"""CREATE TRIGGER contacts_queue_external_update
            AFTER UPDATE OF {_WATCHED} ON contacts
            WHEN (SELECT suppress FROM _ghlsync_guard WHERE id = 1) = 0 AND ({changed})
            BEGIN
                INSERT INTO outbox (contact_id, location_id, queued_at, reason)
                VALUES (NEW.id, NEW.location_id, {_NOW_SQL}, 'external')
                ON CONFLICT (contact_id) DO UPDATE
                    SET queued_at = excluded.queued_at, failed = 0, last_error = NULL;
                UPDATE contacts SET updated_at = {_NOW_SQL} WHERE id = NEW.id;
            END""",
        # Contacts are never erased: another program's DELETE becomes a local tombstone.
        """CREATE TRIGGER contacts_delete_is_tombstone
            BEFORE DELETE ON contacts
            WHEN (SELECT suppress FROM _ghlsync_guard WHERE id = 1) = 0
            BEGIN
                UPDATE contacts SET status = 'deleted' WHERE id = OLD.id;
                SELECT RAISE(IGNORE);
            END""",
        # Another program's INSERT is a new local contact: queue it for creation in GHL.
        f"""CREATE TRIGGER contacts_queue_external_insert
            AFTER INSERT ON contacts
            WHEN (SELECT suppress FROM _ghlsync_guard WHERE id = 1) = 0
            BEGIN
                INSERT INTO outbox (contact_id, location_id, queued_at, reason)
                VALUES (NEW.id, NEW.location_id, {_NOW_SQL}, 'external')
                ON CONFLICT (contact_id) DO UPDATE
                    SET queued_at = excluded.queued_at, failed = 0, last_error = NULL;
            END""",
    ):
        db.execute(statement)


@migrations(name="m002_inbox")
def _m002_inbox(db: Database) -> None:
    for statement in (
        """CREATE TABLE inbox (
            id INTEGER PRIMARY KEY,
            dedup_key TEXT NOT NULL UNIQUE,
            received_at TEXT NOT NULL,
            location_id TEXT,
            type TEXT,
            body BLOB NOT NULL,
            headers TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'pending',
            outcome TEXT,
            processed_at TEXT
        )""",
        "CREATE INDEX inbox_pending ON inbox (status, id)",
    ):
        db.execute(statement)


@migrations(name="m003_outbox_create_values")
def _m003_outbox_create_values(db: Database) -> None:
    # The values an interrupted create sent: a retry looks for the contact by them, not by values
    # the contact was edited to since.
    db.execute("ALTER TABLE outbox ADD COLUMN create_values TEXT")


class NewContact(NamedTuple):
    """A contact first seen in GHL, with its base copy, encoded for ``Store.insert_new_contacts``.

    Encoding needs neither the database nor the clock (the timestamps are added on insert), so
    pulls encode every contact in the read-ahead thread, while the merging thread is busy in
    SQLite; the merging thread then only decides which contacts are new.
    """

    contact_id: str
    columns: tuple[Any, ...]  # the contacts row in _NEW_COLUMNS order, encoded
    base: str  # sync_state.base
    remote_updated_at: str | None

    @classmethod
    def encode(
        cls, row: Mapping[str, Any], base: Mapping[str, Any], remote_updated_at: str | None
    ) -> NewContact:
        """``row``: every column but the timestamps (tags a list, dnd a bool, raw a dict);
        ``base`` and the tags: normalised synced values (see ``dumps_normalised``)."""
        # encode_contact's work, for a row known to hold exactly these columns.
        columns = list(_new_column_values(row))
        columns[_NEW_TAGS] = dumps_normalised(sorted(columns[_NEW_TAGS] or []))
        columns[_NEW_DND] = 1 if columns[_NEW_DND] else 0
        columns[_NEW_RAW] = dumps(columns[_NEW_RAW] or {})
        return cls(
            row["id"], tuple(columns), _encode_base(base, normalised=True), remote_updated_at
        )

    def with_id(self, contact_id: str) -> NewContact:
        """The same contact under another local id."""
        columns = list(self.columns)
        columns[_NEW_ID] = contact_id
        return self._replace(contact_id=contact_id, columns=tuple(columns))


class Linked(NamedTuple):
    """Linked contacts keyed by GHL id, and their sync_state rows keyed by local id, as
    ``Store.contacts_by_ghl_ids`` and ``Store.get_states`` give them; ``agreed``: the local ids
    of rows known to hold exactly their base copy (``merge.local_values`` of them is the base)."""

    contacts: dict[str, dict[str, Any]]
    states: dict[str, dict[str, Any]]
    agreed: frozenset[str] = frozenset()


# The rows of a one-statement write (or read), parameter ?1: a JSON array as text, or as its
# UTF-8 bytes (Store._json_text), cast to text (a blob would be read as SQLite's binary JSON by
# its newer versions).
_JSON_ROWS = "json_each(CAST(?1 AS TEXT))"


class _JsonRows(NamedTuple):
    """Rows for a one-statement write (``Store._json_rows``): the JSON array of the columns that
    differ from row to row is parameter ?1, and each column with one value in every row is a
    parameter of its own."""

    constants: dict[int, int]  # column → its parameter's number
    places: dict[int, int]  # any other column → its place in each row of the JSON array
    params: tuple[Any, ...]
    # A column of bytes → the number of the parameter holding them all, one after another: each
    # row carries where its value begins (from 1) at the column's place, and its length next.
    joined: dict[int, int]

    def pick(self, column: int, row: str = "value") -> str:
        """The SQL giving ``column``'s value for the JSON row ``row`` (of ``_JSON_ROWS``)."""
        number = self.constants.get(column)
        if number is not None:
            return f"?{number}"
        place = self.places[column]
        extract = f"json_extract({row}, '$[{place}]')"
        number = self.joined.get(column)
        if number is None:
            return extract
        return f"substr(?{number}, {extract}, json_extract({row}, '$[{place + 1}]'))"


class Statement(NamedTuple):
    """One write, built ahead of running it (``Store.run``): ``sql`` with ``params``, or, when
    ``rows`` is given, with each of them (``executemany``)."""

    sql: str
    params: Sequence[Any] = ()
    rows: Sequence[Sequence[Any]] | None = None


def contact_id_for(location_id: str, ghl_id: str, attempt: int = 0) -> str:
    """The local id of a contact first seen in GHL: stable and derived from its GHL id.

    Ids are 48 bits, so in a database of a million contacts two of them share one with a
    probability of about 1 in 500. The id another contact already holds is not used again:
    ``attempt`` 1, 2, … derive the next candidates (see ``SyncEngine._assign_ids``).
    """
    key = f"{location_id}/{ghl_id}" if attempt == 0 else f"{location_id}/{ghl_id}/{attempt}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class Store:
    """The ghlsync database. Build it with :meth:`open` (a file) or :meth:`memory` (tests)."""

    def __init__(self, conn: sqlite3.Connection, *, path: str | None = None) -> None:
        self.conn = conn
        self.db = Database(conn)
        self.path = path or ":memory:"
        self._depth = 0
        self._json_functions: bool | None = None  # whether SQLite has json_each (probed once)
        self._utf8: bool | None = None  # whether the database keeps text in UTF-8 (probed once)

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, busy_timeout_ms: int = 15000, create: bool = True) -> Store:
        """Open (creating 0600 if needed) and migrate the database at ``path``."""
        path = path.expanduser()
        if not path.exists():
            if not create:
                raise ConfigError(
                    f"No database at {path}.", hint="Run ghlsync connect first, or check --db."
                )
            _create_private_file(path)
        try:
            conn = sqlite3.connect(
                str(path),
                isolation_level=None,
                timeout=busy_timeout_ms / 1000,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise _storage_error(exc, str(path)) from None
        store = cls(conn, path=str(path))
        try:
            store._configure(busy_timeout_ms)
            store.migrate()
        except BaseException:
            # Refused (newer schema, read-only, not a database): do not keep the file open.
            store.close()
            raise
        return store

    @classmethod
    def memory(cls) -> Store:
        """A migrated in-memory database."""
        store = cls(sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False))
        store._configure(0)
        store.migrate()
        return store

    def _configure(self, busy_timeout_ms: int) -> None:
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if self.path != ":memory:":
                mode = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
                if mode != "wal":
                    self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except sqlite3.DatabaseError as exc:
            raise _storage_error(exc, self.path) from None

    def migrate(self) -> None:
        """Apply pending migrations; refuse a database from a newer ghlsync."""
        try:
            known = {m.name for m in migrations._migrations}
            applied = {m.name for m in migrations.applied(self.db)}
            unknown = sorted(applied - known)
            if unknown:
                raise SchemaTooNewError(
                    f"The database {self.path} was written by a newer ghlsync "
                    f"(unknown migrations: {', '.join(unknown)}).",
                    unknown_migrations=unknown,
                )
            if migrations.pending(self.db):
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    # Another process may have migrated while we waited for the lock.
                    for migration in migrations.pending(self.db):
                        migration.fn(self.db)
                        migrations._record_applied(self.db, migration.name)
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise _storage_error(exc, self.path) from None

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL when the last one closes)."""
        with suppress(sqlite3.Error):
            self.conn.close()

    # ---- transactions --------------------------------------------------------------------

    @contextmanager
    def bulk_checkpoints(self) -> Iterator[None]:
        """Copy the WAL back into the database from a background thread inside the block.

        A checkpoint copies every page committed since the last one into the database file and
        syncs both files: in bulk updates (a replay) that is a third of the writing connection's
        time. A thread with its own connection does it instead, every ``CHECKPOINT_INTERVAL``,
        beside the writer: a passive checkpoint never blocks a writer or waits for one, and
        SQLite runs it without the GIL. The writing connection keeps a high automatic
        checkpoint (``BULK_CHECKPOINT_PAGES``) as a bound, and gets its own (SQLite's default,
        ``DEFAULT_CHECKPOINT_PAGES``) back after.
        """
        if self.path == ":memory:":
            yield
            return
        with self._pragma_inside("wal_autocheckpoint", BULK_CHECKPOINT_PAGES):
            stop = threading.Event()
            checkpointer = threading.Thread(
                target=_checkpoint_until,
                args=(self.path, stop),
                name="ghlsync-checkpoint",
                daemon=True,
            )
            checkpointer.start()
            try:
                yield
            finally:
                stop.set()
                checkpointer.join()

    @contextmanager
    def mapped_reads(self) -> Iterator[None]:
        """Read the database file through a memory map inside the block (up to
        ``MAPPED_READ_BYTES``), and as before after it.

        Bulk updates of contacts in random order (a replay) read a page of each table and index
        per contact, mostly not in the page cache: through the map each is a memory access
        instead of a system call and a copy. Writes still go through the page cache and the WAL.
        Not for pulls: the mapped pages count in the process's resident memory, which must stay
        flat however big the location (they are the file's own pages, which the system reclaims
        at will).
        """
        if self.path == ":memory:":
            yield
            return
        with self._pragma_inside("mmap_size", MAPPED_READ_BYTES):
            yield

    @contextmanager
    def temp_in_memory(self) -> Iterator[None]:
        """Keep SQLite's temporary files in memory inside the block (``temp_store``), and as
        before after it.

        A statement that changes many rows first saves each page it changes in a statement
        journal, to undo that statement alone if it fails halfway. Past 64 KiB SQLite spills the
        journal to a temporary file: a replay's one-statement writes (``Store.rows_statements``,
        a thousand contacts each) made two thousand file writes a chunk, about a tenth of the
        writer thread's time, and a pull's spilled at every page. In memory a statement's journal
        is a few MiB at most (a page or a chunk of rows), freed with it. Only for such a block: a
        big sort or temporary index would take memory too.
        """
        with self._pragma_inside("temp_store", TEMP_STORE_MEMORY):
            yield

    @contextmanager
    def _pragma_inside(self, name: str, value: int) -> Iterator[None]:
        """``PRAGMA name = value`` on this connection inside the block, its value before after."""
        before = int(self.scalar(f"PRAGMA {name}"))
        self.conn.execute(f"PRAGMA {name} = {value}")
        try:
            yield
        finally:
            with suppress(sqlite3.Error):
                self.conn.execute(f"PRAGMA {name} = {before}")

    @contextmanager
    def write(self) -> Iterator[Store]:
        """A write transaction (``BEGIN IMMEDIATE``); nested calls become savepoints.

        Inside, the external-change triggers are silenced: ghlsync queues its own pushes.
        """
        if self._depth:
            name = f"sp{self._depth}"
            self.conn.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
                raise
            finally:
                self._depth -= 1
            self.conn.execute(f"RELEASE {name}")
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("UPDATE _ghlsync_guard SET suppress = 1 WHERE id = 1")
        except sqlite3.DatabaseError as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise _storage_error(exc, self.path) from None
        self._depth = 1
        try:
            yield self
            self.conn.execute("UPDATE _ghlsync_guard SET suppress = 0 WHERE id = 1")
            self.conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise _storage_error(exc, self.path) from None
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    def snapshot(self) -> Store:
        """A private in-memory copy of the database (for planning a dry run without locking)."""
        copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        try:
            self.conn.backup(copy)
        except sqlite3.DatabaseError as exc:
            copy.close()
            raise _storage_error(exc, self.path) from None
        return Store(copy)

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        """Run one statement, mapping SQLite failures to StorageError."""
        try:
            return self.conn.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            raise _storage_error(exc, self.path) from None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each row of parameters (nothing to do for no rows)."""
        if not rows:
            return
        try:
            self.conn.executemany(sql, rows)
        except sqlite3.DatabaseError as exc:
            raise _storage_error(exc, self.path) from None

    def run(self, statements: Iterable[Statement]) -> None:
        """Run statements built ahead (the ``*_statements`` methods) in order."""
        for statement in statements:
            if statement.rows is None:
                self.execute(statement.sql, statement.params)
            else:
                self.executemany(statement.sql, statement.rows)

    def write_rows(
        self,
        insert: str,
        rows: Sequence[Sequence[Any]],
        conflict: str = "",
        *,
        blobs: Collection[int] = (),
    ) -> None:
        """``insert`` (``INSERT INTO t (columns)``) of every row, then ``conflict`` (an upsert
        clause), as one statement: see ``rows_statements``."""
        self.run(self.rows_statements(insert, rows, conflict, blobs=blobs))

    def rows_statements(
        self,
        insert: str,
        rows: Sequence[Sequence[Any]],
        conflict: str = "",
        *,
        blobs: Collection[int] = (),
        one_statement: bool = True,
    ) -> list[Statement]:
        """``write_rows`` as a statement: the rows travel to SQLite as one JSON array (or, with
        ``one_statement`` False, as the rows of an ``executemany``).

        Why not ``executemany``: it runs one step per row, and each step releases and retakes the
        GIL, so during a pull the read-ahead thread (validating and preparing the next page) and
        the inserts take turns instead of running side by side. One statement keeps SQLite busy
        without the GIL for the whole batch. The rows stored are the same: ``json_extract`` gives
        back each text, integer and null exactly as bound (see ``_rows_as_json``); rows JSON
        cannot carry exactly, and SQLite builds without JSON functions, go through
        ``executemany``. ``blobs``: the columns whose values are bytes (stored as BLOBs).
        """
        if not rows:
            return []
        width = len(rows[0])
        carried = self._json_rows(rows, width, blobs) if one_statement else None
        if carried is None:
            marks = ", ".join("?" * width)
            return [Statement(f"{insert} VALUES ({marks}) {conflict}", rows=rows)]
        picks = ", ".join(carried.pick(i) for i in range(width))
        # "WHERE true" keeps an upsert clause from being read as part of the join.
        return [
            Statement(
                f"{insert} SELECT {picks} FROM {_JSON_ROWS} WHERE true {conflict}", carried.params
            )
        ]

    def _json_rows(
        self, rows: Sequence[Sequence[Any]], width: int, blobs: Collection[int] = ()
    ) -> _JsonRows | None:
        """``rows`` for a one-statement write, or None to use ``executemany`` (no JSON functions,
        rows not all ``width`` long, which executemany refuses, or values JSON cannot carry
        exactly: see ``_rows_as_json``).

        A column with one value in every row (a batch's timestamp, its status) is bound once as a
        parameter, exactly as ``executemany`` binds it, instead of being carried in every row:
        SQLite then extracts only the columns that differ (half the work of storing a chunk of
        webhook bodies). ``blobs``: columns holding bytes (anything else there goes through
        ``executemany``). Their values are bound as one blob, which SQLite cuts with ``substr``
        (a blob's bytes, whatever the database's text encoding): a chunk of webhook bodies would
        otherwise be decoded, escaped into the array and unescaped by SQLite.
        """
        if not self._has_json_functions() or not _all_of_width(rows, width):
            return None
        constants: dict[int, int] = {}
        places: dict[int, int] = {}
        varying: list[list[Any]] = []
        joined: dict[int, bytes] = {}
        for i in range(width):
            column = list(map(operator.itemgetter(i), rows))
            if _one_value(column):
                constants[i] = len(constants) + 2  # its parameter: ?1 is the JSON array
                continue
            places[i] = len(varying)
            if i in blobs:
                if set(map(type, column)) != {bytes}:
                    return None
                lengths = list(map(len, column))
                varying.append(list(itertools.accumulate(lengths[:-1], initial=1)))
                varying.append(lengths)
                joined[i] = b"".join(column)
            else:
                varying.append(column)
        carried = list(zip(*varying, strict=True)) if varying else [()] * len(rows)
        array = _rows_as_json(carried)  # (one width: zipped columns)
        if array is None:
            return None
        return _JsonRows(
            constants,
            places,
            (self._json_text(array), *(rows[0][i] for i in constants), *joined.values()),
            {column: len(constants) + 2 + n for n, column in enumerate(joined)},
        )

    def _json_text(self, array: bytes) -> bytes | str:
        """A JSON array of rows (``_rows_as_json``) as the parameter ``_JSON_ROWS`` reads: its
        UTF-8 bytes as they are when the database keeps text in UTF-8, so a megabyte of rows is
        neither decoded into a str nor encoded back when bound; else a str."""
        return array if self._keeps_utf8() else array.decode()

    def _keeps_utf8(self) -> bool:
        """Whether the database keeps its text in UTF-8, as every database ghlsync creates does
        (another program may have created the file in UTF-16: then SQLite reads a blob cast to
        text, and gives text cast to a blob, in UTF-16)."""
        if self._utf8 is None:
            self._utf8 = self.scalar("PRAGMA encoding") == "UTF-8"
        return self._utf8

    def _has_json_functions(self) -> bool:
        if self._json_functions is None:
            try:
                self.conn.execute("SELECT json_extract('[1]', '$[0]')").fetchone()
                self._json_functions = True
            except sqlite3.OperationalError:
                self._json_functions = False
        return self._json_functions

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[dict[str, Any]]:
        """Rows as dicts."""
        cursor = self.execute(sql, params)
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def rows_in(self, select: str, keys: Iterable[Any]) -> list[tuple[Any, ...]]:
        """Rows of ``select`` (a query ending in ``IN``) for the distinct ``keys``, asked 500 at a
        time (SQLite caps the parameters of one statement)."""
        rows: list[tuple[Any, ...]] = []
        for chunk in _chunks(list(dict.fromkeys(keys)), 500):
            marks = ",".join("?" * len(chunk))
            rows.extend(self.execute(f"{select} ({marks})", chunk).fetchall())
        return rows

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row, or None."""
        row = self.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # ---- meta ----------------------------------------------------------------------------

    def next_local_sequence(self) -> int:
        """A counter for ids of contacts created locally (deterministic, unlike uuid4)."""
        current = int(self.scalar("SELECT value FROM meta WHERE key = 'local_seq'") or 0) + 1
        self.execute(
            "INSERT INTO meta (key, value) VALUES ('local_seq', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(current),),
        )
        return current

    # ---- locations -----------------------------------------------------------------------

    def save_location(
        self,
        location_id: str,
        *,
        token_kind: str,
        now: str,
        name: str | None = None,
        token_expires_at: str | None = None,
    ) -> None:
        """Record (or re-record) a connected location."""
        self.execute(
            """INSERT INTO locations (location_id, name, token_kind, token_expires_at, connected_at)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (location_id) DO UPDATE SET
                 name = coalesce(excluded.name, locations.name),
                 token_kind = excluded.token_kind,
                 token_expires_at = excluded.token_expires_at,
                 connected_at = excluded.connected_at,
                 disconnected_at = NULL""",
            (location_id, name, token_kind, token_expires_at, now),
        )

    def set_token_expiry(self, location_id: str, token_expires_at: str | None) -> None:
        """Record when a location's access token expires (after an OAuth refresh)."""
        self.execute(
            "UPDATE locations SET token_expires_at = ? WHERE location_id = ?",
            (token_expires_at, location_id),
        )

    def mark_disconnected(self, location_id: str, *, now: str) -> bool:
        """Mark a location disconnected (its contacts stay); False when it was unknown."""
        cursor = self.execute(
            "UPDATE locations SET disconnected_at = ? WHERE location_id = ?", (now, location_id)
        )
        return cursor.rowcount > 0

    def get_location(self, location_id: str) -> dict[str, Any] | None:
        """One location row."""
        rows = self.query("SELECT * FROM locations WHERE location_id = ?", (location_id,))
        return rows[0] if rows else None

    def list_locations(self, *, connected_only: bool = False) -> list[dict[str, Any]]:
        """Locations, oldest first."""
        where = "WHERE disconnected_at IS NULL" if connected_only else ""
        return self.query(f"SELECT * FROM locations {where} ORDER BY connected_at, location_id")

    # ---- contacts ------------------------------------------------------------------------

    def get_contact(self, contact_id: str) -> dict[str, Any] | None:
        """One contact with tags decoded, or None."""
        rows = self.query("SELECT * FROM contacts WHERE id = ?", (contact_id,))
        return decode_contact(rows[0]) if rows else None

    def contacts_by_ghl_ids(
        self, location_id: str, ghl_ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Linked contacts keyed by GHL id."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(ghl_ids), 500):
            marks = ",".join("?" * len(chunk))
            for row in self.query(
                f"SELECT * FROM contacts WHERE location_id = ? AND ghl_id IN ({marks})",
                (location_id, *chunk),
            ):
                found[row["ghl_id"]] = decode_contact(row)
        return found

    def linked_json(self, location_id: str, ghl_ids: Sequence[str]) -> bytes | None:
        """``contacts_by_ghl_ids`` and ``get_states`` of those contacts in one statement, as JSON
        text (UTF-8 bytes) for ``decode_linked``; None when JSON cannot carry the rows (see below).

        One statement runs as one step: SQLite reads every row without taking the GIL back in
        between, so a thread can read ahead beside a busy one (``ghlsync_cli.sync.replay``), and
        turning the text into rows is left to that busy thread. The text comes as SQLite holds it
        in a UTF-8 database: decoding it into a str, with the GIL, to encode it again for the
        JSON reader would copy about a megabyte per chunk twice for nothing. The contract's
        columns come back (not any a user added). JSON holds text, integers and null exactly; a
        blob another program stored in a column cannot be carried, nor a base copy that is not
        JSON, nor a float in a column (SQLite writes its own rounding of it), nor an integer
        beyond 64 bits in a base copy (by ``decode_linked``): None for those.

        A row that holds exactly its base copy (nobody edited it since it was last synced: most
        rows) comes without its synced columns, which are the base's values: that is less text
        to read and fewer values to decode, and ``Linked.agreed`` tells the merge so.
        """
        keys = _rows_as_json([(k,) for k in ghl_ids])
        if keys is None or not self._has_json_functions():
            return None
        utf8 = self._keeps_utf8()
        rows = f"json_group_array({_LINKED_ROW})"
        try:
            text, has_float = self.conn.execute(
                f"SELECT {f'CAST({rows} AS BLOB)' if utf8 else rows}, max({_LINKED_FLOAT}) "
                "FROM contacts c LEFT JOIN sync_state s ON s.contact_id = c.id "
                "WHERE c.location_id = ?2 AND c.ghl_id IN "
                f"(SELECT json_extract(value, '$[0]') FROM {_JSON_ROWS})",
                (self._json_text(keys), location_id),
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            if "JSON cannot hold BLOB" in str(exc) or "malformed JSON" in str(exc):
                return None  # the usual way reads such rows (or fails on them) as it always did
            raise _storage_error(exc, self.path) from None
        if has_float:
            return None
        # (surrogatepass: a lone surrogate then fails decode_linked, and the usual way reads it)
        return bytes(text) if utf8 else str(text).encode("utf-8", "surrogatepass")

    def data_version(self) -> int:
        """SQLite's ``data_version``: it changes when another connection commits a change."""
        return int(self.scalar("PRAGMA data_version"))

    def unlinked_by_email(self, location_id: str, email: str) -> list[dict[str, Any]]:
        """Not-yet-linked, not-deleted contacts with this email (case-insensitive)."""
        rows = self.query(
            "SELECT * FROM contacts WHERE location_id = ? AND lower(email) = lower(?) "
            "AND +ghl_id IS NULL AND status != 'deleted' ORDER BY created_at, id",
            (location_id, email),
        )
        return [decode_contact(r) for r in rows]

    def unlinked_by_phone(self, location_id: str, phone: str) -> list[dict[str, Any]]:
        """Not-yet-linked, not-deleted contacts with this E.164 phone."""
        rows = self.query(
            "SELECT * FROM contacts WHERE location_id = ? AND phone = ? "
            "AND +ghl_id IS NULL AND status != 'deleted' ORDER BY created_at, id",
            (location_id, phone),
        )
        return [decode_contact(r) for r in rows]

    def unlinked_by_keys(
        self, location_id: str, column: str, keys: Iterable[str | None]
    ) -> dict[str, list[dict[str, Any]]]:
        """``unlinked_by_email`` (column ``email``) or ``unlinked_by_phone`` for many keys at once.

        One indexed query per 500 keys instead of one per key: a page of GHL contacts is matched
        in a couple of queries. SQLite does the lowering, so case-insensitivity is exactly the
        per-key query's. Keys with no candidate are absent from the result.

        ``+ghl_id`` (here and in the per-key queries) keeps SQLite on the email/phone index: on
        ``ghl_id IS NULL`` it would walk every unlinked contact for each key.
        """
        if column not in ("email", "phone"):
            raise ValueError(f"cannot match on {column!r}")
        wanted = list(dict.fromkeys(k for k in keys if k))
        found: dict[str, list[dict[str, Any]]] = {}
        if not wanted:
            return found
        same = "lower(c.email) = lower(k.key)" if column == "email" else "c.phone = k.key"
        for chunk in _chunks(wanted, 500):
            keys_sql = ", ".join(["(?)"] * len(chunk))
            for row in self.query(
                f"WITH k(key) AS (VALUES {keys_sql}) SELECT k.key AS _key, c.* FROM k "
                f"JOIN contacts c ON c.location_id = ? AND {same} "
                "AND +c.ghl_id IS NULL AND c.status != 'deleted' ORDER BY c.created_at, c.id",
                (*chunk, location_id),
            ):
                found.setdefault(row.pop("_key"), []).append(decode_contact(row))
        return found

    def taken_ids(self, contact_ids: Sequence[str]) -> set[str]:
        """Which of these local ids some contact already holds."""
        return {row[0] for row in self.rows_in("SELECT id FROM contacts WHERE id IN", contact_ids)}

    def has_unlinked(self, location_id: str) -> bool:
        """Whether the location has any not-yet-linked, not-deleted contact (a match candidate)."""
        return bool(
            self.scalar(
                "SELECT EXISTS (SELECT 1 FROM contacts WHERE location_id = ? AND ghl_id IS NULL "
                "AND status != 'deleted')",
                (location_id,),
            )
        )

    def unlinked_keys_to_normalize(
        self, location_id: str
    ) -> list[tuple[str, str | None, str | None]]:
        """(id, email, phone) of unlinked, not-deleted contacts whose email may be padded (its
        first or last character blank or not ASCII, or empty) or whose phone is not E.164: what
        another program may write, and what matching must see normalised."""
        return [
            (str(contact_id), email, phone)
            for contact_id, email, phone in self.execute(
                "SELECT id, email, phone FROM contacts WHERE location_id = ? AND ghl_id IS NULL "
                "AND status != 'deleted' AND ("
                "(phone IS NOT NULL AND (phone NOT GLOB '+[1-9]*' OR phone GLOB '+*[^0-9]*')) "
                "OR (email IS NOT NULL AND (email = '' OR unicode(email) NOT BETWEEN 33 AND 127 "
                "OR unicode(substr(email, -1)) NOT BETWEEN 33 AND 127)))",
                (location_id,),
            ).fetchall()
        ]

    def linked_twin(
        self, location_id: str, email: str | None, phone: str | None
    ) -> dict[str, Any] | None:
        """The linked contact (id, ghl_id) GHL's duplicate rules would match a new contact with
        this email (case-insensitive), else this phone, to: one GHL still has (not inactive)."""
        for column, key in (("email", email), ("phone", phone)):
            if not key:
                continue
            same = "lower(email) = lower(?)" if column == "email" else "phone = ?"
            rows = self.query(
                f"SELECT id, ghl_id FROM contacts WHERE location_id = ? AND {same} "
                "AND ghl_id IS NOT NULL AND status != 'inactive' ORDER BY created_at, id LIMIT 1",
                (location_id, key),
            )
            if rows:
                return rows[0]
        return None

    def uncertain_creates(self, location_id: str) -> list[dict[str, Any]]:
        """Unlinked contacts whose create was sent to GHL but whose answer was never committed.

        Each row carries its outbox ``create_started_at`` and ``create_values`` (what the first
        attempt sent, decoded; None when a version that did not record it sent it).
        """
        rows = self.query(
            "SELECT c.*, o.create_started_at, o.create_values FROM outbox o "
            "JOIN contacts c ON c.id = o.contact_id "
            "WHERE o.create_started_at IS NOT NULL AND c.location_id = ? AND c.ghl_id IS NULL "
            "AND c.status != 'deleted' ORDER BY o.create_started_at, c.id",
            (location_id,),
        )
        return [_with_create_values(decode_contact(r)) for r in rows]

    def list_contacts(
        self, *, location_id: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Contacts ordered by name then id, optionally filtered."""
        where, params = _filters(location_id=location_id, status=status)
        sql = f"SELECT * FROM contacts {where} ORDER BY lower(coalesce(name, '')), id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [decode_contact(r) for r in self.query(sql, params)]

    def insert_contact(self, row: Mapping[str, Any]) -> None:
        """Insert one contact row (tags as a list, dnd as bool, raw as a dict)."""
        self.insert_contacts([row])

    def insert_contacts(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Insert many contact rows in one statement."""
        self.write_rows(
            f"INSERT INTO contacts ({', '.join(CONTACT_COLUMNS)})",
            [_column_values(encode_contact(r)) for r in rows],
        )

    def insert_new_contacts(self, contacts: Sequence[NewContact], *, now: str) -> None:
        """Insert contacts first seen in GHL with their base copies, created and synced ``now``."""
        self.run(self.new_contact_statements(contacts, now=now))

    def new_contact_statements(
        self, contacts: Sequence[NewContact], *, now: str
    ) -> list[Statement]:
        """``insert_new_contacts`` as statements."""
        return self.rows_statements(
            f"INSERT INTO contacts ({', '.join(_NEW_COLUMNS)}, {', '.join(_STAMPS)})",
            [(*c.columns, now, now) for c in contacts],
        ) + self.rows_statements(
            "INSERT INTO sync_state (contact_id, base, remote_updated_at, synced_at)",
            [(c.contact_id, c.base, c.remote_updated_at, now) for c in contacts],
            _UPSERT_STATE,
        )

    def update_contact(self, contact_id: str, changes: Mapping[str, Any]) -> None:
        """Update some columns of one contact."""
        if not changes:
            return
        encoded = encode_contact(changes)
        assignments = ", ".join(f"{c} = ?" for c in encoded)
        self.execute(
            f"UPDATE contacts SET {assignments} WHERE id = ?", (*encoded.values(), contact_id)
        )

    def update_contacts(self, changes: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """``update_contact`` for many contacts: see ``contact_update_statements``."""
        self.run(self.contact_update_statements(changes))

    def contact_update_statements(
        self, changes: Iterable[tuple[str, Mapping[str, Any]]], *, one_statement: bool = False
    ) -> list[Statement]:
        """``update_contacts`` as statements: one ``executemany`` per set of changed columns, or
        with ``one_statement`` one statement per set (see ``rows_statements``)."""
        by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for contact_id, change in changes:
            encoded = encode_contact(change)
            if encoded:
                by_columns.setdefault(tuple(encoded), []).append((*encoded.values(), contact_id))
        statements = []
        for columns, rows in by_columns.items():
            carried = self._json_rows(rows, len(columns) + 1) if one_statement else None
            if carried is None:
                assignments = ", ".join(f"{c} = ?" for c in columns)
                statements.append(
                    Statement(f"UPDATE contacts SET {assignments} WHERE id = ?", rows=rows)
                )
                continue
            assignments = ", ".join(
                f"{c} = {carried.pick(i, 'j.value')}" for i, c in enumerate(columns)
            )
            statements.append(
                Statement(
                    f"UPDATE contacts SET {assignments} FROM {_JSON_ROWS} AS j "
                    f"WHERE contacts.id = {carried.pick(len(columns), 'j.value')}",
                    carried.params,
                )
            )
        return statements

    def count_contacts(self, location_id: str) -> dict[str, int]:
        """Contacts per status."""
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self.execute(
            "SELECT status, count(*) FROM contacts WHERE location_id = ? GROUP BY status",
            (location_id,),
        ).fetchall():
            counts[status] = n
        return counts

    def linked_ghl_ids(self, location_id: str, *, statuses: Sequence[str]) -> dict[str, str]:
        """GHL id → local id for linked contacts with one of ``statuses``."""
        marks = ",".join("?" * len(statuses))
        return dict(
            self.execute(
                f"SELECT ghl_id, id FROM contacts WHERE location_id = ? AND ghl_id IS NOT NULL "
                f"AND status IN ({marks})",
                (location_id, *statuses),
            ).fetchall()
        )

    # ---- base copy -------------------------------------------------------------------------

    def get_states(self, contact_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """sync_state rows (base decoded) keyed by contact id."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(contact_ids), 500):
            marks = ",".join("?" * len(chunk))
            for row in self.query(
                f"SELECT * FROM sync_state WHERE contact_id IN ({marks})", tuple(chunk)
            ):
                row["base"] = loads(row["base"])
                found[row["contact_id"]] = row
        return found

    def get_state(self, contact_id: str) -> dict[str, Any] | None:
        """One sync_state row (base decoded), or None for a never-synced contact."""
        return self.get_states([contact_id]).get(contact_id)

    def save_state(
        self, contact_id: str, *, base: Mapping[str, Any], remote_updated_at: str | None, now: str
    ) -> None:
        """Store the base copy and the GHL dateUpdated it corresponds to."""
        self.save_states([(contact_id, base, remote_updated_at)], now=now)

    def save_states(
        self, states: Iterable[tuple[str, Mapping[str, Any], str | None]], *, now: str
    ) -> None:
        """Store many base copies at once: see ``state_statements``."""
        self.run(self.state_statements(states, now=now))

    def state_statements(
        self,
        states: Iterable[tuple[str, Mapping[str, Any], str | None]],
        *,
        now: str,
        one_statement: bool = False,
    ) -> list[Statement]:
        """``save_states`` as statements (a base holds normalised values: merge results, or
        what was sent to GHL).

        ``executemany`` unless ``one_statement`` (``rows_statements``): these rows mostly replace
        existing ones, and for an upsert SQLite's JSON functions cost more than the binding they
        save (measured: about twice the time per row), unless the GIL is what matters.
        """
        rows = [
            (cid, _encode_base(base, normalised=True), remote, now) for cid, base, remote in states
        ]
        return self.rows_statements(
            "INSERT INTO sync_state (contact_id, base, remote_updated_at, synced_at)",
            rows,
            _UPSERT_STATE,
            one_statement=one_statement,
        )

    # ---- outbox ------------------------------------------------------------------------------

    def enqueue(self, contact_id: str, location_id: str, *, reason: str, now: str) -> None:
        """Queue a contact for push (or refresh its queue entry; a fresh change clears failure)."""
        self.execute(
            "INSERT INTO outbox (contact_id, location_id, queued_at, reason) VALUES (?, ?, ?, ?) "
            + _UPSERT_OUTBOX,
            (contact_id, location_id, now, reason),
        )

    def dequeue(self, contact_id: str) -> None:
        """Remove a contact from the push queue."""
        self.execute("DELETE FROM outbox WHERE contact_id = ?", (contact_id,))

    def enqueue_many(
        self, contact_ids: Iterable[str], location_id: str, *, reason: str, now: str
    ) -> None:
        """``enqueue`` for many contacts of one location."""
        self.run(self.enqueue_statements(contact_ids, location_id, reason=reason, now=now))

    def enqueue_statements(
        self,
        contact_ids: Iterable[str],
        location_id: str,
        *,
        reason: str,
        now: str,
        one_statement: bool = False,
    ) -> list[Statement]:
        """``enqueue_many`` as statements (``one_statement``: see ``rows_statements``)."""
        return self.rows_statements(
            "INSERT INTO outbox (contact_id, location_id, queued_at, reason)",
            [(contact_id, location_id, now, reason) for contact_id in contact_ids],
            _UPSERT_OUTBOX,
            one_statement=one_statement,
        )

    def dequeue_many(self, contact_ids: Iterable[str]) -> None:
        """``dequeue`` for many contacts."""
        self.run(self.dequeue_statements(contact_ids))

    def dequeue_statements(
        self, contact_ids: Iterable[str], *, one_statement: bool = False
    ) -> list[Statement]:
        """``dequeue_many`` as statements (``one_statement``: see ``rows_statements``)."""
        rows = [(contact_id,) for contact_id in contact_ids]
        carried = self._json_rows(rows, 1) if one_statement and rows else None
        if carried is None:
            return [Statement("DELETE FROM outbox WHERE contact_id = ?", rows=rows)]
        return [
            Statement(
                f"DELETE FROM outbox WHERE contact_id IN (SELECT {carried.pick(0)} "
                f"FROM {_JSON_ROWS})",
                carried.params,
            )
        ]

    def get_outbox(self, contact_id: str) -> dict[str, Any] | None:
        """One outbox entry."""
        rows = self.query("SELECT * FROM outbox WHERE contact_id = ?", (contact_id,))
        return _with_create_values(rows[0]) if rows else None

    def pending_pushes(self, location_id: str, *, include_failed: bool = False) -> list[str]:
        """Queued contact ids of a location, oldest first.

        Rows inserted by other programs without a location_id are adopted by this location.
        """
        self.execute(
            "UPDATE outbox SET location_id = (SELECT location_id FROM contacts "
            "WHERE contacts.id = outbox.contact_id) WHERE location_id IS NULL"
        )
        failed = "" if include_failed else "AND failed = 0"
        return [
            r[0]
            for r in self.execute(
                f"SELECT contact_id FROM outbox WHERE location_id = ? {failed} "
                "ORDER BY queued_at, contact_id",
                (location_id,),
            ).fetchall()
        ]

    def mark_create_started(
        self, contact_id: str, *, now: str, values: Mapping[str, Any] | None = None
    ) -> None:
        """Record that a create was sent (first time: when, and the normalised ``values`` sent),
        so a retry after a crash looks for the contact that create may have made first."""
        self.execute(
            "UPDATE outbox SET create_started_at = coalesce(create_started_at, ?), "
            "create_values = coalesce(create_values, ?), "
            "attempts = attempts + 1 WHERE contact_id = ?",
            (now, None if values is None else dumps_normalised(dict(values)), contact_id),
        )

    def record_push_error(
        self, contact_id: str, *, message: str, permanent: bool, now: str
    ) -> None:
        """Keep the error on the queue entry; a permanent one parks it until the contact changes."""
        self.execute(
            "UPDATE outbox SET last_error = ?, last_error_at = ?, failed = ?, "
            "attempts = attempts + 1 WHERE contact_id = ?",
            (message, now, 1 if permanent else 0, contact_id),
        )

    def outbox_counts(self, location_id: str) -> dict[str, int]:
        """Queued and failed pushes of a location."""
        queued, failed = self.execute(
            "SELECT count(*) - coalesce(sum(failed), 0), coalesce(sum(failed), 0) "
            "FROM outbox WHERE location_id = ?",
            (location_id,),
        ).fetchone()
        return {"queued": int(queued or 0), "failed": int(failed or 0)}

    def failed_pushes(self, location_id: str) -> list[dict[str, Any]]:
        """Queue entries parked by a permanent error, with the contact's name."""
        return self.query(
            "SELECT o.contact_id, c.name, o.last_error, o.last_error_at FROM outbox o "
            "LEFT JOIN contacts c ON c.id = o.contact_id "
            "WHERE o.location_id = ? AND o.failed = 1 ORDER BY o.last_error_at, o.contact_id",
            (location_id,),
        )

    # ---- conflicts and flags -------------------------------------------------------------------

    def add_conflicts(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Record decided conflicts (values stored as JSON)."""
        self.run(self.conflict_statements(rows))

    def conflict_statements(
        self, rows: Iterable[Mapping[str, Any]], *, one_statement: bool = False
    ) -> list[Statement]:
        """``add_conflicts`` as statements (``one_statement``: see ``rows_statements``)."""
        encoded = [
            (
                r["contact_id"],
                r["location_id"],
                r["field"],
                dumps(r["local_value"]),
                dumps(r["ghl_value"]),
                dumps(r.get("base_value")),
                r.get("winner", "ghl"),
                r["source"],
                r["detected_at"],
            )
            for r in rows
        ]
        return self.rows_statements(
            "INSERT INTO conflicts (contact_id, location_id, field, local_value, ghl_value, "
            "base_value, winner, source, detected_at)",
            encoded,
            one_statement=one_statement,
        )

    def list_conflicts(self, *, location_id: str | None = None) -> list[dict[str, Any]]:
        """Conflicts, oldest first, values decoded, with the contact's name."""
        where = "WHERE k.location_id = ?" if location_id else ""
        rows = self.query(
            "SELECT k.*, c.name AS contact_name FROM conflicts k "
            f"LEFT JOIN contacts c ON c.id = k.contact_id {where} ORDER BY k.id",
            (location_id,) if location_id else (),
        )
        for row in rows:
            for key in ("local_value", "ghl_value", "base_value"):
                row[key] = json.loads(row[key]) if row[key] is not None else None
        return rows

    def count_conflicts(self, location_id: str) -> int:
        """Number of recorded conflicts of a location."""
        return int(
            self.scalar("SELECT count(*) FROM conflicts WHERE location_id = ?", (location_id,))
        )

    def add_flag(self, contact_id: str, flag: str, detail: str, *, now: str) -> None:
        """Flag a contact for a human to look at (kept until cleared)."""
        self.execute(
            "INSERT OR REPLACE INTO contact_flags (contact_id, flag, detail, created_at) "
            "VALUES (?, ?, ?, ?)",
            (contact_id, flag, detail, now),
        )

    def count_flags(self, location_id: str) -> int:
        """Flagged contacts of a location."""
        return int(
            self.scalar(
                "SELECT count(*) FROM contact_flags f JOIN contacts c ON c.id = f.contact_id "
                "WHERE c.location_id = ?",
                (location_id,),
            )
        )

    # ---- cursors and runs ------------------------------------------------------------------------

    def get_cursor(self, location_id: str, kind: str) -> dict[str, Any] | None:
        """A sync cursor row (search_after decoded)."""
        rows = self.query(
            "SELECT * FROM sync_cursors WHERE location_id = ? AND kind = ?", (location_id, kind)
        )
        if not rows:
            return None
        row = rows[0]
        row["search_after"] = json.loads(row["search_after"]) if row["search_after"] else None
        return row

    def save_cursor(self, location_id: str, kind: str, **values: Any) -> None:
        """Create or update a cursor row with the given columns."""
        if "search_after" in values:
            sa = values["search_after"]
            values["search_after"] = dumps(sa) if sa is not None else None
        assignments = ", ".join(f"{k} = ?" for k in values)
        updated = self.execute(
            f"UPDATE sync_cursors SET {assignments} WHERE location_id = ? AND kind = ?",
            (*values.values(), location_id, kind),
        )
        if updated.rowcount == 0:
            columns = ["location_id", "kind", *values]
            self.execute(
                f"INSERT INTO sync_cursors ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                (location_id, kind, *values.values()),
            )

    def delete_cursor(self, location_id: str, kind: str) -> None:
        """Forget a cursor."""
        self.execute(
            "DELETE FROM sync_cursors WHERE location_id = ? AND kind = ?", (location_id, kind)
        )

    def start_run(self, location_id: str, kind: str, *, now: str) -> int:
        """Record the start of a sync run; returns its id."""
        cursor = self.execute(
            "INSERT INTO sync_runs (location_id, kind, started_at) VALUES (?, ?, ?)",
            (location_id, kind, now),
        )
        return int(cursor.lastrowid or 0)

    def finish_run(
        self,
        run_id: int,
        *,
        outcome: str,
        counts: Mapping[str, Any],
        now: str,
        error: str | None = None,
    ) -> None:
        """Record how a sync run ended."""
        self.execute(
            "UPDATE sync_runs SET finished_at = ?, outcome = ?, counts = ?, error = ? WHERE id = ?",
            (now, outcome, dumps(dict(counts)), error, run_id),
        )

    def last_runs(self, location_id: str) -> dict[str, dict[str, Any]]:
        """The latest run of each kind for a location (counts decoded)."""
        rows = self.query(
            "SELECT * FROM sync_runs WHERE id IN (SELECT max(id) FROM sync_runs "
            "WHERE location_id = ? GROUP BY kind)",
            (location_id,),
        )
        result = {}
        for row in rows:
            row["counts"] = json.loads(row["counts"] or "{}")
            result[row["kind"]] = row
        return result

    def close_stale_runs(self, location_id: str, *, now: str) -> None:
        """Runs still 'running' when a new one starts under the lock were killed: say so."""
        self.execute(
            "UPDATE sync_runs SET outcome = 'interrupted', finished_at = coalesce(finished_at, ?) "
            "WHERE location_id = ? AND outcome = 'running'",
            (now, location_id),
        )


def decode_contact(contact: dict[str, Any], *, long_integers: bool | None = None) -> dict[str, Any]:
    """A contacts row dict with tags as a list, dnd as bool and raw as a dict (decoded in
    place: every caller decodes a dict just built from a row). ``long_integers``: what the
    caller knows of integers beyond 64 bits in ``raw`` (see ``jsontext.loads``).

    A value another program stored as a BLOB is read as the text it holds, as SQLite's own
    ``CAST(… AS TEXT)`` reads it (bytes that are not UTF-8 become U+FFFD), not as Python's
    ``repr`` of the bytes, which would then be pushed to GHL."""
    for column, value in contact.items():
        if type(value) is bytes:
            contact[column] = value.decode("utf-8", "replace")
    tags = contact.get("tags")
    try:
        if tags == "[]":  # no tags: most contacts
            decoded: Any = []
        else:
            decoded = loads(tags) if isinstance(tags, str) and tags else []
    except json.JSONDecodeError:
        # Another program wrote plain text: treat it as comma-separated tags.
        decoded = [t for t in str(tags).split(",") if t.strip()]
    contact["tags"] = decoded if isinstance(decoded, list) else [decoded]
    contact["dnd"] = bool(contact.get("dnd"))
    contact["raw"] = _decode_raw(contact.get("raw"), long_integers=long_integers)
    return contact


def _decode_raw(raw: Any, *, long_integers: bool | None = None) -> dict[str, Any]:
    try:
        return loads(raw, long_integers=long_integers) if isinstance(raw, str) and raw else {}
    except json.JSONDecodeError:
        return {}


# Where decode_linked's rows end their contact columns (after the leading 1 or 0). A row holding
# its base copy has these columns and the sync_state ones, spelled out there (a replay decodes a
# thousand rows a chunk).
_FULL_END = 1 + len(CONTACT_COLUMNS)
_AGREED_ROW_COLUMNS = (
    *("id", "ghl_id", "location_id", "name", "status", "created_at", "updated_at", "raw"),
    *("contact_id", "base", "remote_updated_at", "synced_at"),
)
if (*_OTHER_COLUMNS, *_STATE_COLUMNS) != _AGREED_ROW_COLUMNS:  # pragma: no cover
    raise AssertionError("decode_linked spells out the columns of a row holding its base copy")


def decode_linked(text: bytes) -> Linked | None:
    """``Store.linked_json``'s rows (its UTF-8 text), decoded as ``contacts_by_ghl_ids`` and
    ``get_states`` give them; None if a base copy holds a number orjson reads otherwise than the
    standard library (an integer beyond 64 bits: see ``jsontext.loads``) or does not read
    (beyond a double's range). (SQLite's ``json()`` keeps each number of a base copy as
    written.)"""
    try:
        rows = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    long_integers = may_hold_long_integer(text)
    # (none anywhere in the text: none in any raw column either; else each raw is looked at)
    raw_long_integers = None if long_integers else False
    contacts: dict[str, dict[str, Any]] = {}
    states: dict[str, dict[str, Any]] = {}
    agreed: set[str] = set()
    for values in rows:
        if values[0]:  # a row holding its base copy: its synced values are the base's
            (
                _,
                local_id,
                ghl_id,
                location,
                name,
                status,
                created,
                updated,
                raw,
                state_id,
                base,
                remote_updated_at,
                synced_at,
            ) = values
            contact = {
                **base,
                "id": local_id,
                "ghl_id": ghl_id,
                "location_id": location,
                "name": name,
                "status": status,
                "created_at": created,
                "updated_at": updated,
                "raw": _decode_raw(raw, long_integers=raw_long_integers),
            }
            state = {
                "contact_id": state_id,
                "base": base,
                "remote_updated_at": remote_updated_at,
                "synced_at": synced_at,
            }
            agreed.add(local_id)
        else:
            contact = decode_contact(
                dict(zip(CONTACT_COLUMNS, values[1:_FULL_END], strict=True)),
                long_integers=raw_long_integers,
            )
            state = dict(zip(_STATE_COLUMNS, values[_FULL_END:], strict=True))
        contacts[contact["ghl_id"]] = contact
        if state["contact_id"] is not None:
            if long_integers and holds_float(state["base"]):
                return None
            states[state["contact_id"]] = state
    return Linked(contacts, states, frozenset(agreed))


def encode_contact(row: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of decode_contact, for the columns given (name derived when missing)."""
    encoded = {key: value for key, value in row.items() if key in _COLUMN_SET}
    if "tags" in encoded:
        encoded["tags"] = dumps(sorted(encoded["tags"] or []))
    if "raw" in encoded:
        encoded["raw"] = dumps(encoded["raw"] or {})
    if "dnd" in encoded:
        encoded["dnd"] = 1 if encoded["dnd"] else 0
    if "name" not in encoded and ("first_name" in row or "last_name" in row):
        encoded["name"] = join_name(row.get("first_name"), row.get("last_name"))
    return encoded


# What json_extract gives back exactly as sqlite3 binds it: text, 64-bit integers (booleans
# included) and null. Floats are left out: SQLite's own text-to-float conversion is not
# guaranteed to round exactly like Python's.
_JSON_EXACT_TYPES = frozenset({str, int, bool, type(None)})
_INT64 = range(-(2**63), 2**63)


# Values a column may hold to be bound once for every row (``Store._json_rows``): no floats, as
# equal floats are not always the same value (0.0 and -0.0).
_BOUND_ONCE_TYPES = frozenset({str, int, bool, bytes, type(None)})


def _one_value(column: list[Any]) -> bool:
    """Whether every value of ``column`` is the same value, of the same type (True == 1)."""
    first = column[0]
    if type(first) not in _BOUND_ONCE_TYPES or column[-1] != first:
        return False
    try:
        return len(set(column)) == 1 and len(set(map(type, column))) == 1
    except TypeError:  # unhashable: not something SQLite binds
        return False


def _all_of_width(rows: Sequence[Sequence[Any]], width: int) -> bool:
    """Whether every row holds ``width`` values (the lengths gathered in C, not a generator
    stepped once per row: every one-statement write checks its rows)."""
    return set(map(len, rows)) <= {width}


def _rows_as_json(rows: Sequence[Sequence[Any]]) -> bytes | None:
    """``rows`` (all of one width: see ``_all_of_width``) as one JSON array of arrays (UTF-8), or
    None when JSON would not carry them exactly: another type than text, integer or null, an
    integer beyond 64 bits (which sqlite3 refuses to bind), text that is not valid UTF-8 (a lone
    surrogate, which sqlite3 refuses too), or a NUL character (SQLite's JSON functions cut text
    there)."""
    kinds = set(map(type, itertools.chain.from_iterable(rows)))
    if not kinds <= _JSON_EXACT_TYPES:
        return None
    try:
        # (integers within 53 bits, as nearly all are, are within 64: no loop over the values)
        array = orjson.dumps(rows, option=orjson.OPT_STRICT_INTEGER)
    except TypeError:  # a larger integer, or a lone surrogate
        if int in kinds and not all(
            v in _INT64 for v in itertools.chain.from_iterable(rows) if type(v) is int
        ):
            return None
        try:
            array = orjson.dumps(rows)
        except TypeError:  # a lone surrogate
            return None
    return None if b"\\u0000" in array else array


def _encode_base(base: Mapping[str, Any], *, normalised: bool = False) -> str:
    """A base copy as sync_state stores it: its synced fields, as JSON.

    ``normalised``: ``base`` holds only normalised values (see ``dumps_normalised``).
    """
    if type(base) is not dict or not _SYNC_FIELD_SET.issuperset(base):
        base = {f: base[f] for f in SYNC_FIELDS if f in base}
    return dumps_normalised(base) if normalised else dumps(base)


def _checkpoint_until(path: str, stop: threading.Event) -> None:
    """Passive checkpoints of the database at ``path`` until ``stop`` is set (see
    ``Store.bulk_checkpoints``). A failure ends the thread quietly: the writer's own automatic
    checkpoint still bounds the WAL, and the writer reports any error of its own."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error:
        return
    try:
        while not stop.wait(CHECKPOINT_INTERVAL):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error:
        pass
    finally:
        conn.close()


def _filters(**criteria: Any) -> tuple[str, tuple[Any, ...]]:
    clauses = [f"{k} = ?" for k, v in criteria.items() if v is not None]
    params = tuple(v for v in criteria.values() if v is not None)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _create_private_file(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        # A full disk may free up; a read-only or missing directory will not.
        kind = StorageError if exc.errno == errno.ENOSPC else UnusableDatabaseError
        raise kind(
            f"Cannot create the database {path}: {exc.strerror}.",
            path=str(path),
            hint="Check the directory exists and is writable, or choose another --db.",
        ) from None


def _with_create_values(row: dict[str, Any]) -> dict[str, Any]:
    """An outbox row's ``create_values`` decoded (another program may have written junk: None)."""
    text = row.get("create_values")
    try:
        values = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        values = None
    row["create_values"] = values if isinstance(values, dict) else None
    return row


def _storage_error(exc: sqlite3.Error, path: str) -> StorageError:
    text = str(exc).lower()
    kind = StorageError
    # A WAL database in a read-only directory cannot even be opened: it has no -shm file.
    read_only = "readonly" in text or "read-only" in text
    read_only = read_only or ("unable to open" in text and _is_read_only(path))
    if "locked" in text or "busy" in text:
        hint = "Another process is writing the database; retry in a moment."
        message = f"The database {path} stayed busy: {exc}."
    elif "full" in text:
        hint = "Free some disk space; nothing was half-written."
        message = f"The disk holding {path} is full."
    elif read_only:
        kind = UnusableDatabaseError
        hint = "Make the file and its directory writable, or choose another --db."
        message = f"The database {path} is read-only."
    elif "not a database" in text or "malformed" in text:
        kind = UnusableDatabaseError
        hint = "Point --db at a ghlsync database."
        message = f"{path} is not a usable SQLite database ({exc})."
    elif "unable to open" in text:
        kind = UnusableDatabaseError
        hint = "Point --db (or GHLSYNC_DB) at a file in a writable directory."
        what = "it is a directory" if Path(path).is_dir() else str(exc)
        message = f"Cannot open the database {path}: {what}."
    else:
        hint = "Check the file and its directory."
        message = f"Database error on {path}: {exc}."
    return kind(message, path=path, hint=hint)


def _is_read_only(path: str) -> bool:
    """Whether the database file, or the directory its -wal and -shm files go in, is read-only."""
    file = Path(path)
    return (file.exists() and not os.access(file, os.W_OK)) or not os.access(file.parent, os.W_OK)
