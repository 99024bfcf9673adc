"""
The OpenMetrics/Prometheus endpoint, scraped as Prometheus would: what the
server does shows in the figures (sessions, connections, events,
registrations by path, store latency, reactor lag, the process's memory).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from rawxmpp import RawClient

# RunningServer's config ends in its [listen] table, which the first line extends.
CONFIG = """
metrics = ["tcp:0:interface=127.0.0.1"]
[hosts.localhost]
allow_registration = true
registration_invite_only = false
"""


def exposition(server) -> str:
    port = int(re.search(r"Metrics listening on 127.0.0.1:(\d+)", server.log()).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def scrape(server) -> dict[tuple[str, tuple], float]:
    text = exposition(server)
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_scrapeShowsWhatHappens(serverFactory):
    """A registration, a login and a bad password move the figures that count them."""
    server = serverFactory(CONFIG)
    before = scrape(server)
    assert before[("invitesrv_sessions", (("host", "localhost"),))] == 0
    assert before[("process_resident_memory_bytes", ())] > 1_000_000
    with RawClient(server.port) as client:
        client.startTLS()
        client.send("<iq type='set' id='r'><query xmlns='jabber:iq:register'><username>metric"
                    "</username><password>a long password</password></query></iq>")
        assert "type='result'" in client.recvUntil(r"<iq[^>]*id=.r.[^>]*>")
    with RawClient(server.port) as wrong:
        wrong.startTLS()
        assert "<failure" in wrong.scram("metric", "not the password")
    with RawClient(server.port) as client:
        client.login("metric", "a long password")
        client.send("<presence/>")
        client.send("<iq type='get' id='ping'><ping xmlns='urn:xmpp:ping'/></iq>")
        client.recvUntil("id=.ping.")
        time.sleep(1.5)  # the reactor-lag probe runs every second
        after = scrape(server)
    assert after[("invitesrv_sessions", (("host", "localhost"),))] == 1
    assert after[("invitesrv_connections", (("listener", "c2s"),))] == 1
    assert after[("invitesrv_registrations_total", (("host", "localhost"), ("path", "ibr")))] == 1
    assert after[("invitesrv_events_total", (("event", "auth.failed"),))] == 1
    assert after[("invitesrv_events_total", (("event", "auth.succeeded"),))] == 1
    assert after[("invitesrv_events_total", (("event", "stanzas.in.presence"),))] == 1
    # The ping; the bind is the stream's, not the session's.
    assert after[("invitesrv_events_total", (("event", "stanzas.in.iq"),))] == 1
    assert after[("invitesrv_events_total", (("event", "stanzas.out.iq"),))] == 1
    assert after[("invitesrv_events_total", (("event", "connections.accepted"),))] >= 3
    assert after[("invitesrv_store_seconds_count", ())] > before[("invitesrv_store_seconds_count", ())]
    assert after[("invitesrv_reactor_lag_seconds_count", ())] > before[
        ("invitesrv_reactor_lag_seconds_count", ())]


def test_dashboardNamesExistingMetrics(serverFactory):
    """Every metric the sample Grafana dashboard plots is one the server exposes."""
    dashboard = json.loads((Path(__file__).parent.parent / "docs" / "grafana-dashboard.json").read_text())
    wanted = {name for panel in dashboard["panels"] for target in panel["targets"]
              for name in re.findall(r"\b((?:invitesrv|process)_\w+?)(?:_bucket)?\{", target["expr"])}
    exposed = set(re.findall(r"^# TYPE (\w+)", exposition(serverFactory(CONFIG)), re.M))
    assert wanted and wanted <= exposed, wanted - exposed


def test_invitesByEvent():
    """
    The invite hooks count by host and event: created, used, and expired
    (run by the invites' sweep for each expired invite before it goes).
    """
    from twisted.internet import task

    from invitesrv.config import Config, HostOptions
    from invitesrv.metrics import MetricsService
    from invitesrv.service import InviteServer
    from invitesrv.store.interfaces import Invite
    from invitesrv.store.memory import MemoryStore

    clock = task.Clock()
    server = InviteServer(Config(hosts={"example.org": HostOptions()}, modules=()),
                          store=MemoryStore(), reactor=clock, loadModules=False)
    metrics = MetricsService(server, clock)
    metrics.startService()
    hooks = server.hosts["example.org"].hooks
    invite = Invite(id="i1", host="example.org", kind="account", created=0.0, expires=1.0)
    hooks.run("invite-created", invite, {})
    hooks.run("invite-expired", invite)
    hooks.run("invite-expired", invite)
    metrics.stopService()
    hooks.run("invite-expired", invite)

    def count(event):
        return metrics.registry.get_sample_value(
            "invitesrv_invites_total", {"host": "example.org", "event": event})
    assert (count("created"), count("expired"), count("used")) == (1.0, 2.0, None)
