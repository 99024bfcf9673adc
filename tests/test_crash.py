"""
Crash safety and store faults.

A server killed with SIGKILL while forty registrations race for a five-use
and a single-use invite restarts with a consistent database: every client
told C{result} has its account (it logs in) and its use counted, every use
counted is an account with its audit row and the other way round, no
reservation survives, and a used-up invite cannot be used again. Five rounds,
each killed at a different moment, on one data directory.

A database locked by another process beyond C{store_busy_timeout} answers
"try again later" (C{wait}/C{resource-constraint}, C{temporary-auth-failure}),
logs the episode once, writes nothing half-way and works again as soon as the
lock is gone; a full database (SQLite's own page limit, in memory) likewise.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest_twisted
from conftest import RunningServer
from rawxmpp import RawClient
from streamharness import Servers

from invitesrv.invites import InviteManager
from invitesrv.registrar import RegistrationError
from invitesrv.store.sqlite import SQLiteStore

PASSWORD = "a long password"
ROUNDS = 5
CLIENTS = 40


def createInvite(server: RunningServer, uses: int) -> tuple[str, str]:
    """C{invitesrvctl invite create --uses N}: (invite id, token)."""
    output = server.ctl("invite", "create", "--uses", str(uses), "localhost").stdout
    return (re.search(r"^Invite (\w+):", output, re.MULTILINE).group(1),
            re.search(r"preauth=([A-Za-z0-9_-]+)", output).group(1))


def iqReply(client: RawClient, iqID: str) -> str:
    return client.recvUntil(rf"<iq [^>]*id='{iqID}'[^>]*(/>|>.*?</iq>)")


def preauth(client: RawClient, token: str) -> str:
    client.send(f"<iq type='set' id='pa'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
    return iqReply(client, "pa")


def register(client: RawClient, username: str, iqID: str = "reg") -> str:
    client.send(f"<iq type='set' id='{iqID}'><query xmlns='jabber:iq:register'>"
                f"<username>{username}</username><password>{PASSWORD}</password></query></iq>")
    return iqReply(client, iqID)


def isResult(answer: str) -> bool:
    return re.match(r"<iq [^>]*type='result'", answer) is not None


@dataclass
class Attempt:
    """One racing client: what it asked for and what it was told before the kill."""

    username: str
    inviteId: str
    token: str
    outcome: str = "not started"  # forbidden, result, error, cut


class Race:
    """Forty registrations at once; counts those whose request has been sent."""

    def __init__(self, port: int, attempts: list[Attempt]):
        self.port = port
        self.attempts = attempts
        self.sent = 0
        self.answered = 0  # registrations whose answer has come back
        self.lock = threading.Lock()
        self.go = threading.Event()

    def run(self, attempt: Attempt) -> None:
        try:
            with RawClient(self.port, timeout=10) as client:
                client.startTLS()
                self.go.wait(10)
                if not isResult(preauth(client, attempt.token)):
                    attempt.outcome = "forbidden"
                    return
                with self.lock:
                    self.sent += 1
                attempt.outcome = "cut"
                answer = register(client, attempt.username)
                attempt.outcome = "result" if isResult(answer) else "error"
                with self.lock:
                    self.answered += 1
        except (OSError, ConnectionError, TimeoutError):
            if attempt.outcome == "not started":
                attempt.outcome = "cut"


def database(server: RunningServer) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{server.dataDir / 'invitesrv.sqlite3'}?mode=ro", uri=True)


def canLogIn(port: int, username: str) -> bool:
    with RawClient(port) as client:
        client.startTLS()
        return "<success" in client.scram(username, PASSWORD)


def checkRound(server: RunningServer, number: int, attempts: list[Attempt],
               invites: dict[str, tuple[int, str]]) -> None:
    """The invariants after a restart, for the accounts and invites of one round."""
    with database(server) as db:
        accounts = {row[0] for row in db.execute(
            "SELECT username FROM accounts WHERE username LIKE ?", (f"r{number}c%",))}
        usedBy: dict[str, set[str]] = {}
        for inviteId, (allowed, _) in invites.items():
            uses, reserved, usesAllowed = db.execute(
                "SELECT uses, reserved, uses_allowed FROM invites WHERE id = ?", (inviteId,)).fetchone()
            audit = [row[0] for row in db.execute(
                "SELECT username FROM invite_uses WHERE invite_id = ?", (inviteId,))]
            assert reserved == 0, "a reservation survived the restart"
            assert usesAllowed == allowed and uses <= allowed
            assert uses == len(audit) == len(set(audit)), (uses, audit)
            usedBy[inviteId] = set(audit)
    assert set().union(*usedBy.values()) == accounts, "an account without its use, or the reverse"
    for attempt in attempts:
        if attempt.outcome == "result":
            assert attempt.username in usedBy[attempt.inviteId], attempt
            assert canLogIn(server.port, attempt.username), attempt
    for inviteId, (allowed, token) in invites.items():
        with RawClient(server.port) as client:
            client.startTLS()
            usable = isResult(preauth(client, token))
        assert usable == (len(usedBy[inviteId]) < allowed), (inviteId, usedBy[inviteId])


def test_killedDuringRegistrations(tmp_path):
    """
    Five rounds of forty racing registrations, each round's server killed
    with SIGKILL at another moment (after 1 to 6 requests were sent), then
    restarted on the same data directory and checked.
    """
    started = time.monotonic()
    (tmp_path / "crash").mkdir()
    server = RunningServer(tmp_path / "crash", "")
    server.start()
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda uses: createInvite(server, uses), [5, 1] * ROUNDS))
    killAfter = [1, 3, 6, 2, 4]
    outcomes = []
    try:
        for number in range(ROUNDS):
            (fiveId, fiveToken), (oneId, oneToken) = made[2 * number], made[2 * number + 1]
            attempts = [Attempt(f"r{number}c{i}", *((fiveId, fiveToken) if i % 4 else (oneId, oneToken)))
                        for i in range(CLIENTS)]
            race = Race(server.port, attempts)
            threads = [threading.Thread(target=race.run, args=(a,)) for a in attempts]
            for thread in threads:
                thread.start()
            time.sleep(0.3)  # the TLS handshakes
            race.go.set()
            deadline = time.monotonic() + 10
            while race.sent < killAfter[number] and time.monotonic() < deadline:
                time.sleep(0.001)
            # The last round is killed once registrations complete, however slow the machine.
            while number == ROUNDS - 1 and not race.answered and time.monotonic() < deadline:
                time.sleep(0.001)
            server.stop(signal.SIGKILL)
            for thread in threads:
                thread.join(15)
            outcomes.append(sorted(a.outcome for a in attempts))
            server.start()
            checkRound(server, number, attempts, {fiveId: (5, fiveToken), oneId: (1, oneToken)})
    finally:
        server.stop()
    # The kills did land mid-flight: some registrations were cut, and some succeeded.
    assert any("cut" in round_ for round_ in outcomes), outcomes
    assert any("result" in round_ for round_ in outcomes), outcomes
    assert time.monotonic() - started < 60


# -- a database another process has locked -------------------------------------------------


def test_lockedDatabase(serverFactory):
    """
    While another process holds an exclusive lock for longer than
    store_busy_timeout: a registration is answered wait/resource-constraint
    and writes nothing, later requests are refused at once, and the log says
    so once; a login, which only reads, still gets in (in WAL mode a reader
    waits for no writer) and does not end the episode. Once the lock is
    gone, the same stream registers with the same invite.
    """
    server = serverFactory("[limits]\nstore_busy_timeout = 1\n")
    server.adduser("alice@localhost", PASSWORD)
    inviteId, token = createInvite(server, 5)
    client = RawClient(server.port)
    client.startTLS()
    assert isResult(preauth(client, token))

    locker = sqlite3.connect(server.dataDir / "invitesrv.sqlite3", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        answer = register(client, "newcomer", "r1")
        assert 0.9 < time.monotonic() - started < 3
        assert "type='wait'" in answer and "<resource-constraint" in answer, answer
        started = time.monotonic()
        assert "<resource-constraint" in register(client, "newcomer", "r2")
        assert time.monotonic() - started < 0.5, "the second request waited a whole busy timeout"
        with RawClient(server.port) as login:
            login.startTLS()
            assert "<success" in login.scram("alice", PASSWORD)
        assert "<resource-constraint" in register(client, "newcomer", "r2b")
        assert "Store available again" not in server.log()
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    assert isResult(register(client, "newcomer", "r3"))
    client.close()
    assert canLogIn(server.port, "newcomer")
    with database(server) as db:
        assert db.execute("SELECT uses FROM invites WHERE id = ?", (inviteId,)).fetchone() == (1,)
        assert db.execute("SELECT COUNT(*) FROM accounts").fetchone() == (2,)
    log = server.log()
    assert log.count("Store unavailable: database is locked") == 1, log
    assert re.search(r"Store available again after [\d.]+ s \(\d+ requests refused meanwhile\)", log)
    assert "Traceback" not in log


# -- a full database, in memory ------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_fullDatabase():
    """
    With SQLite's page limit reached (what a full disk looks like to it) a
    registration fails with wait/resource-constraint and leaves no trace;
    raised again, the same registration succeeds. The invite counts exactly
    the accounts made with it.
    """
    servers = Servers()
    try:
        server = servers(store=SQLiteStore(":memory:"))
        host = server.hosts["localhost"]
        created = yield InviteManager(host).createAccount(usesAllowed=None)
        store = server.store
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")
        made, refused = [], None
        for n in range(300):
            invite = yield InviteManager(host).reserve(created.token)
            try:
                yield host.registrar.register(f"user{n}", PASSWORD, "ibr", invite=invite)
            except RegistrationError as e:
                yield store.releaseInvite(invite.id)
                refused = (f"user{n}", e)
                break
            made.append(f"user{n}")
        assert refused is not None, "the page limit was never reached"
        username, e = refused
        assert (e.condition, e.type) == ("resource-constraint", "wait")
        assert not (yield store.accountExists("localhost", username))
        assert (yield store.getInvite(created.invite.id)).uses == len(made)

        store._conn.execute("PRAGMA max_page_count = 1073741823")
        invite = yield InviteManager(host).reserve(created.token)
        yield host.registrar.register(username, PASSWORD, "ibr", invite=invite)
        assert (yield store.accountExists("localhost", username))
        after = yield store.getInvite(created.invite.id)
        assert after.uses == len(made) + 1 == len(after.uses_log)
        assert {use["username"] for use in after.uses_log} == set(made) | {username}
    finally:
        servers.closeAll()

