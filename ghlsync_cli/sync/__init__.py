"""The sync engine: matching, three-way merge, push queue and sync runs."""
