"""Cluster mode: several nodes serving the same domains, coordinated through Redis."""
