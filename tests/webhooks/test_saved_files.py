"""Saved webhook files are read a body at a time (see ``split_saved``)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ghlsync_cli.errors import InputError
from ghlsync_cli.webhooks import split_saved


def test_bodies_come_one_at_a_time_and_an_error_when_reached() -> None:
    data = b'{"type": "ContactUpdate", "id": "a1"}\n\n{"type": "ContactUpdate", "id": \n'
    bodies = split_saved(data)
    first = next(bodies)
    assert first.raw == b'{"type": "ContactUpdate", "id": "a1"}'
    assert first.document == {"type": "ContactUpdate", "id": "a1"}
    with pytest.raises(InputError, match="Line 3 is not valid JSON"):
        next(bodies)


@pytest.mark.parametrize(
    ("data", "count"),
    [
        (b'{"type": "A"}', 1),
        (b'[{"type": "A"}, {"headers": {"x": "1"}, "body": "{\\"type\\": \\"B\\"}"}]', 2),
        (b'{"type": "A"}\r\n{"type": "B"}\r\n', 2),
    ],
)
def test_every_form_of_file_gives_its_bodies(data: bytes, count: int) -> None:
    assert len(list(split_saved(data))) == count


def test_a_file_of_blank_lines_holds_no_json() -> None:
    with pytest.raises(InputError, match="holds no JSON"):
        list(split_saved(b"\n \n"))


@pytest.mark.parametrize(
    "elsewhere",
    [
        b'{"type": "B", "n": 1}',
        b'{"type": "B", "n": 1180591620717411303424}',  # beyond 64 bits: orjson reads a float
        b'{"type": "B", "id": "12345678901234567890"}',  # 20 digits, in a string
    ],
)
def test_each_line_is_read_as_the_standard_library_reads_it(elsewhere: bytes) -> None:
    """Long integers are looked for once in the whole file: a line is read exactly whether the
    file holds one on another line, on that line, or nowhere."""
    lines = [
        b'{"type": "A", "score": 2.5, "big": 36893488147419103232, "small": -3}',
        b'{"type": "A", "score": 1e400, "n": 18446744073709551615}',
        elsewhere,
    ]
    bodies = list(split_saved(b"\n".join(lines)))
    for body, line in zip(bodies, lines, strict=True):
        assert repr(body.document) == repr(json.loads(line))


line_ends = st.sampled_from([b"\n", b"\r", b"\r\n"])
saved_lines = st.lists(
    st.tuples(
        st.sampled_from([b'{"type": "A"}', b'{"type": "B", "x": "\\u2028"}', b"", b" \t", b"{"]),
        line_ends,
    ),
    min_size=1,
    max_size=6,
)


@given(saved_lines, st.booleans())
def test_lines_are_those_splitlines_gives_whatever_ends_them(
    lines: list[tuple[bytes, bytes]], last_end: bool
) -> None:
    """A file without \\r is split at each \\n: the bodies, and the line an error names, are the
    ones bytes.splitlines gives, in a file with \\r or without."""
    data = b"".join(line + end for line, end in lines)
    if not last_end:
        data = data.rstrip(b"\r\n")
    expected = [(n, line) for n, line in enumerate(data.splitlines(), start=1) if line.strip()]
    bad = next((n for n, line in expected if line == b"{"), None)
    if not expected:
        with pytest.raises(InputError, match="holds no JSON"):
            list(split_saved(data))
    elif bad is not None:
        with pytest.raises(InputError, match=f"^Line {bad} is not valid JSON"):
            list(split_saved(data))
    else:
        assert [body.raw for body in split_saved(data)] == [line for _, line in expected]
