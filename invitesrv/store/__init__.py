"""Persistent storage: interfaces and the embedded SQLite backend."""
