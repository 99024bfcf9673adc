"""
The log level (C{[server] log_level}): invitesrv's events below it never
reach an observer; those at or above it do, and Twisted's own events are
left alone. The server sets it when it starts and when it is reloaded.
"""

from __future__ import annotations

import pytest
from twisted.logger import Logger, globalLogPublisher

from invitesrv import logs


@pytest.fixture
def events():
    """The events the global publisher delivers during the test; the level is info again after."""
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)
    logs.setLevel("info")


def texts(events: list[dict]) -> list[str]:
    return [event["log_format"] for event in events]


def test_levelFiltersInvitesrvEvents(events):
    """At info, debug is dropped; at warn, info too; at debug, everything passes."""
    log = logs.logger()
    logs.setLevel("info")
    log.debug("d1")
    log.info("i1")
    log.warn("w1")
    logs.setLevel("warn")
    log.info("i2")
    log.error("e2")
    logs.setLevel("debug")
    log.debug("d3")
    assert texts(events) == ["i1", "w1", "e2", "d3"]


def test_namespaceIsTheCallingModule(events):
    """A module's logger is named after the module, as Twisted's own Logger() is."""
    logs.logger().info("here")
    assert [event["log_namespace"] for event in events] == [__name__]


def test_twistedEventsLeftAlone(events):
    """Another library's logger is not filtered: twistd writes what it is given."""
    logs.setLevel("critical")
    Logger(namespace="twisted.internet.base").info("Received SIGTERM")
    logs.logger().error("dropped")
    assert texts(events) == ["Received SIGTERM"]

