"""
Group chat workloads for bench/run.py, on the connections, logins and
measurements of xmppload.py (imported unchanged, so both servers are driven
by the same code):

  mucmsg   P occupants join one room; S of them each send M groupchat
           messages, W in flight; a message counts once every occupant
           has received it (the fan-out). rate = messages/s fully delivered;
           rtt = send -> the sender's own copy.
  mucjoin  a room holding H messages of history; N users (already logged
           in, untimed) each join it (presence -> own presence, H history
           messages, subject) and leave, C at a time. rate = joins/s.

One JSON line on stdout, as xmppload.py prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xmppload  # noqa: E402
from xmppload import (  # noqa: E402
    Meter,
    ScramCache,
    Stats,
    XMPPError,
    add_common,
    base_result,
    close_all,
    latency_fields,
    login_many,
    now,
    raise_nofile,
)

NS_CLIENT = "jabber:client"
NS_MUC = "http://jabber.org/protocol/muc"
T_MESSAGE = f"{{{NS_CLIENT}}}message"
T_PRESENCE = f"{{{NS_CLIENT}}}presence"
T_SUBJECT = f"{{{NS_CLIENT}}}subject"
T_BODY = f"{{{NS_CLIENT}}}body"


def roomJID(o) -> str:
    return f"{o.room}@{o.muc_domain}"


async def createRoom(o, client, nick: str) -> None:
    """Join (creating the room) and accept the instant configuration; wait for the subject."""
    room = roomJID(o)
    await join(client, room, nick, history=0)
    await client.iq(f"<query xmlns='{NS_MUC}#owner'><x xmlns='jabber:x:data' type='submit'/></query>",
                    "set", room)


async def join(client, room: str, nick: str, history: int | None = None) -> int:
    """Send the join; return how many history messages came before the subject."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = [0]
    previous = client.proto.on_stanza

    def onStanza(el):
        sender = el.get("from", "")
        if not sender.startswith(room):
            return previous(el) if previous else False
        if el.tag == T_PRESENCE and el.get("type") == "error" and not done.done():
            done.set_exception(XMPPError("join-error"))
        elif el.tag == T_MESSAGE:
            if el.find(T_SUBJECT) is not None and el.find(T_BODY) is None:
                if not done.done():
                    done.set_result(count[0])
            elif el.find(T_BODY) is not None:
                count[0] += 1
        return True

    client.proto.on_stanza = onStanza
    limit = "" if history is None else f"<history maxstanzas='{history}'/>"
    client.send(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'>{limit}</x></presence>")
    try:
        return await asyncio.wait_for(done, client.o.op_timeout)
    finally:
        client.proto.on_stanza = previous


def leave(client, room: str, nick: str) -> None:
    client.send(f"<presence type='unavailable' to='{room}/{nick}'/>")


async def sc_mucmsg(o, cache):
    deadline = now() + o.max_seconds
    idxs = [o.start + k for k in range(o.occupants)]
    lst = Stats()
    clients = await login_many(o, idxs, o.c, deadline, cache, lst, keep=True, resource="muc")
    r = base_result(o, "mucmsg")
    r.update({"occupants": o.occupants, "senders": o.senders, "per_sender": o.m,
              "window": o.window, "login_ok": lst.ok, "login_errors": lst.err})
    room = roomJID(o)
    try:
        if lst.err:
            r["errors"] = lst.err
            return r
        ordered = [clients[i] for i in idxs]
        await createRoom(o, ordered[0], "u0")
        for k, c in enumerate(ordered[1:], 1):
            await join(c, room, f"u{k}", history=0)
        st = Stats()
        loop = asyncio.get_running_loop()
        remaining: dict[str, int] = {}
        finished: dict[str, asyncio.Future] = {}
        sentAt: dict[str, float] = {}

        def handler(me: str):
            def onStanza(el):
                if el.tag != T_MESSAGE or el.get("type") != "groupchat":
                    return True
                mid = el.get("id")
                if mid not in remaining:
                    return True
                if el.get("from", "").endswith("/" + me) and mid in sentAt:
                    st.lat.append(now() - sentAt.pop(mid))
                remaining[mid] -= 1
                if remaining[mid] == 0:
                    del remaining[mid]
                    f = finished.pop(mid)
                    if not f.done():
                        f.set_result(None)
                return True
            return onStanza
        for k, c in enumerate(ordered):
            c.proto.on_stanza = handler(f"u{k}")
            c.proto.queue.clear()

        async def sender(c):
            window = asyncio.Semaphore(o.window)
            waits = []
            for _ in range(o.m):
                if now() > deadline:
                    break
                await window.acquire()
                mid = uuid.uuid4().hex
                f = loop.create_future()
                f.add_done_callback(lambda _f: window.release())
                remaining[mid], finished[mid], sentAt[mid] = len(ordered), f, now()
                c.send(f"<message type='groupchat' to='{room}' id='{mid}'>"
                       f"<body>{'x' * o.body_bytes}</body></message>")
                waits.append((mid, f))
            for _mid, f in waits:
                try:
                    await asyncio.wait_for(asyncio.shield(f), max(0.01, min(o.op_timeout,
                                                                            deadline - now())))
                    st.ok += 1
                except TimeoutError:
                    st.fail(XMPPError("fan-out-timeout"))

        m = Meter(o.server_pid).start()
        await asyncio.gather(*[sender(c) for c in ordered[:o.senders]])
        m.stop()
        r.update({"messages_ok": st.ok, "errors": st.err, "error_kinds": st.errs,
                  "per_s": round(st.ok / max(m.elapsed, 1e-9), 1),
                  "deliveries_per_s": round(st.ok * len(ordered) / max(m.elapsed, 1e-9), 1)})
        r.update(latency_fields(st.lat, "rtt_"))
        r.update(m.fields())
    finally:
        close_all(clients)
    return r


async def sc_mucjoin(o, cache):
    deadline = now() + o.max_seconds
    idxs = [o.start + k for k in range(o.n + 1)]
    lst = Stats()
    clients = await login_many(o, idxs, o.c, deadline, cache, lst, keep=True, resource="join")
    r = base_result(o, "mucjoin")
    r.update({"n": o.n, "concurrency": o.c, "history": o.history, "login_ok": lst.ok,
              "login_errors": lst.err})
    room = roomJID(o)
    try:
        if lst.err:
            r["errors"] = lst.err
            return r
        keeper = clients[idxs[0]]  # stays in the room, which keeps its history
        await createRoom(o, keeper, "keeper")
        echoed = asyncio.get_running_loop().create_future()

        def onEcho(el):
            if el.tag == T_MESSAGE and el.get("id") == f"h{o.history - 1}" and not echoed.done():
                echoed.set_result(None)
            return True
        keeper.proto.on_stanza = onEcho
        for k in range(o.history):
            keeper.send(f"<message type='groupchat' to='{room}' id='h{k}'><body>history {k}"
                        "</body></message>")
        if o.history:
            await asyncio.wait_for(echoed, o.op_timeout)  # the room has them all
        st = Stats()
        histories = []

        async def job(k):
            c = clients[idxs[k + 1]]
            t0 = now()
            try:
                histories.append(await join(c, room, f"j{k}"))
                st.lat.append(now() - t0)
                st.ok += 1
                leave(c, room, f"j{k}")
            except Exception as e:  # noqa
                st.fail(XMPPError(f"join:{type(e).__name__}"))

        m = Meter(o.server_pid).start()
        await xmppload.run_pool(o.n, o.c, job, deadline)
        m.stop()
        r.update({"joins_ok": st.ok, "errors": st.err, "error_kinds": st.errs,
                  "per_s": round(st.ok / max(m.elapsed, 1e-9), 1),
                  "history_received_min": min(histories) if histories else None})
        if histories and min(histories) < o.history:
            r["errors"] = r["errors"] + 1
            r["error_kinds"]["short-history"] = 1
        r.update(latency_fields(st.lat))
        r.update(m.fields())
    finally:
        close_all(clients)
    return r


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_common(ap)
    ap.add_argument("--muc-domain", default="groups.localhost")
    ap.add_argument("--room", default="")
    sub = ap.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser("mucmsg")
    add_common(p, sup=True)
    p.add_argument("-p", "--occupants", type=int, default=50)
    p.add_argument("-s", "--senders", type=int, default=5)
    p.add_argument("-m", type=int, default=200, help="messages per sender")
    p.add_argument("-w", "--window", type=int, default=1, help="messages in flight per sender")
    p.add_argument("-c", type=int, default=50, help="login concurrency")
    p.add_argument("--body-bytes", type=int, default=64)
    p = sub.add_parser("mucjoin")
    add_common(p, sup=True)
    p.add_argument("-n", type=int, default=200, help="joins")
    p.add_argument("-c", type=int, default=20, help="joins (and logins) at once")
    p.add_argument("--history", type=int, default=20)
    o = ap.parse_args(argv)
    o.room = o.room or f"bench{uuid.uuid4().hex[:8]}"
    return o


async def amain(o):
    cache = ScramCache(o.scram_cache or None)
    try:
        r = await (sc_mucmsg if o.scenario == "mucmsg" else sc_mucjoin)(o, cache)
    finally:
        cache.save()
    await asyncio.sleep(0.2)
    return r


def main(argv=None):
    o = parse_args(argv)
    o.nofile = raise_nofile(max(getattr(o, "occupants", 0), getattr(o, "n", 0)) + 256)
    if xmppload.uvloop is not None and not o.no_uvloop:
        asyncio.set_event_loop_policy(xmppload.uvloop.EventLoopPolicy())
    t0 = time.time()
    r = asyncio.run(amain(o))
    r["started_unix"] = round(t0, 1)
    print(json.dumps(r), flush=True)
    return 0 if not r.get("errors") else 3


if __name__ == "__main__":
    sys.exit(main())
