"""Persistent storage: interfaces, the embedded SQLite backend and an in-memory one for tests."""
