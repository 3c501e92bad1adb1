"""The store's fast JSON and row writes give exactly what the standard library and executemany do.

``dumps`` must keep the database deterministic and byte-identical to what earlier versions wrote,
``loads`` must read every stored text to the same value, and ``Store.write_rows`` must store the
same rows as ``executemany`` whatever it is given.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from ghlsync_cli.errors import InputError, StorageError
from ghlsync_cli.jsontext import dumps, dumps_normalised, loads
from ghlsync_cli.mapping import SYNC_FIELDS, join_name, normalize_values
from ghlsync_cli.store import Linked, NewContact, Store, decode_linked
from ghlsync_cli.sync.merge import local_values
from ghlsync_cli.webhooks import check_depth

# Strings as awkward as they come: control characters, NUL, non-ASCII, astral, lone surrogates.
awkward_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\x00", "\x1f", "\x7f", '"', "\\", "\u2028", "é", "😀", "\ud800"]),
    ),
    max_size=12,
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    awkward_text,
)
json_values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(awkward_text, inner, max_size=4),
    ),
    max_leaves=20,
)


def reference_dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@given(json_values)
def test_dumps_writes_exactly_what_the_standard_library_writes(value: object) -> None:
    assert dumps(value) == reference_dumps(value)


def test_dumps_edge_cases_match_the_standard_library() -> None:
    class Text(str):
        pass

    circular: list[Any] = []
    circular.append(circular)
    deep: Any = []
    for _ in range(300):  # deeper than orjson goes
        deep = [deep]
    for value in ({"b": 1, "a": 2, "é": 3, "Z": [1.5, 2**70]}, Text("x"), deep, {1: "int key"}):
        assert dumps(value) == reference_dumps(value)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps(circular)


@given(st.dictionaries(st.sampled_from(SYNC_FIELDS), st.one_of(leaves, st.lists(leaves))))
def test_dumps_normalised_matches_for_normalised_values(raw: dict[str, Any]) -> None:
    values = normalize_values(raw)
    assert dumps_normalised(values) == reference_dumps(values)


def same_json(a: object, b: object) -> bool:
    """Equal, with the same types throughout (1 is not 1.0) and NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or repr(a) == repr(b)  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)  # type: ignore[attr-defined]
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same_json, a, b))  # type: ignore[arg-type]
    return a == b


@given(json_values)
def test_loads_reads_what_the_standard_library_reads(value: object) -> None:
    text = reference_dumps(value)
    assert same_json(loads(text), json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":2}',
        "-0",
        "-0.0",
        "1e400",
        "123456789012345678901234567890",
        "[18446744073709551616, -9223372036854775809, 9223372036854775807]",
        '"\\ud800"',
        "NaN",
        '{"x":[{"y":1e3}]}',
        "[" * 1100 + "]" * 1100,
    ],
)
def test_loads_edge_cases_match_the_standard_library(text: str) -> None:
    def outcome(read: Any) -> object:
        try:
            return read(text)
        except RecursionError as exc:
            return type(exc)

    mine, theirs = outcome(loads), outcome(json.loads)
    assert mine is theirs if isinstance(theirs, type) else same_json(mine, theirs)


# Number literals as any JSON writer may spell them: long mantissas, exponents, 18 to 21 digits.
number_literals = st.from_regex(
    r"\A-?(0|[1-9][0-9]{0,21})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?\Z", fullmatch=True
)


@given(st.lists(number_literals, min_size=1, max_size=4))
def test_loads_reads_numbers_as_the_standard_library_reads_them(numbers: list[str]) -> None:
    """orjson's reading is kept whenever no 19 digits stand in a row: for every float literal it
    gives the standard library's value; only longer integers need the standard library."""
    text = f"[{', '.join(numbers)}]"
    try:
        expected = json.loads(text)
    except ValueError:
        return
    assert same_json(loads(text), expected)
    assert same_json(loads(text.encode()), expected)


@pytest.mark.parametrize("text", ["", "[1,]", '{"a":}', '"\x01"', "\ufeff[1]", "[1] x"])
def test_loads_refuses_what_the_standard_library_refuses(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        loads(text)


# ---- one statement per batch of rows -----------------------------------------------------------

row_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=2**63, max_value=2**70),  # refused by sqlite3 either way
    st.floats(allow_nan=False),
    st.binary(max_size=4),
    awkward_text,
)


def memory_store(encoding: str = "UTF-8") -> Store:
    """A migrated in-memory database keeping its text in ``encoding`` (ghlsync creates UTF-8
    databases; another program may have created the file in UTF-16)."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA encoding = '{encoding}'")
    store = Store(conn)
    store.migrate()
    assert store.scalar("PRAGMA encoding") == encoding
    return store


def stored(store: Store, rows: list[tuple[Any, ...]], *, json_functions: bool) -> object:
    """The rows as stored by write_rows (or the error it raised), typed as SQLite holds them."""
    store._json_functions = json_functions  # the executemany path, as without JSON functions
    store.execute("DELETE FROM t")
    try:
        store.write_rows("INSERT INTO t (a, b, c)", rows)
    except Exception as exc:
        return type(exc).__name__
    # (repr: 0.0 == -0.0, but they are different values)
    return repr(store.execute("SELECT a, typeof(a), b, typeof(b), c, typeof(c) FROM t").fetchall())


# Few values, so that columns often hold one value in every row (bound once) or nearly so, and
# values equal in Python but stored apart by SQLite (True and 1, 0.0 and -0.0) share a column.
pooled_values = st.sampled_from(
    [None, 0, 1, True, False, 0.0, -0.0, "", "a", "\x00", b"a", b"", 2**63, "\ud800"]
)


@given(
    st.one_of(
        st.lists(st.tuples(row_values, row_values, row_values), min_size=1, max_size=5),
        st.lists(st.tuples(pooled_values, pooled_values, pooled_values), min_size=1, max_size=6),
    )
)
@example([(0, 1, "a"), (0.0, True, "a")])
@example([(0.0, "a", None), (-0.0, "a", None)])
@example([("é", "\U0001f642", "a"), ("ü", "b", "c")])
def test_write_rows_stores_what_executemany_stores(rows: list[tuple[Any, ...]]) -> None:
    # (the rows travel as UTF-8 bytes, or as a str in a UTF-16 database)
    for encoding in ("UTF-8", "UTF-16le"):
        store = memory_store(encoding)
        store.execute("CREATE TABLE t (a, b, c)")
        expected = stored(store, rows, json_functions=False)
        assert stored(store, rows, json_functions=True) == expected


@given(
    st.lists(
        st.sampled_from([b"{}", b'{"a": "\xc3\xa9"}', b"x", b"", b"\xff\x00"]),
        min_size=1,
        max_size=4,
    )
)
def test_bytes_columns_are_stored_as_blobs_either_way(bodies: list[bytes]) -> None:
    # (empty and not UTF-8 too; in a UTF-16 database as well: the blobs are cut as bytes)
    rows = [(n, body) for n, body in enumerate(bodies)] + [(99, bodies[0])]
    for encoding in ("UTF-8", "UTF-16le"):
        store = memory_store(encoding)
        store.execute("CREATE TABLE t (k, body)")
        results = []
        for json_functions in (True, False):
            store._json_functions = json_functions
            store.execute("DELETE FROM t")
            store.write_rows("INSERT INTO t (k, body)", rows, blobs={1})
            results.append(store.execute("SELECT k, body, typeof(body) FROM t").fetchall())
        assert results[0] == results[1]
        assert [body for _, body, _ in results[0]] == [body for _, body in rows]
        assert {kind for _, _, kind in results[0]} == {"blob"}


def test_bytes_columns_travel_apart_from_the_json_rows() -> None:
    """Bodies that differ are bound as one blob, not carried in the JSON array; a column that
    also holds something else than bytes goes through executemany."""
    store = Store.memory()
    (statement,) = store.rows_statements(
        "INSERT INTO t (k, body)", [(1, b"ab"), (2, b"c")], blobs={1}
    )
    assert statement.rows is None
    assert statement.params[1:] == (b"abc",)
    assert b"ab" not in statement.params[0]
    (statement,) = store.rows_statements(
        "INSERT INTO t (k, body)", [(1, b"ab"), (2, "c")], blobs={1}
    )
    assert statement.rows == [(1, b"ab"), (2, "c")]


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16le"])
def test_contact_updates_in_one_statement_store_what_executemany_stores(encoding: str) -> None:
    stores = []
    for one_statement in (True, False):
        store = memory_store(encoding)
        for i in range(4):
            store.execute(
                "INSERT INTO contacts (id, location_id, city, updated_at) "
                "VALUES (?, 'loc', 'old', 'then')",
                (f"c{i}",),
            )
        changes = [
            (f"c{i}", {"city": f"city {i}", "dnd": i == 0, "updated_at": "now"}) for i in range(3)
        ] + [("c3", {"city": "Zoë"})]
        with store.write():  # as ghlsync writes (its own changes are not queued for push)
            store.run(store.contact_update_statements(changes, one_statement=one_statement))
        stores.append(
            store.execute("SELECT id, city, dnd, updated_at FROM contacts ORDER BY id").fetchall()
        )
    assert stores[0] == stores[1]
    assert [city for _, city, _, _ in stores[0]] == ["city 0", "city 1", "city 2", "Zoë"]


def test_write_rows_keeps_an_upsert_clause_and_the_order_of_rows() -> None:
    store = Store.memory()
    store.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v)")
    store.write_rows(
        "INSERT INTO t (k, v)",
        [("a", 1), ("b", 2), ("a", 3)],
        "ON CONFLICT (k) DO UPDATE SET v = excluded.v",
    )
    assert store.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [("a", 3), ("b", 2)]


# ---- nesting depth -----------------------------------------------------------------------------


def reference_depth(raw: bytes) -> int:
    """The nesting depth by the definition check_depth implements, one byte at a time: a quote
    outside a string opens one, inside a string a backslash escapes the next byte and a quote
    closes it (an unclosed string runs to the end); brackets count only outside strings."""
    depth = deepest = 0
    inside = escaped = False
    for byte in raw:
        if inside:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                inside = False
        elif byte == ord('"'):
            inside = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


@given(
    st.binary(max_size=40).map(lambda b: bytes(b'"\\[]{}a\n'[x % 8] for x in b)), st.integers(0, 6)
)
def test_check_depth_refuses_exactly_what_is_nested_too_deep(raw: bytes, limit: int) -> None:
    too_deep = reference_depth(raw) > limit
    try:
        check_depth(raw, limit)
    except InputError:
        assert too_deep
    else:
        assert not too_deep


# ---- new contacts, encoded ahead ---------------------------------------------------------------

contact_rows = st.fixed_dictionaries(
    {
        "id": st.text(alphabet="0123456789abcdef", min_size=12, max_size=12),
        "ghl_id": st.text(alphabet="abcXYZ019", min_size=1, max_size=8),
        "first_name": st.one_of(st.none(), awkward_text),
        "email": st.one_of(st.none(), awkward_text),
        "tags": st.lists(awkward_text, max_size=3),
        "dnd": st.booleans(),
        "raw": st.dictionaries(awkward_text, leaves, max_size=3),
    }
)


@given(
    st.lists(
        contact_rows, min_size=1, max_size=4, unique_by=(lambda r: r["id"], lambda r: r["ghl_id"])
    )
)
def test_new_contacts_are_stored_as_insert_contacts_and_save_states_store_them(
    given_rows: list[dict[str, Any]],
) -> None:
    now, remote = "2026-01-01T00:00:00.000Z", "2025-06-01T00:00:00.000Z"
    rows = []
    for given_row in given_rows:
        values = normalize_values({f: given_row.get(f) for f in SYNC_FIELDS})
        rows.append(
            {
                **given_row,
                **values,
                "location_id": "loc",
                "name": given_row["first_name"],
                "status": "active",
            }
        )
    ahead, plain = Store.memory(), Store.memory()
    with ahead.write():
        ahead.insert_new_contacts(
            [NewContact.encode(row, normalize_values(row), remote) for row in rows], now=now
        )
    with plain.write():
        plain.insert_contacts([{**row, "created_at": now, "updated_at": now} for row in rows])
        plain.save_states([(row["id"], normalize_values(row), remote) for row in rows], now=now)
    for table in ("contacts", "sync_state"):
        query = f"SELECT * FROM {table} ORDER BY rowid"
        assert ahead.execute(query).fetchall() == plain.execute(query).fetchall()


# ---- linked rows read as one JSON text (Store.linked_json) ---------------------------------------

# What another program may leave in a column: JSON text of any value, plain text, or other types.
column_values = st.one_of(json_values.map(reference_dumps), row_values)


@given(tags=column_values, raw=column_values, city=row_values, base=column_values)
@example(tags="[1, 1180591620717411303424]", raw='{"n": 2.5}', city=None, base="{}")
@example(tags='["a"]', raw='{"n": 1180591620717411303424}', city=1, base="{}")
@example(tags="[]", raw=b'{"a": "b"}', city="x", base='{"city": "A"}')
def test_linked_json_reads_rows_as_the_usual_reads_do(
    tags: Any, raw: Any, city: Any, base: Any
) -> None:
    store = Store.memory()
    try:
        store.execute(
            "INSERT INTO contacts (id, location_id, ghl_id, city, tags, raw) "
            "VALUES ('c1', 'loc', 'g1', ?, ?, ?)",
            (city, tags, raw),
        )
        store.execute(
            "INSERT INTO sync_state (contact_id, base, synced_at) VALUES ('c1', ?, 'now')", (base,)
        )
    except (StorageError, OverflowError, UnicodeEncodeError):
        assume(False)  # not something SQLite stores (NULL in a NOT NULL column, a lone surrogate)
    text = store.linked_json("loc", ["g1"])
    found = decode_linked(text) if text is not None else None
    if found is not None:  # else the rows are read the usual way
        usual = Linked(store.contacts_by_ghl_ids("loc", ["g1"]), store.get_states(["c1"]))
        # The same values of the same types (2**70 == float(2**70), but their JSON differs).
        assert json.dumps(found[:2], sort_keys=True) == json.dumps(usual[:2], sort_keys=True)


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16le"])
def test_linked_json_reads_text_beyond_ascii_in_utf8_and_utf16_databases(encoding: str) -> None:
    """linked_json hands over UTF-8 bytes: SQLite's own in a database ghlsync created, text
    encoded from UTF-16 in one another program created. Either way the rows are the usual
    reads' rows, names beyond ASCII included."""
    store = memory_store(encoding)
    for cid, gid, name, tags in [
        ("c1", "g1", "José Ñúñez", '["café"]'),
        ("c2", "g2", "Zoë 🙂", "[]"),
    ]:
        store.execute(
            "INSERT INTO contacts (id, location_id, ghl_id, first_name, tags) "
            "VALUES (?, 'loc', ?, ?, ?)",
            (cid, gid, name, tags),
        )
        store.execute(
            "INSERT INTO sync_state (contact_id, base, synced_at) VALUES (?, '{}', 'now')", (cid,)
        )
    text = store.linked_json("loc", ["g1", "g2"])
    assert text is not None
    found = decode_linked(text)
    usual = Linked(store.contacts_by_ghl_ids("loc", ["g1", "g2"]), store.get_states(["c1", "c2"]))
    assert found is not None and found[:2] == usual[:2]
    assert found.contacts["g2"]["first_name"] == "Zoë 🙂"


def test_linked_json_carries_plain_rows_and_refuses_floats() -> None:
    store = Store.memory()
    store.execute(
        "INSERT INTO contacts (id, location_id, ghl_id, city, tags, raw) VALUES "
        "('c1', 'loc', 'g1', 7, '[\"vip\"]', '{\"n\": [1, \"x\"], \"s\": \"\\ud800\"}'), "
        "('c2', 'loc', 'g2', NULL, 'vip, lead', '{\"score\": 1.5}')"
    )
    store.execute("INSERT INTO sync_state VALUES ('c1', '{\"city\": \"7\", \"n\": 2}', NULL, '')")
    text = store.linked_json("loc", ["g1", "g2"])
    assert text is not None
    found = decode_linked(text)
    usual = Linked(store.contacts_by_ghl_ids("loc", ["g1", "g2"]), store.get_states(["c1", "c2"]))
    assert json.dumps(found[:2], sort_keys=True) == json.dumps(usual[:2], sort_keys=True)
    # A float in a column (SQLite's text of it is rounded), or in a base copy a number orjson
    # reads otherwise (beyond 64 bits) or not at all: read the usual way.
    store.execute("UPDATE contacts SET dnd = 0.5 WHERE id = 'c2'")
    assert store.linked_json("loc", ["g1", "g2"]) is None
    store.execute("UPDATE contacts SET dnd = 0 WHERE id = 'c2'")
    for base in ('{"n": 1180591620717411303424}', '{"n": -9223372036854775809}', '{"n": 1e400}'):
        store.execute("UPDATE sync_state SET base = ?", (base,))
        text = store.linked_json("loc", ["g1", "g2"])
        assert text is not None and decode_linked(text) is None
    # A float in a base copy is carried as written, and read as the standard library reads it.
    for base in ('{"city": 1.5}', '{"n": [0.30000000000000004, 1E5, -0.0, 123456789012345678]}'):
        store.execute("UPDATE sync_state SET base = ?", (base,))
        text = store.linked_json("loc", ["g1", "g2"])
        found = decode_linked(text) if text is not None else None
        assert found is not None
        assert same_json(found.states["c1"]["base"], json.loads(base))


# Text SQLite stores as given (no lone surrogates), padded and cased as other programs type it.
stored_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"), st.sampled_from([" ", "\x00", "\x1f", '"', "\\", "é", "A"])
    ),
    max_size=8,
)


# The ways another program may spell a value other than ghlsync does, per kind of column.
_TEXT_SPELLINGS = {
    "padded": lambda v: f" {v or ''}",
    "upper": lambda v: v.upper() if v else v,
    "empty": lambda v: v if v else "",
}
_TAGS_SPELLINGS = {
    "spaced": lambda v: json.dumps(v, ensure_ascii=False),
    "ascii": lambda v: json.dumps(v, separators=(",", ":")),
    "text": lambda v: ",".join(v),
}
_DND_SPELLINGS = {"text": lambda v: str(v).lower(), "other": lambda v: 2 * v}


# What may be spelled otherwise than ghlsync writes it (None: nothing).
ODD_PARTS = [None, "base", "name", "text tags", *SYNC_FIELDS]


@st.composite
def spelled_rows(draw: st.DrawFn, odd: str | None) -> tuple[dict[str, Any], str]:
    """(a contacts row, a base copy of its values): both as ghlsync writes them but ``odd``
    (one of ``ODD_PARTS``), spelled otherwise."""
    values = normalize_values(
        {
            **{f: draw(st.one_of(st.none(), stored_text)) for f in SYNC_FIELDS},
            "tags": draw(st.lists(stored_text, max_size=3)),
            "dnd": draw(st.booleans()),
        }
    )
    row: dict[str, Any] = {**values, "tags": dumps(values["tags"]), "dnd": int(values["dnd"])}
    row["name"] = join_name(values["first_name"], values["last_name"])
    # Unmapped keys, as any JSON (numbers orjson reads otherwise too): read the same either way.
    row["raw"] = draw(
        st.one_of(
            json_values.map(reference_dumps),
            st.sampled_from(['{"n": 1180591620717411303424}', '{"n": [2.5, -0.0]}']),
        )
    )
    base = dumps_normalised(values)
    if odd == "text tags":  # a base another program wrote, with tags as a text, spelled alike
        row["tags"] = '"x"'
        base = dumps_normalised({**values, "tags": "x"})
    elif odd == "base":
        base = draw(
            st.sampled_from(
                [
                    json.dumps(values, sort_keys=True, ensure_ascii=False),
                    dumps_normalised({k: v for k, v in values.items() if k != "city"}),
                ]
            )
        )
    elif odd == "name":
        row["name"] = draw(st.sampled_from([None, f"{row['name']} ", "Someone Else"]))
    elif odd is not None:
        spellings = {"tags": _TAGS_SPELLINGS, "dnd": _DND_SPELLINGS}.get(odd, _TEXT_SPELLINGS)
        row[odd] = draw(st.sampled_from(list(spellings.values())))(values[odd])
    return row, base


@pytest.mark.parametrize("odd", ODD_PARTS)
@given(data=st.data())
def test_a_row_is_read_as_its_base_copy_only_when_it_holds_exactly_that(
    odd: str | None, data: st.DataObject
) -> None:
    """linked_json leaves out the synced columns of a row holding its base copy: the rows read
    are still the usual reads' rows, and a row marked agreed is one whose local_values are its
    base (what the merge then takes them to be)."""
    row, base = data.draw(spelled_rows(odd))
    store = Store.memory()
    columns = ", ".join(row)
    store.execute(
        f"INSERT INTO contacts (id, location_id, ghl_id, {columns}) "
        f"VALUES ('c1', 'loc', 'g1', {', '.join('?' * len(row))})",
        tuple(row.values()),
    )
    store.execute(
        "INSERT INTO sync_state (contact_id, base, synced_at) VALUES ('c1', ?, 'now')", (base,)
    )
    text = store.linked_json("loc", ["g1"])
    assert text is not None
    found = decode_linked(text)
    assert found is not None
    usual = Linked(store.contacts_by_ghl_ids("loc", ["g1"]), store.get_states(["c1"]))
    assert json.dumps(found[:2], sort_keys=True) == json.dumps(usual[:2], sort_keys=True)
    if "c1" in found.agreed:
        assert local_values(usual.contacts["g1"]) == usual.states["c1"]["base"]
    # Written as ghlsync writes it, the row is recognised (the merge's shortcut is taken).
    if odd is None:
        assert found.agreed == {"c1"}
