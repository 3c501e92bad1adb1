"""The field-level three-way merge used by every inbound path and by push acknowledgements.

For each synced field, with ``base`` = the last value both sides agreed on:

    remote key absent           → keep local (GHL did not send it)
    local == remote             → that value (no conflict, even if both changed)
    local == base               → remote (only GHL changed)
    remote == base              → local (only we changed: it still needs a push)
    otherwise                   → remote wins (GHL is the system of record), conflict recorded

Tags merge as sets: adds and removes from either side apply, so they never conflict. ``dnd`` and
``source`` flow from GHL only. The new base is what GHL holds after the merge, so a later push sends
exactly ``local - base`` and GHL's echo of that push changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ghlsync_cli.mapping import (
    INBOUND_ONLY,
    OUTBOUND_FIELDS,
    SYNC_FIELDS,
    join_name,
    normalize_text,
    normalize_values,
    split_name,
)


@dataclass(frozen=True)
class FieldConflict:
    """Both sides changed one field to different values; GHL's value was kept."""

    field: str
    local_value: Any
    ghl_value: Any
    base_value: Any


@dataclass(slots=True)
class MergeResult:
    """The merged local values, the new base copy, and the conflicts the merge recorded."""

    values: dict[str, Any]
    base: dict[str, Any]
    conflicts: list[FieldConflict] = field(default_factory=list)
    # The values are the base: known without comparing them (see merge_row).
    agreed: bool = False

    @property
    def needs_push(self) -> bool:
        """True when some outbound field still differs from what GHL holds."""
        return not self.agreed and has_pending_changes(self.values, self.base)


def empty_value(name: str) -> Any:
    """The value of a field nobody has set."""
    if name == "tags":
        return []
    if name == "dnd":
        return False
    return None


def merge(
    local: Mapping[str, Any], base: Mapping[str, Any] | None, remote: Mapping[str, Any]
) -> MergeResult:
    """Three-way merge of normalised synced values; ``remote`` holds only the keys GHL sent."""
    base = base or {}
    values: dict[str, Any] = {}
    new_base: dict[str, Any] = {}
    result = MergeResult(values=values, base=new_base)
    for name in SYNC_FIELDS:
        # (not local.get(name, empty_value(name)): every merge of every contact runs this loop)
        mine = local[name] if name in local else empty_value(name)
        if name not in remote:
            values[name] = mine
            if name in base:
                new_base[name] = base[name]
            continue
        theirs = remote[name]
        new_base[name] = theirs
        if name in INBOUND_ONLY:
            values[name] = theirs
        elif name == "tags":
            values[name] = merge_tags(mine, base.get(name), theirs)
        else:
            was = base[name] if name in base else empty_value(name)
            if mine in (theirs, was):
                values[name] = theirs
            elif theirs == was:
                values[name] = mine
            else:
                values[name] = theirs
                result.conflicts.append(FieldConflict(name, mine, theirs, was))
    return result


def merge_row(
    local: Mapping[str, Any], base: Mapping[str, Any] | None, remote: Mapping[str, Any], region: str
) -> MergeResult:
    """``merge(normalize_values(local, region), base, remote)`` for a row's ``local_values``.

    Most rows hold what was last agreed: their values equal the base copy. A base holds
    normalised values (every write of one does) and normalising is idempotent, so the row
    normalised equals the base too, and the merge is GHL's values on top of it: no conflict,
    nothing left to push. That case skips normalising the row and the field-by-field merge (every
    webhook and every pulled contact is merged).
    """
    if base is not None and local == base:
        values = {name: remote[name] if name in remote else base[name] for name in SYNC_FIELDS}
        return MergeResult(values=values, base=dict(values), agreed=True)
    return merge(normalize_values(local, region), base, remote)


def merge_tags(local: list[str], base: list[str] | None, remote: list[str]) -> list[str]:
    """Set merge: what both keep, plus what either side added since the base."""
    mine, theirs = set(local), set(remote)
    was = set(base or [])
    return sorted((mine & theirs) | (mine - was) | (theirs - was))


def pending_changes(values: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """Outbound fields whose local value differs from what GHL holds (the base)."""
    changes: dict[str, Any] = {}
    for name in OUTBOUND_FIELDS:
        mine = values[name] if name in values else empty_value(name)
        if mine != (base[name] if name in base else empty_value(name)):
            changes[name] = mine
    return changes


def has_pending_changes(values: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
    """Whether ``pending_changes`` is not empty (stops at the first difference)."""
    for name in OUTBOUND_FIELDS:
        mine = values[name] if name in values else empty_value(name)
        if mine != (base[name] if name in base else empty_value(name)):
            return True
    return False


def local_values(row: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The synced values of a local row, with a ``name`` edited alone split into first/last.

    Other programs may change only ``name``; GHL's UI splits a full name at the first space, and so
    do we, so the edit reaches GHL as first/last name. A ``name`` that disagrees with first/last
    because *they* were edited (it still joins the parts of ``base``, the last agreed values) is
    stale, not an edit: the parts win.
    """
    values = {name: row[name] if name in row else empty_value(name) for name in SYNC_FIELDS}
    name = normalize_text(row.get("name"))
    if name is not None and name != join_name(values["first_name"], values["last_name"]):
        parts_edited = base is not None and any(
            normalize_text(values[part]) != base.get(part) for part in ("first_name", "last_name")
        )
        if not parts_edited:
            values["first_name"], values["last_name"] = split_name(name)
    return values
