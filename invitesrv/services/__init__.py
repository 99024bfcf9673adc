"""Typed host services that modules depend on, instead of one another's internals."""
