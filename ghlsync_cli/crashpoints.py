"""Named crash points: the windows the reliability tests kill the process in, on purpose.

``GHLSYNC_CRASH_AT=<name>`` is read only by tests; in normal use it is unset and a crash point costs
one dictionary lookup. The process dies with ``os._exit`` — no cleanup, no flush, no commit — which
is what a power cut or ``kill -9`` does at that line.
"""

from __future__ import annotations

import os

ENV = "GHLSYNC_CRASH_AT"
EXIT_CODE = 137


def crash_point(name: str) -> None:
    """Die here, at once, when the tests asked for a crash at ``name``."""
    if os.environ.get(ENV) == name:
        os._exit(EXIT_CODE)
