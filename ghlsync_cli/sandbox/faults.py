"""Fault injection: make chosen API requests fail the ways real networks and GHL do.

A sync has to survive 5xx bursts, slow answers, cut or garbled bodies, a cursor that never moves,
dropped connections and tokens revoked mid-run. Each rule picks requests by path regex (and
optionally method), fires for the next ``count`` matches or with probability ``rate`` (seeded, so
runs repeat), optionally after letting ``skip`` matches through, and says how to fail.

Rule format (JSON, as posted to ``/_sandbox/faults``)::

    {"path_regex": "^/contacts/search$", "method": "POST", "mode": "status", "status": 503,
     "count": 2}

Modes: ``status`` (answer ``status`` with a JSON error), ``delay`` (wait ``delay_ms`` then answer
normally), ``malformed`` (200 with an HTML body), ``truncated`` (200 with the real JSON cut in
half), ``wrong_shape`` (200 with valid JSON of the wrong shape, or ``body`` if given),
``stuck_cursor`` (search ignores ``searchAfter``/``page`` and repeats the first page), ``reset``
(the connection is dropped without an answer) and ``unauthorized`` (401 ``Invalid JWT``).
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FAULT_MODES = (
    "status",
    "delay",
    "malformed",
    "truncated",
    "wrong_shape",
    "stuck_cursor",
    "reset",
    "unauthorized",
)
_RULE_KEYS = frozenset(
    {"path_regex", "method", "mode", "count", "rate", "status", "delay_ms", "skip", "body"}
)


@dataclass
class FaultRule:
    """One fault: which requests it hits, how often, and how they fail."""

    path_regex: str
    mode: str
    method: str | None = None
    count: int | None = None
    rate: float | None = None
    status: int = 503
    delay_ms: int = 1000
    skip: int = 0
    body: Any = None
    fired: int = field(default=0, compare=False)
    seen: int = field(default=0, compare=False)
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")
        try:
            self._pattern = re.compile(self.path_regex)
        except re.error as exc:
            raise ValueError(f"path_regex is not a valid regex: {exc}") from None
        if self.method is not None:
            self.method = self.method.upper()
        if self.count is not None and self.count < 0:
            raise ValueError("count must not be negative")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if self.delay_ms < 0 or self.skip < 0:
            raise ValueError("delay_ms and skip must not be negative")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        """Build a rule from its JSON form; raises ValueError on unknown keys or bad values."""
        unknown = set(data) - _RULE_KEYS
        if unknown:
            raise ValueError(f"unknown fault rule keys: {', '.join(sorted(unknown))}")
        if not isinstance(data.get("path_regex"), str) or not isinstance(data.get("mode"), str):
            raise ValueError("path_regex and mode are required strings")
        kwargs: dict[str, Any] = dict(data)
        for key in ("count", "status", "delay_ms", "skip"):
            value = kwargs.get(key)
            if (
                key in kwargs
                and value is not None
                and (isinstance(value, bool) or not isinstance(value, int))
            ):
                raise ValueError(f"{key} must be an integer")
        rate = kwargs.get("rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)):
            raise ValueError("rate must be a number")
        for key in ("status", "delay_ms", "skip"):
            if kwargs.get(key) is None:
                kwargs.pop(key, None)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The rule's JSON form, with ``fired`` and (if counted) ``remaining``."""
        data: dict[str, Any] = {"path_regex": self.path_regex, "mode": self.mode}
        for key in ("method", "count", "rate", "body"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.mode == "status":
            data["status"] = self.status
        if self.mode == "delay":
            data["delay_ms"] = self.delay_ms
        if self.skip:
            data["skip"] = self.skip
        data["fired"] = self.fired
        if self.count is not None:
            data["remaining"] = max(0, self.count - self.fired)
        return data

    def matches(self, method: str, path: str) -> bool:
        """Whether a request is one this rule targets (ignoring count, rate and skip)."""
        if self.method is not None and self.method != method.upper():
            return False
        return self._pattern.search(path) is not None


class FaultInjector:
    """The active fault rules; ``pick`` decides, per request, which one (if any) fires."""

    def __init__(self, seed: int = 0) -> None:
        self._rules: list[FaultRule] = []
        self._rng = random.Random(seed)
        self._seed = seed
        self._lock = threading.Lock()

    def set_rules(self, rules: Sequence[FaultRule]) -> None:
        """Replace every rule (and restart the seeded random sequence)."""
        with self._lock:
            self._rules = list(rules)
            self._rng = random.Random(self._seed)

    def add_rule(self, rule: FaultRule) -> None:
        """Append one rule after the existing ones."""
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        """Remove every rule."""
        self.set_rules([])

    def rules(self) -> list[dict[str, Any]]:
        """The rules in JSON form, in the order they are tried."""
        with self._lock:
            return [rule.to_dict() for rule in self._rules]

    def pick(self, method: str, path: str) -> FaultRule | None:
        """The first rule that fires for this request, counting it as fired, or None."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(method, path):
                    continue
                if rule.count is not None and rule.fired >= rule.count:
                    continue
                rule.seen += 1
                if rule.seen <= rule.skip:
                    continue
                if rule.rate is not None and self._rng.random() >= rule.rate:
                    continue
                rule.fired += 1
                return rule
        return None
