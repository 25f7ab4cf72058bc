"""Persistence: the one SQLite file under the data directory, through aiosqlite."""
