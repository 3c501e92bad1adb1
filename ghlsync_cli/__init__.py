"""ghlsync: two-way contact sync between a GoHighLevel location and a local SQLite file."""

__version__ = "0.1.0"
