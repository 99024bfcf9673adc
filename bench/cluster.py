#!/usr/bin/env python3
"""
Cluster mode's cost: two invitesrv nodes (cluster mode, one Redis, one store)
and the messages workload of C{bench/run.py} twice, with both sides of each
pair on node 1 (same-node messages) and with the sides on different nodes
(cross-node messages: every message and receipt goes through Redis). The
figure is the CPU time per message of both nodes and Redis together.

    python bench/cluster.py                 # 20 pairs x 200 messages per side, each layout
    python bench/cluster.py --quick         # 2 pairs x 20

The nodes and Redis share CPU 0 and the generator has CPU 1 (when there are
two); only 127.0.0.1 is used; only the processes started here are stopped, by
their PID. Needs redis-server (Debian's package).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    DOMAIN,
    GENERATOR,
    POOL,
    BenchError,
    Invitesrv,
    cpuPlan,
    figures,
    freePort,
    log,
    machineInfo,
    writeCertificate,
)

REDIS_SERVER = "/usr/bin/redis-server"


class Redis:
    """A private redis-server on loopback, nothing written to disk."""

    def __init__(self, directory: Path, cpu: str | None):
        self.port = freePort()
        config = directory / "redis.conf"
        config.write_text(f"bind 127.0.0.1\nport {self.port}\nsave \"\"\nappendonly no\n"
                          f"dir {directory}\nlogfile {directory / 'redis.log'}\n")
        command = [REDIS_SERVER, str(config)]
        if cpu is not None:
            command = ["taskset", "-c", cpu, *command]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        if self.process.poll() is not None:
            raise BenchError(f"redis-server exited; see {directory / 'redis.log'}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def node(work: Path, index: int, cpu: str | None, certificate, redis: Redis) -> Invitesrv:
    """Node C{index} of the cluster: the bench's config with [cluster]; the others open node 1's store."""
    server = Invitesrv(work / f"n{index}", cpu, certificate)
    with server.configPath.open("a") as f:
        f.write(f'[cluster]\nenabled = true\nredis = "redis://127.0.0.1:{redis.port}/0"\n'
                f'node = "n{index}"\n')
    if index > 1:
        data = server.directory / "data"
        data.mkdir(mode=0o700)
        first = work / "n1" / "data"
        os.symlink(first / "invitesrv.sqlite3", data / "invitesrv.sqlite3")
        os.symlink(first / "server.secret", data / "server.secret")
    return server


def cpuSeconds(pid: int) -> float:
    """User and system CPU seconds of process C{pid} so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def messages(nodes, redis: Redis, pairs: int, per: int, crossNode: bool, genCPU, work: Path) -> dict:
    n1, n2 = nodes
    command = [sys.executable, str(GENERATOR), "--host", "127.0.0.1", "--port", str(n1.port),
               "--domain", DOMAIN, "--server-pid", str(n1.pid),
               "--also-pids", f"{n2.pid},{redis.process.pid}", "--scram-cache",
               str(work / "scram"), "--prefix", POOL, "messages", "-p", str(pairs), "-m", str(per)]
    if crossNode:
        command += ["--port2", str(n2.port)]
    if genCPU is not None:
        command = ["taskset", "-c", genCPU, *command]
    before = [cpuSeconds(pid) for pid in (n1.pid, n2.pid, redis.process.pid)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    after = [cpuSeconds(pid) for pid in (n1.pid, n2.pid, redis.process.pid)]
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"the generator failed: {result.stderr[-500:]}")
    record = json.loads(lines[-1])
    record["layout"] = "cross-node" if crossNode else "same-node"
    ok = max(1, record.get("messages_ok") or 0)  # the whole run, logins and all
    record["cpu_ms_msg_run"] = {name: round(1000 * (a - b) / ok, 3)
                                for name, a, b in zip(("n1", "n2", "redis"), after, before, strict=True)}
    record["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--quick", action="store_true", help="2 pairs x 20 messages")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("-m", type=int, default=200, help="messages sent by each side of a pair")
    parser.add_argument("--repeat", type=int, default=1)
    options = parser.parse_args(argv)
    if not Path(REDIS_SERVER).exists():
        raise SystemExit(f"{REDIS_SERVER} is not installed (apt-get install redis-server)")
    pairs, per = (2, 20) if options.quick else (options.pairs, options.m)
    serverCPU, genCPU = cpuPlan()
    work = Path(tempfile.mkdtemp(prefix="invitesrv-cluster-bench-"))
    redis = None
    nodes = []
    try:
        certificate = (work / "server.crt", work / "server.key")
        writeCertificate(*certificate)
        redis = Redis(work, serverCPU)
        nodes = [node(work, index, serverCPU, certificate, redis) for index in (1, 2)]
        nodes[0].provision(2 * pairs)
        for server in nodes:
            server.start()
        time.sleep(1)  # both joined
        results = []
        for _ in range(options.repeat):
            for crossNode in (False, True):
                record = messages(nodes, redis, pairs, per, crossNode, genCPU, work)
                shown = figures(record)
                log(f"{record['layout']}: {shown['rate']} msgs/s, p50 {shown['p50']} ms,"
                    f" {shown['cpu_ms_op']} CPU ms/msg (both nodes and Redis), errors"
                    f" {record.get('errors')}, load {' '.join(record['loadavg'])}; whole run"
                    f" (with logins) per process: {record['cpu_ms_msg_run']}")
                results.append(record)
        same = [figures(r)["cpu_ms_op"] for r in results if r["layout"] == "same-node"]
        cross = [figures(r)["cpu_ms_op"] for r in results if r["layout"] == "cross-node"]
        if all(same) and all(cross):
            log(f"cross-node / same-node CPU per message: {min(cross) / min(same):.2f}")
        print(json.dumps({"machine": machineInfo(), "results": results}))
        return 0 if not any(r.get("errors") for r in results) else 1
    finally:
        for server in nodes:
            server.stop()
        if redis is not None:
            redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
