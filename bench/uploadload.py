"""
XEP-0363 upload load generator for bench/run.py: slots over XMPP (slixmpp),
files over HTTP (aiohttp), against any server with an upload component.

    put  -n N -c C --size BYTES --url-file F   N uploads (slot + PUT) at concurrency C;
                                               the GET URLs go to F
    get  -c C --url-file F                     one GET of each URL in F at concurrency C
    big  --size BYTES                          one upload of BYTES while the server's RSS
                                               is sampled every 20 ms

Prints one JSON line: the rate, latencies, errors, the server's CPU seconds
(from /proc/PID/stat) and, for C{big}, its RSS before and at the peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter

import aiohttp
import slixmpp

NS_UPLOAD = "urn:xmpp:http:upload:0"
TICKS = os.sysconf("SC_CLK_TCK")


def serverCPU(pid: int) -> float:
    """User and system CPU seconds of C{pid} so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def serverRSS(pid: int) -> int:
    """Resident set size of C{pid} in KiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Client(slixmpp.ClientXMPP):
    """One logged-in account that asks the upload component for slots."""

    def __init__(self, address: str, password: str):
        super().__init__(address, password)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0363")
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.started.done()
                               or self.started.set_result(True))
        self.add_event_handler("failed_all_auth", lambda _: self.started.done()
                               or self.started.set_result(False))

    async def slot(self, component: str, name: str, size: int, timeout: float):
        iq = await self.plugin["xep_0363"].request_slot(slixmpp.JID(component), name, size,
                                                         "application/octet-stream",
                                                         timeout=timeout)
        slot = iq["http_upload_slot"]
        headers = {h["name"]: h["value"] for h in slot["put"]["headers"]}
        return slot["put"]["url"], slot["get"]["url"], headers


def percentile(values: list[float], share: float) -> float | None:
    """The value below which C{share} of C{values} lie, in ms with two decimals."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 2)


async def login(args) -> Client:
    """The account C{args.user}, logged in."""
    client = Client(f"{args.user}@{args.domain}", args.password)
    client.connect(args.host, args.port)
    if not await asyncio.wait_for(client.started, args.op_timeout):
        raise SystemExit("login failed")
    return client


async def putOne(client, session, args, name: str, body, size: int):
    """One upload: a slot, then the PUT; return the GET URL."""
    putURL, getURL, headers = await client.slot(args.component, name, size, args.op_timeout)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size), **headers}
    async with session.put(putURL, data=body, headers=headers) as response:
        await response.read()
        if response.status >= 300:
            raise RuntimeError(f"PUT {response.status}")
    return getURL


async def runPut(args, result: dict) -> None:
    """C{put}: n uploads at concurrency c."""
    client = await login(args)
    data = os.urandom(args.size)
    urls: list[str] = []
    latencies: list[float] = []
    errors: Counter = Counter()
    queue = list(range(args.n))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.op_timeout)) as session:
        async def worker():
            while queue:
                number = queue.pop()
                started = time.monotonic()
                try:
                    urls.append(await putOne(client, session, args, f"f{number}.bin", data, args.size))
                    latencies.append(1000 * (time.monotonic() - started))
                except Exception as e:  # noqa: BLE001 -- counted by kind, the run goes on
                    errors[type(e).__name__ + ": " + str(e)[:60]] += 1

        cpu = serverCPU(args.server_pid)
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(args.c))), args.max_seconds)
        elapsed = time.monotonic() - started
        result["server_cpu_s"] = round(serverCPU(args.server_pid) - cpu, 3)
    client.disconnect()
    with open(args.url_file, "w") as f:
        f.write("".join(url + "\n" for url in urls))
    result.update(ok=len(latencies), errors=sum(errors.values()), error_kinds=dict(errors),
                  per_s=round(len(latencies) / elapsed, 2), p50_ms=percentile(latencies, 0.5),
                  p99_ms=percentile(latencies, 0.99), seconds=round(elapsed, 2))


async def runGet(args, result: dict) -> None:
    """C{get}: one GET of each URL of the file, at concurrency c."""
    queue = open(args.url_file).read().split()
    latencies: list[float] = []
    errors: Counter = Counter()
    received = 0

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.op_timeout)) as session:
        async def worker():
            nonlocal received
            while queue:
                url = queue.pop()
                started = time.monotonic()
                try:
                    async with session.get(url) as response:
                        body = await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"GET {response.status}")
                    received += len(body)
                    latencies.append(1000 * (time.monotonic() - started))
                except Exception as e:  # noqa: BLE001 -- counted by kind, the run goes on
                    errors[type(e).__name__ + ": " + str(e)[:60]] += 1

        cpu = serverCPU(args.server_pid)
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(args.c))), args.max_seconds)
        elapsed = time.monotonic() - started
        result["server_cpu_s"] = round(serverCPU(args.server_pid) - cpu, 3)
    result.update(ok=len(latencies), errors=sum(errors.values()), error_kinds=dict(errors),
                  per_s=round(len(latencies) / elapsed, 2), p50_ms=percentile(latencies, 0.5),
                  p99_ms=percentile(latencies, 0.99), bytes=received, seconds=round(elapsed, 2))


async def runBig(args, result: dict) -> None:
    """C{big}: one upload of C{size} bytes, the server's RSS sampled every 20 ms."""
    client = await login(args)
    samples: list[int] = []
    before = serverRSS(args.server_pid)

    async def sample():
        while True:
            samples.append(serverRSS(args.server_pid))
            await asyncio.sleep(0.02)

    with tempfile.TemporaryFile() as body:
        body.truncate(args.size)  # sparse: read back as zeros, no disk used
        sampler = asyncio.ensure_future(sample())
        cpu = serverCPU(args.server_pid)
        started = time.monotonic()
        errors: Counter = Counter()
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=args.max_seconds)) as session:
                await putOne(client, session, args, "big.bin", body, args.size)
        except Exception as e:  # noqa: BLE001 -- reported as the run's error
            errors[type(e).__name__ + ": " + str(e)[:60]] += 1
        elapsed = time.monotonic() - started
        sampler.cancel()
    client.disconnect()
    peak = max(samples, default=before)
    result.update(ok=0 if errors else 1, errors=sum(errors.values()), error_kinds=dict(errors),
                  per_s=round(args.size / 1e6 / elapsed, 2), seconds=round(elapsed, 2),
                  rss_before_kb=before, rss_peak_kb=peak, rss_growth_kb=peak - before,
                  rss_median_kb=int(statistics.median(samples)) if samples else None,
                  server_cpu_s=round(serverCPU(args.server_pid) - cpu, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("scenario", choices=["put", "get", "big"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--domain", default="localhost")
    parser.add_argument("--component", help="the upload service (default: share.DOMAIN)")
    parser.add_argument("--user", default="bp0")
    parser.add_argument("--password", help="default: pw-USER")
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("-c", type=int, default=10)
    parser.add_argument("--size", type=int, default=1_048_576)
    parser.add_argument("--url-file")
    parser.add_argument("--max-seconds", type=float, default=240)
    parser.add_argument("--op-timeout", type=float, default=30)
    parser.add_argument("--label", default="")
    parser.add_argument("--scram-cache", help="ignored (the XMPP generator's option)")
    args = parser.parse_args()
    args.component = args.component or f"share.{args.domain}"
    args.password = args.password or f"pw-{args.user}"
    result = {"scenario": args.scenario, "label": args.label, "size": args.size, "c": args.c}
    run = {"put": runPut, "get": runGet, "big": runBig}[args.scenario]
    asyncio.run(run(args, result))
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
