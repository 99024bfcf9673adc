"""
Create the benchmark's accounts before the server starts, through the same
registrar every other way of creating an account uses (as C{invitesrvctl
adduser} does), so the stored credentials are exactly what an in-band
registration would have stored.

Accounts are C{<prefix><i>} for i in [start, start + count) with the load
generator's password convention C{pw-<username>}. With C{--invites N
--token-file FILE} it also creates N single-use account invites through the
invite manager (as C{invitesrvctl invite create} does) and writes their
tokens, one a line, for the generator's XEP-0401 registrations.

Several registrations run at once: the PBKDF2 work of each runs in a thread and releases the GIL, so this
uses every CPU. Existing accounts are skipped, so a re-run is cheap.

    python bench/provision.py --config invitesrv.toml --prefix bp --count 2000
    python bench/provision.py --config invitesrv.toml --invites 500 --token-file tokens.txt
"""

from __future__ import annotations

import argparse
import sys
import time

from twisted.internet import defer, task

from invitesrv.config import loadConfig
from invitesrv.invites import InviteManager
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


@defer.inlineCallbacks
def createInvites(host, count: int):
    """Create C{count} single-use account invites on C{host}; fire with their tokens."""
    manager = InviteManager(host)
    tokens = []
    for _ in range(count):
        created = yield manager.createAccount(source="bench")
        tokens.append(created.token)
    return tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", required=True, help="the server's TOML configuration file")
    parser.add_argument("--domain", default=None, help="virtual host (default: the first one)")
    parser.add_argument("--prefix", default="bp")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=0, help="accounts to make sure exist")
    parser.add_argument("--invites", type=int, default=0, help="single-use invites to create")
    parser.add_argument("--token-file", help="where to write the invites' tokens, one a line")
    parser.add_argument("--parallel", type=int, default=8, help="registrations in flight")
    args = parser.parse_args(argv)
    if args.invites and not args.token_file:
        parser.error("--invites needs --token-file")
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
            tokens = yield createInvites(host, args.invites)
        finally:
            server.store.close()
        if args.token_file:
            with open(args.token_file, "w") as f:
                f.writelines(token + "\n" for token in tokens)
        print(f"provisioned {created} accounts on {host.name} ({skipped} existed) and "
              f"{len(tokens)} invites in {time.monotonic() - began:.1f}s", file=sys.stderr)

    task.react(run)


if __name__ == "__main__":
    main()
