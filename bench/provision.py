"""
Create the benchmark's accounts before the server starts, through the same
registrar every other way of creating an account uses (as C{invitesrvctl
adduser} does), so the stored credentials are exactly what an in-band
registration would have stored.

Accounts are C{<prefix><i>} for i in [start, start + count) with the load
generator's password convention C{pw-<username>}. Several registrations run at
once: the PBKDF2 work of each runs in a thread and releases the GIL, so this
uses every CPU. Existing accounts are skipped, so a re-run is cheap.

    python bench/provision.py --config invitesrv.toml --prefix bp --count 2000
"""

from __future__ import annotations

import argparse
import sys
import time

from twisted.internet import defer, task

from invitesrv.config import loadConfig
from invitesrv.service import InviteServer


def userName(prefix: str, index: int) -> str:
    """The load generator's account name for index C{index}."""
    return f"{prefix}{index}"


def userPassword(prefix: str, index: int) -> str:
    """The load generator's default password (C{pw-<username>})."""
    return f"pw-{prefix}{index}"


@defer.inlineCallbacks
def provision(host, prefix: str, start: int, count: int, parallel: int = 8):
    """Register the missing accounts on C{host}; fire with (created, skipped)."""
    existing = set((yield host.store.listAccounts(host.name)))
    todo = [i for i in range(start, start + count) if userName(prefix, i) not in existing]
    semaphore = defer.DeferredSemaphore(parallel)
    jobs = [semaphore.run(host.registrar.register, userName(prefix, i), userPassword(prefix, i),
                          "cli", trusted=True)
            for i in todo]
    yield defer.gatherResults(jobs, consumeErrors=True)
    return len(todo), count - len(todo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", required=True, help="the server's TOML configuration file")
    parser.add_argument("--domain", default=None, help="virtual host (default: the first one)")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=8, help="registrations in flight")
    args = parser.parse_args(argv)
    config = loadConfig(args.config)

    @defer.inlineCallbacks
    def run(reactor):
        server = InviteServer(config, reactor=reactor, loadModules=False)
        host = server.hosts[args.domain] if args.domain else next(iter(server.hosts.values()))
        reactor.suggestThreadPoolSize(max(args.parallel, 4))
        server.store.open(serving=False)
        began = time.monotonic()
        try:
            created, skipped = yield provision(host, args.prefix, args.start, args.count,
                                               args.parallel)
        finally:
            server.store.close()
        print(f"provisioned {created} accounts on {host.name} ({skipped} existed) in "
              f"{time.monotonic() - began:.1f}s", file=sys.stderr)

    task.react(run)


if __name__ == "__main__":
    main()
