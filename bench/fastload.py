#!/usr/bin/env python3
"""
The reconnect workload: a phone coming back with a FAST token (XEP-0484)
over SASL2 (XEP-0388) with Bind2 (XEP-0386): TCP, STARTTLS, one
C{<authenticate/>} answered by C{<success/>} with the bound resource,
presence, a ping as the sync point. It reuses the load generator of
C{xmppload.py} (left unchanged: the reference figures were measured with
it) and prints one JSON line in the same shape as its C{login} scenario,
so C{run.py} tabulates both side by side.

The C{fastsm} workload is the reconnect of a phone whose session waited
(XEP-0198): the same C{<authenticate/>} carries C{<resume/>} instead of
C{<bind/>}, so the session, its presence and roster go on as they were;
C{<r/>} answered by C{<a/>} is the sync point, then the connection is cut
without a word, as a phone's network does, and the session waits again.

    python fastload.py --port 5222 fast --prefix bp -n 2000 -c 50 --token-file t.json --setup
    python fastload.py --port 5222 fast --prefix bp -n 2000 -c 50 --token-file t.json
    python fastload.py --port 5222 fastsm --prefix bp -n 2000 -c 50 --token-file s.json --setup
    python fastload.py --port 5222 connect -n 2000 -c 50

The C{connect} workload is what any reconnect over a new connection pays
before it authenticates: TCP, STARTTLS, the stream restarted over TLS and
its features read, then the stream closed.

With C{--direct-port}, connections use that direct-TLS listener (XEP-0368)
and each user resumes the TLS session of its previous connection, as a
phone's TLS stack does: before the measured phase, an untimed connection
per user that says nothing but the stream header gets its session.

    python fastload.py --port 5222 fastsm --direct-port 5223 --prefix bp -n 2000 -c 50 --token-file s.json

With C{--setup} it first gets each user's token (an untimed SASL2 PLAIN
login with C{<request-token/>}; for C{fastsm} with Bind2, resumable stream
management and presence, then the connection cut) into C{--token-file};
without, it reads them there and measures. HT-SHA-256-NONE is used: Python's C{ssl} module cannot
export keying material for the bound variants. Loops are bounded by count
and time; only C{--host} (127.0.0.1) is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextvars
import hmac
import json
import ssl
import sys
import time
from pathlib import Path
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xmppload  # noqa: E402
from xmppload import (  # noqa: E402
    NS_SASL,
    NS_SM,
    T_IQ,
    T_STANZAS,
    TLS_SEEN,
    Client,
    Meter,
    Stats,
    XMPPError,
    add_common,
    base_result,
    latency_fields,
    now,
    raise_nofile,
    run_pool,
    user_name,
    user_password,
)

NS_SASL2 = "urn:xmpp:sasl:2"
NS_BIND2 = "urn:xmpp:bind:0"
NS_FAST = "urn:xmpp:fast:0"
MECHANISM = "HT-SHA-256-NONE"

TLS_SESSION: contextvars.ContextVar[ssl.SSLSession | None] = contextvars.ContextVar(
    "TLS_SESSION", default=None)


class ResumingContext(ssl.SSLContext):
    """
    A client context whose connections resume the TLS session their task
    set in L{TLS_SESSION}: the event loop opens TLS with no way to pass one.
    """

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname,
                                session or TLS_SESSION.get())


def resumingContext() -> ResumingContext:
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # self-signed test certificates
    return context


class FastClient(Client):
    """
    A generator client that also speaks SASL2 with FAST tokens and Bind2,
    and, given C{--direct-port}, connects with direct TLS resuming the
    session in C{tlsSession}.
    """

    context = None
    tlsSession = None
    resumed = False

    async def connect(self):
        if not self.o.direct_port:
            return await super().connect()
        if FastClient.context is None:
            FastClient.context = resumingContext()
        TLS_SESSION.set(self.tlsSession)
        try:
            transport, self.proto = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                xmppload.XMPPProto, self.o.host, self.o.direct_port, ssl=self.context,
                server_hostname=self.o.domain), self.o.op_timeout)
        except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
            raise XMPPError(f"connect:{type(e).__name__}") from None
        transport.get_extra_info("socket").setsockopt(6, 1, 1)  # TCP_NODELAY
        await self._restart()
        tls = transport.get_extra_info("ssl_object")
        TLS_SEEN.add(f"{tls.version()} {tls.cipher()[0]}")
        self.resumed = tls.session_reused
        self.tlsSession = tls.session

    def fastOffered(self) -> bool:
        fast = self.features.find(f"{{{NS_SASL2}}}authentication/{{{NS_SASL2}}}inline/{{{NS_FAST}}}fast")
        return fast is not None and MECHANISM in [m.text for m in fast]

    async def authenticate(self, mechanism: str, initial: bytes, inline: str):
        """One C{<authenticate/>} answered at once; returns the C{<success/>}."""
        self.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='{mechanism}'><initial-response>"
                  f"{base64.b64encode(initial).decode()}</initial-response>{inline}</authenticate>")
        el = await self.recv()
        if el.tag != f"{{{NS_SASL2}}}success":
            cond = next((c.tag.split("}")[-1] for c in el if c.tag.startswith(f"{{{NS_SASL}}}")), el.tag)
            raise XMPPError("sasl2-failure:" + cond)
        return el

    def agent(self, user: str) -> str:
        """The device: one per user and workload, so that each workload's token is its own."""
        return (f"<user-agent id='{self.o.scenario}-{escape(user)}'><software>fastload</software>"
                f"</user-agent>")

    async def getToken(self, user: str, password: str) -> str:
        """Untimed setup: a SASL2 PLAIN login asking for a token."""
        await self.connect()
        if not self.fastOffered():
            raise XMPPError("no-sasl2-fast")
        el = await self.authenticate("PLAIN", b"\0" + user.encode() + b"\0" + password.encode(),
                                     self.agent(user) + f"<request-token xmlns='{NS_FAST}' "
                                     f"mechanism='{MECHANISM}'/>")
        token = el.find(f"{{{NS_FAST}}}token")
        if token is None:
            raise XMPPError("no-token")
        return token.get("token")

    async def getTokenAndSession(self, user: str, password: str) -> dict:
        """
        Untimed setup of C{fastsm}: a token, a bound session with resumable
        stream management and presence, and the count of stanzas it was sent
        (its C{h}); then the connection is cut and the session waits.
        """
        await self.connect()
        el = await self.authenticate("PLAIN", b"\0" + user.encode() + b"\0" + password.encode(),
                                     self.agent(user) + f"<request-token xmlns='{NS_FAST}' "
                                     f"mechanism='{MECHANISM}'/><bind xmlns='{NS_BIND2}'><tag>phone"
                                     f"</tag><enable xmlns='{NS_SM}' resume='true'/></bind>")
        token = el.find(f"{{{NS_FAST}}}token")
        enabled = el.find(f"{{{NS_BIND2}}}bound/{{{NS_SM}}}enabled")
        if token is None or enabled is None:
            raise XMPPError("no-token-or-sm")
        self.send("<presence/>")
        ping = self.nid("p")
        self.send(f"<iq type='get' id='{ping}' to='{self.o.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
        handled = 0
        while True:
            el = await self.recv()
            handled += el.tag in T_STANZAS
            if el.tag == T_IQ and el.get("id") == ping:
                break
        self.abort()
        return {"token": token.get("token"), "previd": enabled.get("id"), "h": handled}

    async def resume(self, user: str, waiting: dict) -> None:
        """The C{fastsm} reconnect: FAST with C{<resume/>} inline, C{<r/>} to C{<a/>}, cut."""
        t0 = now()
        await self.connect()
        t1 = now()
        token = waiting["token"]
        el = await self.authenticate(MECHANISM, user.encode() + b"\0" + hmac.digest(
            token.encode(), b"Initiator", "sha256"), self.agent(user)
            + f"<resume xmlns='{NS_SM}' previd='{escape(waiting['previd'])}' h='{waiting['h']}'/>")
        if el.find(f"{{{NS_SM}}}resumed") is None:
            raise XMPPError("not-resumed")
        t2 = now()
        self.send(f"<r xmlns='{NS_SM}'/>")
        while (await self.recv()).tag != f"{{{NS_SM}}}a":
            pass
        self.phases = (t1 - t0, t2 - t1, 0.0, now() - t2)
        self.abort()

    async def reconnect(self, user: str, token: str, resource: str = "load") -> None:
        t0 = now()
        await self.connect()
        t1 = now()
        el = await self.authenticate(MECHANISM, user.encode() + b"\0" + hmac.digest(
            token.encode(), b"Initiator", "sha256"), self.agent(user)
            + f"<bind xmlns='{NS_BIND2}'><tag>{escape(resource)}</tag></bind>")
        data = el.find(f"{{{NS_SASL2}}}additional-data")
        if data is None or base64.b64decode(data.text or "") != hmac.digest(
                token.encode(), b"Responder", "sha256"):
            raise XMPPError("fast-bad-server-proof")
        if el.find(f"{{{NS_BIND2}}}bound") is None:
            raise XMPPError("not-bound")
        t2 = now()
        self.send("<presence/>")
        await self.sync()
        self.phases = (t1 - t0, t2 - t1, 0.0, now() - t2)  # bind is inside the SASL2 step


async def setup(o, users) -> dict:
    st = Stats()
    tokens = {}

    async def job(k):
        c = FastClient(o)
        try:
            password = user_password(o, o.start + k)
            tokens[users[k]] = await (c.getTokenAndSession(users[k], password) if o.scenario == "fastsm"
                                      else c.getToken(users[k], password))
            st.ok += 1
        except XMPPError as e:
            st.fail(e)
        finally:
            c.close()

    await run_pool(len(users), o.c, job, now() + o.max_seconds)
    Path(o.token_file).write_text(json.dumps(tokens))
    r = base_result(o, o.scenario)
    r.update({"n": o.n, "ok": st.ok, "errors": st.err, "error_kinds": st.errs, "setup": True})
    return r


async def tlsSessions(o, users) -> dict:
    """Untimed: each user's TLS session from a connection that says only the stream header."""
    sessions = {}

    async def job(k):
        c = FastClient(o)
        try:
            await c.connect()
            sessions[users[k]] = c.tlsSession
        finally:
            c.close()

    await run_pool(len(users), o.c, job, now() + o.max_seconds)
    await asyncio.sleep(0.5)  # the server's closes, before the measured phase
    return sessions


async def measure(o, users) -> dict:
    tokens = json.loads(Path(o.token_file).read_text())
    sessions = await tlsSessions(o, users) if o.direct_port else {}
    st = Stats()
    resumed = [0]

    async def job(k):
        c = FastClient(o)
        c.tlsSession = sessions.get(users[k])
        t0 = now()
        try:
            if o.scenario == "fastsm":
                await c.resume(users[k], tokens[users[k]])
            else:
                await c.reconnect(users[k], tokens[users[k]])
            st.lat.append(now() - t0)
            st.phases.append(c.phases)
            st.ok += 1
            resumed[0] += c.resumed
        except XMPPError as e:
            st.fail(e)
        except Exception as e:  # noqa: BLE001 -- counted, as xmppload does
            st.fail(XMPPError(f"exception:{type(e).__name__}"))
        finally:
            c.close()

    m = Meter(o.server_pid).start()
    await run_pool(len(users), o.c, job, now() + o.max_seconds)
    m.stop()
    r = base_result(o, o.scenario)
    r.update({"n": o.n, "concurrency": o.c, "ok": st.ok, "errors": st.err, "error_kinds": st.errs,
              "per_s": round(st.ok / max(m.elapsed, 1e-9), 1), "mechanism": MECHANISM,
              "tls": sorted(TLS_SEEN), "direct_tls": bool(o.direct_port), "tls_resumed": resumed[0]})
    r.update(latency_fields(st.lat))
    r.update(st.phase_fields())
    r.update(m.fields())
    return r


async def connections(o) -> dict:
    """
    The C{connect} workload: connections opened, encrypted and closed
    (with C{--direct-port}: direct TLS, each resuming a session got untimed).
    """
    st = Stats()
    sessions = await tlsSessions(o, range(o.n)) if o.direct_port else {}
    resumed = [0]

    async def job(k):
        c = FastClient(o)
        c.tlsSession = sessions.get(k)
        t0 = now()
        try:
            await c.connect()
            st.lat.append(now() - t0)
            st.ok += 1
            resumed[0] += c.resumed
        except XMPPError as e:
            st.fail(e)
        finally:
            c.close()

    m = Meter(o.server_pid).start()
    await run_pool(o.n, o.c, job, now() + o.max_seconds)
    m.stop()
    r = base_result(o, "connect")
    r.update({"n": o.n, "concurrency": o.c, "ok": st.ok, "errors": st.err, "error_kinds": st.errs,
              "per_s": round(st.ok / max(m.elapsed, 1e-9), 1), "tls": sorted(TLS_SEEN),
              "direct_tls": bool(o.direct_port), "tls_resumed": resumed[0]})
    r.update(latency_fields(st.lat))
    r.update(m.fields())
    return r


async def amain(o) -> dict:
    if o.scenario == "connect":
        r = await connections(o)
        await asyncio.sleep(0.2)
        return r
    users = [user_name(o, o.start + k) for k in range(o.n)]
    r = await (setup(o, users) if o.setup else measure(o, users))
    await asyncio.sleep(0.2)  # let the closes flush
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    add_common(ap)
    ap.add_argument("scenario", choices=["fast", "fastsm", "connect"])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-c", type=int, default=50)
    ap.add_argument("--token-file", default="",
                    help="JSON: each user's FAST token (fastsm: and its waiting session)")
    ap.add_argument("--setup", action="store_true", help="get the tokens (untimed) into --token-file")
    ap.add_argument("--direct-port", type=int, default=0,
                    help="measure over this direct-TLS listener, each user resuming its TLS session")
    o = ap.parse_args(argv)
    if o.scenario != "connect" and not o.token_file:
        ap.error(f"{o.scenario} needs --token-file")
    o.nofile = raise_nofile(o.c + 256)
    if xmppload.uvloop is not None and not o.no_uvloop:
        asyncio.set_event_loop_policy(xmppload.uvloop.EventLoopPolicy())
    started = time.time()
    r = asyncio.run(amain(o))
    r["started_unix"] = round(started, 1)
    print(json.dumps(r), flush=True)
    return 0 if not r.get("errors") else 3


if __name__ == "__main__":
    sys.exit(main())
