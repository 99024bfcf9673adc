"""
pepload - the XEP-0163 PEP workload, on top of xmppload (its client, meters
and options; xmppload itself stays byte-for-byte the reference generator).

  pep  one hub user and K contacts, subscribed both ways, every client
       announcing XEP-0115 caps with avatar-metadata+notify and OMEMO
       device-list+notify (and answering the servers' disco#info about them):
       - publish: the hub publishes avatar metadata N times (window W); a
         publication counts once its notification reached all K contacts
         -> publishes/s, latency of the last delivery;
       - login: each contact has published an avatar and an OMEMO device
         list (open access); the hub logs in L times (concurrency C); a login
         counts once the last item of both nodes of every contact arrived
         -> logins/s, latency.

With --port2 (two nodes of a cluster) the contacts are on the second node
and the hub on the first: every notification and last item crosses nodes.

Prints ONE JSON line on stdout, like xmppload. Every loop is bounded in count
and in time (--max-seconds, --op-timeout); only --host is contacted.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xmppload import (  # noqa: E402
    NS_ROSTER,
    T_IQ,
    T_MESSAGE,
    T_PRESENCE,
    Client,
    Meter,
    ScramCache,
    Stats,
    XMPPError,
    add_common,
    base_result,
    close_all,
    latency_fields,
    log,
    now,
    raise_nofile,
    run_pool,
    user_name,
    user_password,
    uvloop,
    xml_escape,
)

# PEP workload (XEP-0163): what an OMEMO client with avatars announces in its caps.
NS_CAPS = "http://jabber.org/protocol/caps"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NODE_AVATAR = "urn:xmpp:avatar:metadata"
NODE_DEVICES = "eu.siacs.conversations.axolotl.devicelist"
CAPS_NODE = "https://invitesrv.example/pepload"
PEP_FEATURES = sorted([NS_DISCO_INFO, NS_CAPS, NODE_AVATAR + "+notify", NODE_DEVICES + "+notify"])
# XEP-0115 section 5.1 for one identity (client/pc, no name) and these features.
CAPS_VER = base64.b64encode(hashlib.sha1(
    ("client/pc//<" + "".join(f + "<" for f in PEP_FEATURES)).encode()).digest()).decode()
CAPS_PRESENCE = (f"<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='{CAPS_NODE}'"
                 f" ver='{CAPS_VER}'/></presence>")
DISCO_ANSWER = ("<iq type='result' id='{id}' to='{to}'><query xmlns='" + NS_DISCO_INFO + "'{node}>"
                "<identity category='client' type='pc'/>"
                + "".join(f"<feature var='{f}'/>" for f in PEP_FEATURES) + "</query></iq>")
T_EVENT_ITEMS = f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items"
T_DISCO_QUERY = f"{{{NS_DISCO_INFO}}}query"
OPEN = ("<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
        "<value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
        "<field var='pubsub#access_model'><value>open</value></field></x></publish-options>")


def attribute(value: str) -> str:
    return xml_escape(value, {"'": "&apos;"})


def avatarPublish(itemId: str) -> str:
    """A pubsub request publishing avatar metadata as item C{itemId}."""
    return (f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{NODE_AVATAR}'><item id='{itemId}'>"
            f"<metadata xmlns='{NODE_AVATAR}'><info id='{itemId}' bytes='1234' type='image/png'/>"
            "</metadata></item></publish></pubsub>")


def pepHandler(client, onEvent):
    """
    The stanza hook of a PEP client: it answers the server's disco#info
    about its caps, accepts subscription requests, and hands each pubsub
    event to C{onEvent(client, sender, node, item id)}; iq results go to the
    client's queue.
    """
    def onStanza(el):
        query = el.find(T_DISCO_QUERY) if el.tag == T_IQ and el.get("type") == "get" else None
        if query is not None:
            node = query.get("node")
            client.send(DISCO_ANSWER.format(id=attribute(el.get("id", "")), to=attribute(el.get("from")),
                                            node=f" node='{attribute(node)}'" if node else ""))
            return True
        if el.tag == T_PRESENCE:
            if el.get("type") == "subscribe":
                client.send(f"<presence type='subscribed' to='{attribute(el.get('from').split('/')[0])}'/>")
            return True
        if el.tag == T_MESSAGE:
            items = el.find(T_EVENT_ITEMS)
            for item in items if items is not None else ():
                onEvent(client, el.get("from"), items.get("node"), item.get("id"))
            return True
        return False
    return onStanza


async def loginAll(o, cache, idxs, deadline, onEvent, resource="pep"):
    """Log in users C{idxs} (concurrency c), each announcing its caps; {index: Client}."""
    clients, stats = {}, Stats()

    async def job(k):
        client = Client(o, cache)
        try:
            await client.login(user_name(o, idxs[k]), user_password(o, idxs[k]), resource, presence=False)
            client.proto.on_stanza = pepHandler(client, onEvent)
            client.send(CAPS_PRESENCE)
            clients[idxs[k]] = client
        except XMPPError as e:
            stats.fail(e)
            client.abort()
    await run_pool(len(idxs), o.c, job, deadline)
    if stats.err:
        close_all(clients)
        raise XMPPError(f"login:{stats.errs}")
    return clients


def contactOptions(o):
    """The options the contacts log in with: on --port2 if given (another node of a cluster)."""
    return argparse.Namespace(**{**vars(o), "port": o.port2}) if o.port2 else o


async def loginHubAndContacts(o, cache, hub, contacts, deadline, onEvent):
    """The hub on --port, the contacts on --port2 if given; {index: Client}."""
    clients = await loginAll(o, cache, [hub], deadline, onEvent)
    try:
        clients.update(await loginAll(contactOptions(o), cache, contacts, deadline, onEvent))
    except XMPPError:
        close_all(clients)
        raise
    return clients


async def subscribeAll(o, cache, hub, contacts, deadline):
    """
    Untimed setup: the hub and each contact subscribe to each other, until
    the hub's roster says both (all on --port: with --port2, the two sides of
    each mutual request would write both rosters on both nodes at once).
    """
    clients = await loginAll(o, cache, [hub] + contacts, deadline, lambda *_: None)
    try:
        hubJID = f"{user_name(o, hub)}@{o.domain}"
        for i in contacts:
            clients[hub].send(f"<presence type='subscribe' to='{user_name(o, i)}@{o.domain}'/>")
            clients[i].send(f"<presence type='subscribe' to='{hubJID}'/>")
        want = {f"{user_name(o, i)}@{o.domain}" for i in contacts}
        while now() < deadline:
            await asyncio.sleep(0.5)
            roster = await clients[hub].iq(f"<query xmlns='{NS_ROSTER}'/>", typ="get")
            both = {item.get("jid") for item in roster.find(f"{{{NS_ROSTER}}}query")
                    if item.get("subscription") == "both"}
            if want <= both:
                return
        raise XMPPError("subscriptions-not-done")
    finally:
        close_all(clients)


def waitLeft(o, deadline) -> float:
    return max(0.01, min(o.op_timeout, deadline - now()))


async def publishPhase(o, clients, hub, done, deadline) -> dict:
    """The hub publishes N items (window w); each is done once every contact got its notification."""
    loop = asyncio.get_running_loop()
    stats, sent = Stats(), {}
    window = asyncio.Semaphore(o.window)
    for n in range(o.publishes):
        done[f"p{n}"] = loop.create_future()
    meter = Meter(o.server_pid).start()
    for n in range(o.publishes):
        if now() > deadline:
            break
        await window.acquire()
        itemId = f"p{n}"
        sent[itemId] = now()
        done[itemId].add_done_callback(lambda _: window.release())
        clients[hub].send(f"<iq type='set' id='pub{n}'>{avatarPublish(itemId)}</iq>")
    for itemId in sent:
        try:
            finished = await asyncio.wait_for(asyncio.shield(done[itemId]), waitLeft(o, deadline))
            stats.lat.append(finished - sent[itemId])
            stats.ok += 1
        except TimeoutError:
            stats.fail(XMPPError("fanout-timeout"))
    meter.stop()
    result = {"publish_ok": stats.ok, "publish_errors": stats.err, "publish_error_kinds": stats.errs,
              "publish_per_s": round(stats.ok / max(meter.elapsed, 1e-9), 1),
              "notifications_per_s": round(stats.ok * o.k / max(meter.elapsed, 1e-9), 1)}
    result.update(latency_fields(stats.lat, "publish_"))
    result.update({"publish_" + k: v for k, v in meter.fields().items()})
    return result


async def loginPhase(o, cache, hub, contacts, deadline) -> dict:
    """The hub logs in L times (concurrency c); a login is done with every contact's two last items."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    want = {(f"{user_name(o, i)}@{o.domain}", node) for i in contacts for node in (NODE_AVATAR, NODE_DEVICES)}

    async def login(k):
        got, complete = set(), loop.create_future()

        def onEvent(client, sender, node, itemId):
            got.add((sender, node))
            if want <= got and not complete.done():
                complete.set_result(now())

        client = Client(o, cache)
        started = now()
        try:
            await client.login(user_name(o, hub), user_password(o, hub), f"l{k}", presence=False)
            client.proto.on_stanza = pepHandler(client, onEvent)
            client.send(CAPS_PRESENCE)
            stats.lat.append(await asyncio.wait_for(complete, waitLeft(o, deadline)) - started)
            stats.ok += 1
        except TimeoutError:
            stats.fail(XMPPError(f"last-items-timeout:{len(got & want)}/{len(want)}"))
        except XMPPError as e:
            stats.fail(e)
        finally:
            client.close()

    meter = Meter(o.server_pid).start()
    await run_pool(o.logins, o.c, login, deadline)
    meter.stop()
    result = {"login_ok": stats.ok, "login_errors": stats.err, "login_error_kinds": stats.errs,
              "login_per_s": round(stats.ok / max(meter.elapsed, 1e-9), 1)}
    result.update(latency_fields(stats.lat, "login_"))
    result.update({"login_" + k: v for k, v in meter.fields().items()})
    return result


async def scenarioPep(o, cache) -> dict:
    """The pep scenario (see the module docstring): setup, publish phase, login phase."""
    deadline = now() + o.max_seconds
    hub, contacts = o.start, [o.start + 1 + j for j in range(o.k)]
    result = base_result(o, "pep")
    result.update({"contacts": o.k, "publishes": o.publishes, "window": o.window, "logins": o.logins,
                   "concurrency": o.c, "port2": o.port2})
    await subscribeAll(o, cache, hub, contacts, deadline)
    seen, done, clients = {}, {}, {}

    def onEvent(client, sender, node, itemId):
        if node == NODE_AVATAR and itemId in done and client is not clients.get(hub):
            got = seen.setdefault(itemId, set())
            got.add(id(client))
            if len(got) == o.k and not done[itemId].done():
                done[itemId].set_result(now())

    clients.update(await loginHubAndContacts(o, cache, hub, contacts, deadline, onEvent))
    try:
        await asyncio.sleep(2.0)  # caps asked and answered, the contacts' presence seen by the hub
        result.update(await publishPhase(o, clients, hub, done, deadline))
        for j, i in enumerate(contacts):  # untimed: what the contacts publish
            await clients[i].iq(avatarPublish(f"av{i}"))
            devices = (f"<list xmlns='eu.siacs.conversations.axolotl'><device id='{1000 + j}'/>"
                       "</list>")
            await clients[i].iq(f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{NODE_DEVICES}'>"
                                f"<item id='current'>{devices}</item></publish>{OPEN}</pubsub>")
        clients.pop(hub).close()
        result.update(await loginPhase(o, cache, hub, contacts, deadline))
    except XMPPError as e:
        result["error_kinds"] = {str(e): 1}
        result["errors"] = 1
        return result
    finally:
        close_all(clients)
    result["errors"] = result["publish_errors"] + result["login_errors"]
    result["ok"] = result["publish_ok"] + result["login_ok"]
    return result


def parseArgs(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_common(parser)
    scenario = parser.add_subparsers(dest="scenario", required=True).add_parser("pep")
    add_common(scenario, sup=True)
    scenario.add_argument("-k", type=int, default=100, help="contacts of the hub user")
    scenario.add_argument("--publishes", type=int, default=200, help="publications by the hub")
    scenario.add_argument("-w", "--window", type=int, default=10, help="publications in flight")
    scenario.add_argument("--logins", type=int, default=100, help="logins of the hub")
    scenario.add_argument("-c", type=int, default=5, help="login concurrency")
    scenario.add_argument("--port2", type=int, default=0,
                          help="the contacts on this port (another node of a cluster); the hub on --port")
    return parser.parse_args(argv)


async def run(o) -> dict:
    cache = ScramCache(o.scram_cache or None)
    try:
        return await scenarioPep(o, cache)
    finally:
        cache.save()
        await asyncio.sleep(0.2)  # let the closes flush


def main(argv=None) -> int:
    o = parseArgs(argv)
    Meter.also = tuple(int(pid) for pid in o.also_pids.split(",") if pid)
    want = o.k + o.c + 256
    o.nofile = raise_nofile(want)
    if o.nofile < want:
        log(f"warning: RLIMIT_NOFILE {o.nofile} < {want} wanted")
    if uvloop is not None and not o.no_uvloop:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    started = time.time()
    result = asyncio.run(run(o))
    result["started_unix"] = round(started, 1)
    print(json.dumps(result), flush=True)
    return 0 if not result.get("errors") else 3


if __name__ == "__main__":
    sys.exit(main())
