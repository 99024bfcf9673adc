#!/usr/bin/env python3
"""
Cluster mode's cost: two invitesrv nodes (cluster mode, one Redis, one
private PostgreSQL as the shared store) and the messages workload of
C{bench/run.py} twice, with both sides of each pair on node 1 (same-node
messages) and with the sides on different nodes (cross-node messages: every
message and receipt goes through Redis). The figure is the CPU time per
message of both nodes, Redis and PostgreSQL together, counted until the
store has written what the run archived (the archive is written behind the
messages; without waiting, one layout's writes would be charged to the
next). Then what the nodes hold: K idle logins on node 1 alone, and K on
each node at once. And how long a stream management resumption takes
(C{<resume/>} to C{<resumed/>}) of a session held by node 1, resumed on
node 1 and on node 2 (handed over).

With --pep, the PEP workload of C{bench/pepload.py} instead (a hub user and
its contacts, avatar publications and logins that get the contacts' last
items), all on node 1, then the hub on node 1 and its contacts on node 2:
the CPU per publication (and its notification to every contact) and per
login, of both nodes, Redis and PostgreSQL together.

    python bench/cluster.py                 # 20 pairs x 200 messages per side, K = 1000
    python bench/cluster.py --quick         # 2 pairs x 20, K = 50
    python bench/cluster.py --pep           # 100 contacts, 200 publications, 50 logins
    python bench/cluster.py --resume-only   # the resumptions alone

The nodes and Redis share CPU 0; the generator and PostgreSQL have CPU 1
(when there are two); only 127.0.0.1 and a Unix socket are used; only the
processes started here are stopped, by their PID. Needs redis-server and
postgresql (Debian's packages) and psycopg.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' private PostgreSQL

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


def node(work: Path, index: int, cpu: str | None, certificate, redis: Redis, dsn: str) -> Invitesrv:
    """Node C{index} of the cluster: the bench's config with the shared store and [cluster]."""
    server = Invitesrv(work / f"n{index}", cpu, certificate, dsn)
    with server.configPath.open("a") as f:
        f.write(f'[cluster]\nenabled = true\nredis = "redis://127.0.0.1:{redis.port}/0"\n'
                f'node = "n{index}"\n')
    return server


def postgresqlPids(postgresql) -> list[int]:
    """The private PostgreSQL's processes: the postmaster and its children (backends and all)."""
    master = int((postgresql.directory / "data" / "postmaster.pid").read_text().split()[0])
    children = [int(path.parent.name) for path in Path("/proc").glob("[0-9]*/stat")
                if _parent(path) == master]
    return [master, *children]


def _parent(stat: Path) -> int:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def cpuSeconds(pid: int) -> float:
    """User and system CPU seconds of process C{pid} so far (0 for one that ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def storeSettled(dsn: str, timeout: float = 300.0) -> float:
    """
    Wait until the nodes' store connections are idle and the archive stops
    growing, for C{timeout} seconds at most; the seconds waited.
    """
    import psycopg
    started = time.monotonic()
    quiet, last = 0, None
    with psycopg.connect(dsn, autocommit=True) as conn:
        while quiet < 3 and time.monotonic() - started < timeout:
            busy, rows = conn.execute(
                "SELECT (SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name LIKE 'invitesrv %' AND state <> 'idle'),"
                " (SELECT COUNT(*) FROM archive)").fetchone()
            quiet = quiet + 1 if not busy and rows == last else 0
            last = rows
            time.sleep(0.1)
    return time.monotonic() - started


def messages(nodes, redis: Redis, pgPids: list[int], pairs: int, per: int, crossNode: bool,
             genCPU, work: Path, dsn: str) -> dict:
    n1, n2 = nodes
    others = [n2.pid, redis.process.pid, *pgPids]
    command = [sys.executable, str(GENERATOR), "--host", "127.0.0.1", "--port", str(n1.port),
               "--domain", DOMAIN, "--server-pid", str(n1.pid),
               "--also-pids", ",".join(map(str, others)), "--scram-cache",
               str(work / "scram"), "--prefix", POOL, "messages", "-p", str(pairs), "-m", str(per)]
    if crossNode:
        command += ["--port2", str(n2.port)]
    if genCPU is not None:
        command = ["taskset", "-c", genCPU, *command]
    groups = {"n1": [n1.pid], "n2": [n2.pid], "redis": [redis.process.pid], "postgresql": pgPids}
    before = {name: sum(map(cpuSeconds, pids)) for name, pids in groups.items()}
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    waited = storeSettled(dsn)
    after = {name: sum(map(cpuSeconds, pids)) for name, pids in groups.items()}
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"the generator failed: {result.stderr[-500:]}")
    record = json.loads(lines[-1])
    record["layout"] = "cross-node" if crossNode else "same-node"
    ok = max(1, record.get("messages_ok") or 0)  # the whole run, logins and archive writes
    record["cpu_ms_msg_run"] = {name: round(1000 * (after[name] - before[name]) / ok, 3)
                                for name in groups}
    record["cpu_ms_msg_all"] = round(sum(record["cpu_ms_msg_run"].values()), 3)
    record["store_settled_s"] = round(waited, 1)
    record["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    return record


PEP_GENERATOR = HERE / "pepload.py"


def pep(nodes, redis: Redis, pgPids: list[int], sizes: tuple[int, int, int], crossNode: bool,
        genCPU, work: Path, start: int) -> dict:
    """The pep workload, its contacts on node 1 or (C{crossNode}) on node 2; its record."""
    n1, n2 = nodes
    contacts, publishes, logins = sizes
    command = [sys.executable, str(PEP_GENERATOR), "--host", "127.0.0.1", "--port", str(n1.port),
               "--domain", DOMAIN, "--server-pid", str(n1.pid),
               "--also-pids", ",".join(map(str, [n2.pid, redis.process.pid, *pgPids])),
               "--scram-cache", str(work / "scram-pep"), "--prefix", POOL, "--start", str(start),
               "pep", "-k", str(contacts), "--publishes", str(publishes), "--logins", str(logins)]
    if crossNode:
        command += ["--port2", str(n2.port)]
    if genCPU is not None:
        command = ["taskset", "-c", genCPU, *command]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"the PEP generator failed: {result.stderr[-500:]}")
    record = json.loads(lines[-1])
    record["layout"] = "pep-cross-node" if crossNode else "pep-same-node"
    for part in ("publish", "login"):
        done = record.get(f"{part}_ok") or 0
        cpu = record.get(f"{part}_server_cpu_s")
        record[f"{part}_cpu_ms"] = round(1000 * cpu / done, 2) if done and cpu is not None else None
    record["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    return record


def idle(servers, k: int, genCPU, work: Path, start: int) -> list[dict]:
    """K idle logins held on each of C{servers} at once (a generator each); their records."""
    commands = []
    for index, server in enumerate(servers):
        command = [sys.executable, str(GENERATOR), "--host", "127.0.0.1", "--port", str(server.port),
                   "--domain", DOMAIN, "--server-pid", str(server.pid), "--scram-cache",
                   str(work / f"scram-idle{index}"), "--prefix", POOL, "--start",
                   str(start + index * k), "idle", "-k", str(k), "-c", "50", "--settle", "2",
                   "--hold", "2"]
        commands.append(["taskset", "-c", genCPU, *command] if genCPU is not None else command)
    running = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for c in commands]
    records = []
    for process, server in zip(running, servers, strict=True):
        out, err = process.communicate(timeout=600)
        lines = out.strip().splitlines()
        if not lines:
            raise BenchError(f"the idle generator failed: {err[-500:]}")
        record = json.loads(lines[-1])
        record["node"] = server.directory.name
        record["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
        records.append(record)
    return records


def resumptions(nodes, rounds: int) -> list[dict]:
    """
    Milliseconds from C{<resume/>} to C{<resumed/>} for a session that node
    1 holds (its client gone without a word), resumed on node 1 itself and
    on node 2, one after the other, C{rounds} times.
    """
    from rawxmpp import RawClient
    user, password = f"{POOL}0", f"pw-{POOL}0"
    timings: dict[str, list[float]] = {"resume-same-node": [], "resume-cross-node": []}
    for _ in range(rounds):
        for layout, target in (("resume-same-node", nodes[0]), ("resume-cross-node", nodes[1])):
            phone = RawClient(nodes[0].port, DOMAIN)
            phone.login(user, password, "phone")
            phone.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            token = re.search(r"id='([^']+)'", phone.recvUntil(r"<enabled [^>]*/>")).group(1)
            phone.close()
            time.sleep(0.3)  # node 1 finds the connection gone: the session waits
            again = RawClient(target.port, DOMAIN)
            again.startTLS()
            again.scram(user, password)
            again.openStream()
            started = time.perf_counter()
            again.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{token}' h='0'/>")
            again.recvUntil(r"<resumed [^>]*/>")
            timings[layout].append(1000 * (time.perf_counter() - started))
            again.send("</stream:stream>")
            again.close()
    return [{"layout": layout, "ms_median": round(statistics.median(ms), 2),
             "ms_max": round(max(ms), 2), "rounds": rounds,
             "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
            for layout, ms in timings.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--quick", action="store_true", help="2 pairs x 20 messages, K = 50")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("-m", type=int, default=200, help="messages sent by each side of a pair")
    parser.add_argument("-k", type=int, default=1000, help="idle logins held per node")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--pep", action="store_true",
                        help="the PEP workload on one node, then across the two (see above)")
    parser.add_argument("--resumptions", type=int, default=20, help="of each kind")
    parser.add_argument("--resume-only", action="store_true",
                        help="only the stream management resumptions")
    options = parser.parse_args(argv)
    if not Path(REDIS_SERVER).exists():
        raise SystemExit(f"{REDIS_SERVER} is not installed (apt-get install redis-server)")
    from pgcluster import PrivatePostgreSQL, missing
    if missing() is not None:
        raise SystemExit(missing())
    pairs, per, k = (2, 20, 50) if options.quick else (options.pairs, options.m, options.k)
    pepSizes = (5, 10, 5) if options.quick else (100, 200, 50)
    serverCPU, genCPU = cpuPlan()
    work = Path(tempfile.mkdtemp(prefix="invitesrv-cluster-bench-"))
    redis = postgresql = None
    nodes = []
    try:
        certificate = (work / "server.crt", work / "server.key")
        writeCertificate(*certificate)
        redis = Redis(work, serverCPU)
        postgresql = PrivatePostgreSQL().start(cpus=genCPU)
        dsn = postgresql.dsn(postgresql.createDatabase())
        log(f"PostgreSQL: a private cluster in {postgresql.directory}, CPU {genCPU}")
        nodes = [node(work, index, serverCPU, certificate, redis, dsn) for index in (1, 2)]
        nodes[0].provision(2 * (pepSizes[0] + 1) if options.pep
                           else 1 if options.resume_only else max(2 * pairs, 3 * k))
        nodes[0].start()  # makes the server secret, which the other node must share
        secret = work / "n1" / "data" / "server.secret"
        (work / "n2" / "data").mkdir(mode=0o700)
        shutil.copy2(secret, work / "n2" / "data" / "server.secret")
        nodes[1].start()
        time.sleep(1)  # both joined
        if options.pep:
            results = []
            for crossNode in (False, True):  # fresh users for each layout
                record = pep(nodes, redis, postgresqlPids(postgresql), pepSizes, crossNode, genCPU,
                             work, start=(pepSizes[0] + 1) if crossNode else 0)
                log(f"{record['layout']}: {record.get('publish_per_s')} publications/s"
                    f" ({record.get('notifications_per_s')} notifications/s), p50"
                    f" {record.get('publish_p50_ms')} ms, {record['publish_cpu_ms']} CPU ms per"
                    f" publication to {pepSizes[0]} contacts; {record.get('login_per_s')} logins/s, p50"
                    f" {record.get('login_p50_ms')} ms, {record['login_cpu_ms']} CPU ms per login"
                    f" (both nodes, Redis and PostgreSQL); errors {record.get('errors')}, load"
                    f" {' '.join(record['loadavg'])}")
                results.append(record)
            print(json.dumps({"machine": machineInfo(), "results": results}))
            return 0 if not any(r.get("errors") for r in results) else 1
        results = resumptions(nodes, 5 if options.quick else options.resumptions)
        for record in results:
            log(f"{record['layout']}: median {record['ms_median']} ms, max {record['ms_max']} ms"
                f" ({record['rounds']} rounds), load {' '.join(record['loadavg'])}")
        for _ in range(0 if options.resume_only else options.repeat):
            for crossNode in (False, True):
                record = messages(nodes, redis, postgresqlPids(postgresql), pairs, per, crossNode,
                                  genCPU, work, dsn)
                shown = figures(record)
                log(f"{record['layout']}: {shown['rate']} msgs/s, p50 {shown['p50']} ms,"
                    f" {shown['cpu_ms_op']} CPU ms/msg while sending (both nodes, Redis and"
                    f" PostgreSQL), {record['cpu_ms_msg_all']} until archived (the store settled"
                    f" {record['store_settled_s']} s after the last receipt), errors"
                    f" {record.get('errors')}, load {' '.join(record['loadavg'])}; per process"
                    f" (logins included): {record['cpu_ms_msg_run']}")
                results.append(record)
        same = [r["cpu_ms_msg_all"] for r in results if r["layout"] == "same-node"]
        cross = [r["cpu_ms_msg_all"] for r in results if r["layout"] == "cross-node"]
        if same and cross and all(same) and all(cross):
            log(f"cross-node / same-node CPU per message, until archived: {min(cross) / min(same):.2f}"
                f" (best run of each), {min(cross) / max(same):.2f}-{max(cross) / min(same):.2f}"
                f" across runs")
        # One node, then both at once (fresh users each time).
        for held in ([nodes[0]], nodes) if not options.resume_only else ():
            for record in idle(held, k, genCPU, work, start=0 if len(held) == 1 else k):
                log(f"idle on {record['node']} ({len(held)} node(s) loaded):"
                    f" {record.get('alive_after_hold')} of {k} held, {record.get('login_per_s')}"
                    f" logins/s, {record.get('bytes_per_conn')} bytes RSS per connection,"
                    f" load {' '.join(record['loadavg'])}")
                record["layout"] = f"idle-{len(held)}-node"
                results.append(record)
        print(json.dumps({"machine": machineInfo(), "results": results}))
        return 0 if not any(r.get("errors") for r in results) else 1
    finally:
        for server in nodes:
            server.stop()
        if redis is not None:
            redis.stop()
        if postgresql is not None:
            postgresql.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
