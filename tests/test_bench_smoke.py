"""
The benchmark must keep working as the server changes: run C{bench/run.py
--quick} for the login, FAST reconnect and idle workloads against a real
server (and the bare TLS responder of the floor under a reconnect) and
check that it produced figures with zero errors. No timing is
asserted: the machine may be busy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


@pytest.fixture(scope="module")
def quickRun(tmp_path_factory):
    """One quick benchmark run: (exit status, stdout, JSON lines)."""
    out = tmp_path_factory.mktemp("bench") / "results.jsonl"
    result = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--scenarios",
         "login,fast,fastsm,reconnect,tlsfloor,idle,upload,download,bigupload", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False)
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return result, lines


def measured(lines: list[dict], tag: str) -> list[dict]:
    return [r for r in lines if r.get("tag") == tag and r.get("run") not in ("warmup", "setup")]


def test_exitsCleanly(quickRun):
    """The run ends with status 0 and prints the table of figures."""
    result, _ = quickRun
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| server | scenario | run | rate/s |" in result.stdout
    assert "| invitesrv-" in result.stdout


def test_loginFigures(quickRun):
    """Every login of the measured run succeeded over TLS with SCRAM, and CPU was measured."""
    _, lines = quickRun
    [login] = measured(lines, "login")
    assert login["errors"] == 0, login.get("error_kinds")
    assert login["ok"] == login["n"] > 0
    assert login["per_s"] > 0 and login["p50_ms"] > 0
    assert login["tls"] and login["tls"][0].startswith("TLS")
    assert login["scram_iterations"]
    assert login["server_cpu_s"] is not None and login["server_pid"] > 0
    assert set(login["machine"]) >= {"cpu_model", "cpus", "python", "openssl", "date"}


def test_idleFigures(quickRun):
    """All idle connections stayed up, and the server's memory per connection was read."""
    _, lines = quickRun
    [idle] = measured(lines, "idle")
    assert idle["errors"] == 0, idle.get("error_kinds")
    assert idle["connected"] == idle["k"] == idle["alive_after_hold"]
    assert isinstance(idle["bytes_per_conn"], int)
    assert idle["rss_held_bytes"] > 0


def test_fastFigures(quickRun):
    """Every reconnect with a FAST token and Bind2 succeeded, after the untimed token pass."""
    _, lines = quickRun
    [setup] = [r for r in lines if r.get("tag") == "fast" and r.get("run") == "setup"]
    assert setup["errors"] == 0 and setup["ok"] == setup["n"] > 0, setup.get("error_kinds")
    [fast] = measured(lines, "fast")
    assert fast["errors"] == 0, fast.get("error_kinds")
    assert fast["ok"] == fast["n"] > 0 and fast["per_s"] > 0 and fast["p50_ms"] > 0
    assert fast["mechanism"] == "HT-SHA-256-NONE"


def test_fastResumeFigures(quickRun):
    """
    Every reconnect with a FAST token resumed its waiting session inline in
    SASL2, each time: the run's sessions waited again after each cut.
    """
    _, lines = quickRun
    [setup] = [r for r in lines if r.get("tag") == "fastsm" and r.get("run") == "setup"]
    assert setup["errors"] == 0 and setup["ok"] == setup["n"] > 0, setup.get("error_kinds")
    [resumed] = measured(lines, "fastsm")
    assert resumed["errors"] == 0, resumed.get("error_kinds")
    assert resumed["ok"] == resumed["n"] > 0 and resumed["server_cpu_s"] is not None


def test_phoneReconnectFigures(quickRun):
    """The reconnect over direct TLS resumed every TLS session as well as every waiting session."""
    _, lines = quickRun
    [reconnect] = measured(lines, "reconnect")
    assert reconnect["errors"] == 0, reconnect.get("error_kinds")
    assert reconnect["ok"] == reconnect["n"] == reconnect["tls_resumed"] > 0
    assert reconnect["direct_tls"] and reconnect["server_cpu_s"] is not None


def test_tlsFloorFigures(quickRun):
    """
    The floor was measured on the bare responder, not on invitesrv: every
    connection resumed its TLS session there, and its own CPU was read.
    """
    _, lines = quickRun
    [floor] = measured(lines, "tlsfloor")
    [login] = measured(lines, "login")
    assert floor["errors"] == 0, floor.get("error_kinds")
    assert floor["ok"] == floor["n"] == floor["tls_resumed"] > 0
    assert floor["direct_tls"] and floor["server_cpu_s"] is not None
    assert floor["server_pid"] not in (0, login["server_pid"])


def test_uploadFigures(quickRun):
    """Every upload and download of 1 MiB went through, and a big upload's RSS was sampled."""
    _, lines = quickRun
    [upload], [download], [big] = (measured(lines, tag) for tag in ("upload", "download", "bigupload"))
    for record in (upload, download):
        assert record["errors"] == 0, record.get("error_kinds")
        assert record["ok"] == 10 and record["per_s"] > 0 and record["server_cpu_s"] is not None
    assert download["bytes"] == 10 * 1_048_576
    assert big["errors"] == 0, big.get("error_kinds")
    assert big["rss_peak_kb"] >= big["rss_before_kb"] > 0
