"""Logging with personal data masked by default: emails and phone numbers never reach a log file.

Agencies ship these logs to shared systems; a contact's email or phone there is a leak. Masking
keeps enough to debug (the first character and the domain, the last two digits).
"""

from __future__ import annotations

import logging
import re
import sys

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_PHONE = re.compile(r"(?<![\w.:-])\+?\(?\d[\d ().-]{5,}\d(?![\w.:-])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def mask_pii(text: str) -> str:
    """Mask emails (``j***@example.com``) and phone numbers (``***32``) in a text."""
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _PHONE.sub(_mask_phone, text)


def _mask_phone(match: re.Match[str]) -> str:
    found = match.group(0)
    digits = re.sub(r"\D", "", found)
    if len(digits) < 7 or _DATE.search(found):
        return found
    return "***" + digits[-2:]


class MaskingFilter(logging.Filter):
    """A logging filter that formats the message and masks personal data in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message, masked; always keep the record."""
        record.msg = mask_pii(record.getMessage())
        record.args = None
        return True


def configure(*, level: int = logging.INFO, mask: bool = True) -> None:
    """Send ghlsync's log records (every ``ghlsync_cli.*`` logger) to stderr, masked by default."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if mask:
        handler.addFilter(MaskingFilter())
    root = logging.getLogger("ghlsync_cli")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
