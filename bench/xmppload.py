#!/usr/bin/env python3
# This is the same load generator, unchanged, that the reference Prosody
# 0.12.3 and ejabberd 23.01 figures were measured with, so that comparisons
# with them stay fair: keep it byte-for-byte in step with that copy (only this
# comment block was added). It is third-party style code, hence kept out of
# the project's lint rules:
# ruff: noqa
"""xmppload - a small, fast, independent XMPP c2s load generator.

Speaks raw XMPP over TCP: STARTTLS (self-signed certificates accepted),
SASL SCRAM-SHA-1 (PLAIN fallback), resource binding, XEP-0077 in-band
registration (optionally preceded by a XEP-0401 preauth token read from a
file, one token per line), XEP-0184 receipts and XEP-0199 pings.

Scenarios (each prints ONE JSON line on stdout; progress goes to stderr):

  register  N new accounts, concurrency C
  login     N full logins (connect+TLS+SCRAM+bind+presence+ping sync), conc. C;
            also the median time of each step (phase_*_p50_ms); --plain forces
            SASL PLAIN (the server then runs PBKDF2 itself)
  messages  P pairs, each side sends M chat messages to its peer and waits for
            the XEP-0184 receipt (window W) -> messages/s, round-trip latency;
            --sm: carbons and stream management on every client; --devices D:
            D clients per account, the others getting carbons (smarchive; it
            also reports one account's archive count, untimed)
  idle      hold K authenticated connections (presence sent); server RSS
            (process tree of --server-pid) before/after -> bytes per connection
  roster    U users with R roster items each; roster gets/s and latency
            (missing items are added first by an untimed setup phase)

CPU use of the generator (gen_cpu_pct), of the server process tree
(server_cpu_pct, from /proc/PID/stat of --server-pid and its descendants)
and of every CPU (cpu_busy_pct) is reported for each measured phase, so a
reader can see which side saturated.  SCRAM salted passwords are cached per
(password, salt, iterations) like real clients do (--scram-cache persists
them between runs).

Every loop is bounded in count (the sizes) and in time (--max-seconds,
--op-timeout).  Only the address given by --host is contacted; the default
is 127.0.0.1.

Example:
  taskset -c 1 python3 xmppload.py --port 25222 --domain localhost \
      --server-pid 1234 register -n 2000 -c 50 --prefix r1u
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import resource
import ssl
import sys
import time
import re
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape as xml_escape

try:  # optional; plain asyncio works too
    import uvloop  # type: ignore
except Exception:  # pragma: no cover
    uvloop = None

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_REGISTER = "jabber:iq:register"
NS_ROSTER = "jabber:iq:roster"
NS_RECEIPTS = "urn:xmpp:receipts"
NS_PARS = "urn:xmpp:pars:0"
NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_SM = "urn:xmpp:sm:3"
NS_CARBONS = "urn:xmpp:carbons:2"

T_FEATURES = "{%s}features" % NS_STREAM
T_STREAM_ERROR = "{%s}error" % NS_STREAM
T_PROCEED = "{%s}proceed" % NS_TLS
T_SASL_CHALLENGE = "{%s}challenge" % NS_SASL
T_SASL_SUCCESS = "{%s}success" % NS_SASL
T_SASL_FAILURE = "{%s}failure" % NS_SASL
T_MESSAGE = "{jabber:client}message"
T_IQ = "{jabber:client}iq"
T_PRESENCE = "{jabber:client}presence"
T_REQUEST = "{%s}request" % NS_RECEIPTS
T_RECEIVED = "{%s}received" % NS_RECEIPTS
T_SM_R = "{%s}r" % NS_SM
T_STANZAS = frozenset((T_MESSAGE, T_IQ, T_PRESENCE))


class XMPPError(Exception):
    """A protocol-level failure; str() is a short condition name."""


def now():
    return time.perf_counter()


def log(*a):
    print("[xmppload]", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# process accounting (server tree via /proc, generator via getrusage)
# --------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d, "rb") as f:
                s = f.read()
            ppid = int(s[s.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def process_tree(pid):
    """pid plus all its descendants (current snapshot)."""
    if not pid:
        return []
    kids = _children_map()
    out, todo = [], [pid]
    while todo and len(out) < 10000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_rss_bytes(pid):
    total, n = 0, 0
    for p in process_tree(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        n += 1
                        break
        except OSError:
            pass
    return total if n else None


def tree_cpu_seconds(pid):
    total, n = 0.0, 0
    for p in process_tree(pid):
        try:
            with open("/proc/%d/stat" % p, "rb") as f:
                s = f.read()
            fields = s[s.rindex(b")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
            n += 1
        except (OSError, ValueError, IndexError):
            pass
    return total if n else None


def per_cpu_busy():
    """{cpu index: busy seconds} from /proc/stat (everything but idle+iowait)."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    v = line.split()
                    t = [int(x) for x in v[1:]]
                    out[int(v[0][3:])] = (sum(t[:8]) - t[3] - t[4]) / CLK_TCK
    except (OSError, ValueError, IndexError):
        pass
    return out


def self_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """CPU of the generator and of the server tree (and of the also-pids) over one measured phase."""

    also = ()  # set from --also-pids

    def __init__(self, server_pid):
        self.server_pid = server_pid

    def server_cpu(self):
        total = tree_cpu_seconds(self.server_pid)
        for pid in self.also:
            extra = tree_cpu_seconds(pid)
            if total is not None and extra is not None:
                total += extra
        return total

    def start(self):
        self.t0 = now()
        self.g0 = self_cpu_seconds()
        self.s0 = self.server_cpu()
        self.c0 = per_cpu_busy()
        return self

    def stop(self):
        self.t1 = now()
        self.g1 = self_cpu_seconds()
        self.s1 = self.server_cpu()
        self.c1 = per_cpu_busy()
        return self

    @property
    def elapsed(self):
        return self.t1 - self.t0

    def fields(self):
        el = max(self.elapsed, 1e-9)
        out = {
            "elapsed_s": round(el, 3),
            "gen_cpu_s": round(self.g1 - self.g0, 3),
            "gen_cpu_pct": round(100.0 * (self.g1 - self.g0) / el, 1),
        }
        if self.s0 is not None and self.s1 is not None:
            out["server_cpu_s"] = round(self.s1 - self.s0, 3)
            out["server_cpu_pct"] = round(100.0 * (self.s1 - self.s0) / el, 1)
        # busy % of every CPU (all processes + kernel): with the server alone
        # on its CPU and the generator alone on its own, busy minus their own
        # share is what something else (or interrupts) took
        out["cpu_busy_pct"] = {str(c): round(100.0 * (self.c1[c] - self.c0.get(c, 0)) / el, 1)
                               for c in sorted(self.c1)}
        return out


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def latency_fields(lat, prefix=""):
    lat = sorted(lat)
    f = lambda v: None if v is None else round(v * 1000.0, 2)
    return {
        prefix + "p50_ms": f(pct(lat, 50)),
        prefix + "p90_ms": f(pct(lat, 90)),
        prefix + "p99_ms": f(pct(lat, 99)),
        prefix + "max_ms": f(lat[-1] if lat else None),
    }


# --------------------------------------------------------------------------
# SCRAM-SHA-1 client
# --------------------------------------------------------------------------
class ScramCache:
    """SaltedPassword cache keyed by (password, salt, iterations).

    Real clients keep the salted password (or ClientKey/ServerKey) after the
    first login; doing the same keeps PBKDF2 off the generator's CPU when the
    server re-uses a user's salt.  Servers that pick a fresh salt per login
    simply miss.  Optional persistence: one JSON object per line.
    """

    def __init__(self, path=None):
        self.path = path
        self.d = {}
        self.new = []
        self.hits = self.misses = 0
        if path and os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        o = json.loads(line)
                        self.d[(o["p"], o["s"], o["i"])] = base64.b64decode(o["k"])
                    except (ValueError, KeyError):
                        continue

    def salted(self, password, salt_b64, iters):
        key = (password, salt_b64, iters)
        v = self.d.get(key)
        if v is not None:
            self.hits += 1
            return v
        self.misses += 1
        v = hashlib.pbkdf2_hmac("sha1", password.encode(), base64.b64decode(salt_b64), iters)
        self.d[key] = v
        if self.path:
            self.new.append(key)
        return v

    def save(self):
        if not (self.path and self.new):
            return
        with open(self.path, "a") as f:
            for k in self.new:
                f.write(json.dumps({"p": k[0], "s": k[1], "i": k[2],
                                    "k": base64.b64encode(self.d[k]).decode()}) + "\n")
        self.new = []


SCRAM_ITERS = set()  # iteration counts announced by the server
TLS_SEEN = set()  # negotiated "version cipher" strings


def _saslname(s):
    return s.replace("=", "=3D").replace(",", "=2C")


def _xor(a, b):
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


# --------------------------------------------------------------------------
# the connection
# --------------------------------------------------------------------------
_START_TAG = re.compile(rb"""<([^\s/>!?]+)(?:\s+[^\s=/>]+\s*=\s*(?:'[^']*'|"[^"]*"))*\s*(/?)>""")
_WS = re.compile(rb"[ \t\r\n]*")
_OPEN_RE = {}
MAX_BUFFER = 16 * 1024 * 1024
_ID_ATTR = re.compile(rb"""\sid=(?:'([^']*)'|"([^"]*)")""")
_TYPE_ATTR = re.compile(rb"""\stype=(?:'([^']*)'|"([^"]*)")""")
_ITEM = re.compile(rb"<item[\s/>]")


def _find_close(buf, p, name):
    """End offset of the element whose start tag ends at p, or -1."""
    close = b"</" + name + b">"
    opener = _OPEN_RE.get(name)
    if opener is None:
        opener = _OPEN_RE[name] = re.compile(b"<" + re.escape(name) + rb"[\s/>]")
    depth = 1
    while True:
        c = buf.find(close, p)
        if c < 0:
            return -1
        for mo in opener.finditer(buf, p, c):  # same-name nesting (rare)
            tm = _START_TAG.match(buf, mo.start())
            if tm is not None and not tm.group(2):
                depth += 1
        depth -= 1
        p = c + len(close)
        if depth == 0:
            return p


class XMPPProto(asyncio.Protocol):
    """Frames top-level stanzas at the byte level (C-speed bytes/regex
    searches: in well-formed XMPP every '<' is markup, since comments, PIs
    and DTDs are forbidden), then parses each stanza with the C ElementTree
    parser under a copy of the stream header, so namespaces resolve as in
    the stream.  A raw_filter(bytes) hook may consume stanzas unparsed
    (used for large roster results, which are only counted)."""

    def __init__(self):
        self.transport = None
        self.queue = []
        self.waiter = None
        self.closed = None
        self.on_stanza = None
        self.raw_filter = None
        self.stream_attrs = None
        self._new_parser()

    def _new_parser(self):
        self.buf = bytearray()
        self.header = None
        self.close_tag = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        try:
            self._frame()
        except (ET.ParseError, ValueError) as e:
            self._fail(XMPPError("xml-parse-error:%s" % e))
        if len(self.buf) > MAX_BUFFER:
            self._fail(XMPPError("stanza-too-large"))

    def _frame(self):
        buf = self.buf
        n = len(buf)
        pos = 0
        while self.closed is None:
            pos = _WS.match(buf, pos).end()
            if pos >= n:
                break
            if self.header is None:
                if buf.startswith(b"<?", pos):
                    e = buf.find(b"?>", pos)
                    if e < 0:
                        break
                    pos = e + 2
                    continue
                m = _START_TAG.match(buf, pos)
                if m is None:
                    break  # incomplete
                self.header = bytes(buf[pos:m.end()])
                self.close_tag = b"</" + m.group(1) + b">"
                self.stream_attrs = dict(ET.fromstring(self.header + self.close_tag).attrib)
                pos = m.end()
                continue
            if buf.startswith(b"</", pos):
                pos = n
                self._fail(XMPPError("stream-closed"))
                break
            m = _START_TAG.match(buf, pos)
            if m is None:
                break  # incomplete start tag
            if m.group(2):
                end = m.end()
            else:
                end = _find_close(buf, m.end(), m.group(1))
                if end < 0:
                    break  # incomplete stanza
            raw = bytes(buf[pos:end])
            pos = end
            rf = self.raw_filter
            if rf is not None and rf(raw):
                continue
            el = ET.fromstring(self.header + raw + self.close_tag)[0]
            self._deliver(el)
        if pos:
            del buf[:pos]

    def _deliver(self, el):
        if el.tag == T_STREAM_ERROR:
            cond = el[0].tag.split("}")[-1] if len(el) else "unknown"
            self._fail(XMPPError("stream-error:" + cond))
            return
        if self.on_stanza is not None and self.on_stanza(el):
            return
        self.queue.append(el)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc):
        if self.closed is None:
            self.closed = exc
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def connection_lost(self, exc):
        self._fail(XMPPError("connection-lost"))

    def eof_received(self):
        self._fail(XMPPError("eof"))
        return False

    async def recv(self, timeout):
        deadline = None
        while not self.queue:
            if self.closed is not None:
                raise self.closed
            if deadline is None:
                deadline = now() + timeout
            left = deadline - now()
            if left <= 0:
                raise XMPPError("timeout")
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self.waiter, left)
            except asyncio.TimeoutError:
                raise XMPPError("timeout")
            finally:
                self.waiter = None
        return self.queue.pop(0)

    def write(self, s):
        self.transport.write(s.encode() if isinstance(s, str) else s)


class Client:
    """One XMPP c2s session, driven step by step by the scenarios."""

    _ctx = None

    def __init__(self, opts, scram_cache=None):
        self.o = opts
        self.proto = None
        self.jid = None
        self.features = None
        self.scram_cache = scram_cache
        self.n = 0

    @classmethod
    def tls_context(cls):
        if cls._ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # self-signed test certificates
            cls._ctx = ctx
        return cls._ctx

    def nid(self, p="i"):
        self.n += 1
        return "%s%d" % (p, self.n)

    async def recv(self):
        return await self.proto.recv(self.o.op_timeout)

    def send(self, s):
        self.proto.write(s)

    def _header(self):
        self.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                  "xmlns:stream='http://etherx.jabber.org/streams' to='%s' "
                  "version='1.0' xml:lang='en'>" % self.o.domain)

    async def _restart(self):
        self.proto._new_parser()
        self._header()
        el = await self.recv()
        if el.tag != T_FEATURES:
            raise XMPPError("expected-features")
        self.features = el

    async def connect(self):
        """TCP connect, stream open, STARTTLS.  Leaves self.features set."""
        loop = asyncio.get_running_loop()
        try:
            tr, self.proto = await asyncio.wait_for(
                loop.create_connection(XMPPProto, self.o.host, self.o.port), self.o.op_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise XMPPError("connect:%s" % type(e).__name__)
        try:
            tr.get_extra_info("socket").setsockopt(6, 1, 1)  # TCP_NODELAY
        except Exception:
            pass
        await self._restart()
        st = self.features.find("{%s}starttls" % NS_TLS)
        if st is None:
            if self.o.require_tls:
                raise XMPPError("no-starttls-offered")
            return
        self.send("<starttls xmlns='%s'/>" % NS_TLS)
        el = await self.recv()
        if el.tag != T_PROCEED:
            raise XMPPError("starttls-refused")
        try:
            newtr = await asyncio.wait_for(
                loop.start_tls(self.proto.transport, self.proto, self.tls_context(),
                               server_hostname=self.o.domain), self.o.op_timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
            raise XMPPError("tls:%s" % type(e).__name__)
        self.proto.transport = newtr
        sslobj = newtr.get_extra_info("ssl_object")
        if sslobj is not None:
            TLS_SEEN.add("%s %s" % (sslobj.version(), sslobj.cipher()[0]))
        await self._restart()

    def mechanisms(self):
        m = self.features.find("{%s}mechanisms" % NS_SASL)
        if m is None:
            return []
        return [x.text for x in m.findall("{%s}mechanism" % NS_SASL)]

    async def auth(self, user, password):
        mechs = self.mechanisms()
        if "SCRAM-SHA-1" in mechs and not self.o.plain:
            await self._scram(user, password)
        elif "PLAIN" in mechs:
            tok = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
            self.send("<auth xmlns='%s' mechanism='PLAIN'>%s</auth>" % (NS_SASL, tok))
            el = await self.recv()
            if el.tag != T_SASL_SUCCESS:
                raise XMPPError("sasl-failure:" + _sasl_cond(el))
        else:
            raise XMPPError("no-usable-mechanism")
        await self._restart()

    async def _scram(self, user, password):
        cnonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = "n=%s,r=%s" % (_saslname(user), cnonce)
        self.send("<auth xmlns='%s' mechanism='SCRAM-SHA-1'>%s</auth>"
                  % (NS_SASL, base64.b64encode(("n,," + first_bare).encode()).decode()))
        el = await self.recv()
        if el.tag != T_SASL_CHALLENGE:
            raise XMPPError("sasl-failure:" + _sasl_cond(el))
        server_first = base64.b64decode(el.text or "").decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        nonce, salt, iters = attrs["r"], attrs["s"], int(attrs["i"])
        if not nonce.startswith(cnonce):
            raise XMPPError("scram-bad-nonce")
        SCRAM_ITERS.add(iters)
        final_wo_proof = "c=biws,r=" + nonce
        if self.scram_cache is not None:
            salted = self.scram_cache.salted(password, salt, iters)
        else:
            salted = hashlib.pbkdf2_hmac("sha1", password.encode(), base64.b64decode(salt), iters)
        client_key = hmac.digest(salted, b"Client Key", "sha1")
        stored_key = hashlib.sha1(client_key).digest()
        auth_msg = ("%s,%s,%s" % (first_bare, server_first, final_wo_proof)).encode()
        proof = _xor(client_key, hmac.digest(stored_key, auth_msg, "sha1"))
        server_sig = hmac.digest(hmac.digest(salted, b"Server Key", "sha1"), auth_msg, "sha1")
        final = "%s,p=%s" % (final_wo_proof, base64.b64encode(proof).decode())
        self.send("<response xmlns='%s'>%s</response>" % (NS_SASL, base64.b64encode(final.encode()).decode()))
        el = await self.recv()
        if el.tag == T_SASL_CHALLENGE:  # some servers send v= as a challenge
            data = el.text or ""
            self.send("<response xmlns='%s'/>" % NS_SASL)
            el = await self.recv()
        elif el.tag == T_SASL_SUCCESS:
            data = el.text or ""
        else:
            raise XMPPError("sasl-failure:" + _sasl_cond(el))
        if el.tag != T_SASL_SUCCESS:
            raise XMPPError("sasl-failure:" + _sasl_cond(el))
        v = base64.b64decode(data).decode() if data and data != "=" else ""
        if not v.startswith("v=") or base64.b64decode(v[2:]) != server_sig:
            raise XMPPError("scram-bad-server-signature")

    async def iq(self, xml_body, typ="set", to=None):
        """Send an iq and wait for its result; returns the result element."""
        i = self.nid()
        self.send("<iq type='%s' id='%s'%s>%s</iq>"
                  % (typ, i, (" to='%s'" % to) if to else "", xml_body))
        for _ in range(10000):
            el = await self.recv()
            if el.tag == T_IQ and el.get("id") == i:
                if el.get("type") == "result":
                    return el
                raise XMPPError("iq-error:" + _stanza_cond(el))
            # anything else (presence echo, roster push...) is skipped
        raise XMPPError("iq-no-reply")

    async def roster_count(self):
        """Roster get whose result is consumed raw: returns the item count.
        Avoids building a tree for large rosters (keeps the generator light)."""
        i = self.nid("rg").encode()
        fut = asyncio.get_running_loop().create_future()

        self.proto.raw_filter = lambda raw: _iq_answer(raw, i, fut)
        try:
            self.send("<iq type='get' id='%s'><query xmlns='%s'/></iq>" % (i.decode(), NS_ROSTER))
            try:
                typ, raw = await asyncio.wait_for(fut, self.o.op_timeout)
            except asyncio.TimeoutError:
                raise XMPPError(str(self.proto.closed) if self.proto.closed else "timeout")
        finally:
            self.proto.raw_filter = None
        if typ != b"result":
            raise XMPPError("iq-error:" + _stanza_cond(ET.fromstring(self.proto.header + raw + self.proto.close_tag)[0]))
        return len(_ITEM.findall(raw))

    async def bind(self, resource):
        if self.features.find("{%s}bind" % NS_BIND) is None:
            raise XMPPError("no-bind-feature")
        el = await self.iq("<bind xmlns='%s'><resource>%s</resource></bind>" % (NS_BIND, xml_escape(resource)))
        j = el.find("{%s}bind/{%s}jid" % (NS_BIND, NS_BIND))
        self.jid = j.text if j is not None else None
        sess = self.features.find("{%s}session" % NS_SESSION)
        if sess is not None and sess.find("{%s}optional" % NS_SESSION) is None:
            await self.iq("<session xmlns='%s'/>" % NS_SESSION)

    async def login(self, user, password, resource="load", presence=True):
        t0 = now()
        await self.connect()
        t1 = now()
        await self.auth(user, password)
        t2 = now()
        await self.bind(resource)
        t3 = now()
        if presence:
            self.send("<presence/>")
        # XEP-0199 ping as a sync point: any iq reply (result or error) shows
        # the server has processed everything we sent before it.
        await self.sync()
        self.phases = (t1 - t0, t2 - t1, t3 - t2, now() - t3)

    async def enable_sm(self, resume=True):
        """XEP-0198: enable stream management; return the resumption token (None without)."""
        self.send("<enable xmlns='%s'%s/>" % (NS_SM, " resume='true'" if resume else ""))
        el = await self.recv()
        while not el.tag.startswith("{%s}" % NS_SM):  # what was on its way before (presence)
            el = await self.recv()
        if el.tag != "{%s}enabled" % NS_SM:
            raise XMPPError("sm-not-enabled")
        self.handled = 0
        return el.get("id")

    def counting(self, handler):
        """An on_stanza that counts the stanzas received and answers the server's <r/>."""
        def on_stanza(el):
            if el.tag in T_STANZAS:
                self.handled += 1
            elif el.tag == T_SM_R:
                self.send("<a xmlns='%s' h='%d'/>" % (NS_SM, self.handled % 2 ** 32))
                return True
            return handler(el)
        return on_stanza

    async def sync(self):
        try:
            await self.iq("<ping xmlns='urn:xmpp:ping'/>", typ="get", to=self.o.domain)
        except XMPPError as e:
            if not str(e).startswith("iq-error"):
                raise

    async def register(self, user, password, token=None):
        await self.connect()
        if token is not None:
            await self.iq("<preauth xmlns='%s' token='%s'/>" % (NS_PARS, xml_escape(token, {"'": "&apos;"})))
        if self.o.reg_get_form:
            await self.iq("<query xmlns='%s'/>" % NS_REGISTER, typ="get")
        await self.iq("<query xmlns='%s'><username>%s</username><password>%s</password></query>"
                      % (NS_REGISTER, xml_escape(user), xml_escape(password)))

    def close(self):
        p = self.proto
        if p is None or p.transport is None:
            return
        try:
            if p.closed is None:
                p.write("</stream:stream>")
            p.transport.close()
        except Exception:
            pass
        p.closed = p.closed or XMPPError("closed")

    def abort(self):
        p = self.proto
        if p is not None and p.transport is not None:
            try:
                p.transport.abort()
            except Exception:
                pass


def _sasl_cond(el):
    if el.tag == T_SASL_FAILURE and len(el):
        return el[0].tag.split("}")[-1]
    return el.tag.split("}")[-1]


def _stanza_cond(el):
    e = el.find("{jabber:client}error")
    if e is not None:
        for c in e:
            if c.tag.startswith("{%s}" % NS_STANZAS) and not c.tag.endswith("}text"):
                return c.tag.split("}")[-1]
    return "unknown"


# --------------------------------------------------------------------------
# helpers for the scenarios
# --------------------------------------------------------------------------
def user_name(o, i):
    return "%s%d" % (o.prefix, i)


def user_password(o, i):
    return o.password if o.password else "pw-%s%d" % (o.prefix, i)


PHASES = ("tcp_tls", "sasl", "bind", "presence_ping")


class Stats:
    def __init__(self):
        self.phases = []
        self.lat = []
        self.ok = 0
        self.err = 0
        self.errs = {}

    def fail(self, e):
        self.err += 1
        k = str(e) or type(e).__name__
        self.errs[k] = self.errs.get(k, 0) + 1

    def phase_fields(self):
        """median duration of each login step (ms)"""
        out = {}
        for k, name in enumerate(PHASES):
            v = sorted(p[k] for p in self.phases)
            out["phase_%s_p50_ms" % name] = round(pct(v, 50) * 1000.0, 2) if v else None
        return out


async def run_pool(n, conc, job, deadline):
    """Run job(i) for i in range(n) with at most conc in flight, until deadline."""
    it = iter(range(n))

    async def worker():
        for i in it:
            if now() > deadline:
                return
            await job(i)

    await asyncio.gather(*[worker() for _ in range(max(1, min(conc, n)))])


def base_result(o, scenario):
    r = {"scenario": scenario, "host": o.host, "port": o.port, "domain": o.domain,
         "label": o.label, "loop": "uvloop" if (uvloop and not o.no_uvloop) else "asyncio"}
    try:
        r["gen_cpus"] = sorted(os.sched_getaffinity(0))
        if o.server_pid:
            r["server_pid"] = o.server_pid
            r["server_cpus"] = sorted(os.sched_getaffinity(o.server_pid))
    except OSError:
        pass
    return r


async def login_many(o, idxs, conc, deadline, cache, st, keep=True, resource="load"):
    """Log in users idxs[k] with concurrency conc; returns {idx: Client}."""
    clients = {}

    async def job(k):
        i = idxs[k]
        c = Client(o, cache)
        t0 = now()
        try:
            await c.login(user_name(o, i), user_password(o, i), resource)
            st.lat.append(now() - t0)
            st.phases.append(c.phases)
            st.ok += 1
            if keep:
                clients[i] = c
            else:
                c.close()
        except XMPPError as e:
            st.fail(e)
            c.abort()
        except Exception as e:  # noqa
            st.fail(XMPPError("exception:%s" % type(e).__name__))
            c.abort()

    await run_pool(len(idxs), conc, job, deadline)
    return clients


def close_all(clients):
    for c in clients.values():
        c.close()


# --------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------
async def sc_register(o):
    tokens = None
    if o.token_file:
        with open(o.token_file) as f:
            tokens = [l.strip() for l in f if l.strip()]
        if len(tokens) < o.n:
            raise SystemExit("token file has %d tokens, need %d" % (len(tokens), o.n))
    st = Stats()
    deadline = now() + o.max_seconds

    async def job(k):
        i = o.start + k
        c = Client(o)
        t0 = now()
        try:
            await c.register(user_name(o, i), user_password(o, i), tokens[k] if tokens else None)
            st.lat.append(now() - t0)
            st.ok += 1
        except XMPPError as e:
            st.fail(e)
        except Exception as e:  # noqa
            st.fail(XMPPError("exception:%s" % type(e).__name__))
        finally:
            c.close()

    m = Meter(o.server_pid).start()
    await run_pool(o.n, o.c, job, deadline)
    m.stop()
    r = base_result(o, "register")
    r.update({"n": o.n, "concurrency": o.c, "ok": st.ok, "errors": st.err,
              "error_kinds": st.errs, "per_s": round(st.ok / max(m.elapsed, 1e-9), 1),
              "preauth_tokens": bool(tokens)})
    r.update(latency_fields(st.lat))
    r.update(m.fields())
    return r


async def sc_login(o, cache):
    st = Stats()
    deadline = now() + o.max_seconds
    idxs = [o.start + k for k in range(o.n)]
    m = Meter(o.server_pid).start()
    await login_many(o, idxs, o.c, deadline, cache, st, keep=False)
    m.stop()
    r = base_result(o, "login")
    r.update({"n": o.n, "concurrency": o.c, "ok": st.ok, "errors": st.err, "error_kinds": st.errs,
              "per_s": round(st.ok / max(m.elapsed, 1e-9), 1),
              "scram_cache_hits": cache.hits, "scram_cache_misses": cache.misses,
              "scram_iterations": sorted(SCRAM_ITERS), "tls": sorted(TLS_SEEN)})
    r.update(latency_fields(st.lat))
    r.update(st.phase_fields())
    r.update(m.fields())
    return r


async def sc_messages(o, cache):
    deadline = now() + o.max_seconds
    idxs = [o.start + k for k in range(2 * o.pairs)]
    lst = Stats()
    if o.port2:  # pairs across two nodes: the first side on --port, the second on --port2
        other = argparse.Namespace(**{**vars(o), "port": o.port2})
        clients = await login_many(o, idxs[0::2], o.c, deadline, cache, lst, keep=True, resource="msg")
        clients.update(await login_many(other, idxs[1::2], o.c, deadline, cache, lst, keep=True,
                                        resource="msg"))
    else:
        clients = await login_many(o, idxs, o.c, deadline, cache, lst, keep=True, resource="msg")
    # --devices: each account's other devices (carbons and SM on, never a receipt of their own)
    others = [await login_many(o, idxs, o.c, deadline, cache, lst, keep=True, resource="dev%d" % d)
              for d in range(1, o.devices)] if o.sm else []
    r = base_result(o, "smarchive" if o.sm and o.devices > 1 else "smmessages" if o.sm else "messages")
    r.update({"pairs": o.pairs, "per_side": o.m, "port2": o.port2, "window": o.window,
              "body_bytes": o.body_bytes, "devices": o.devices if o.sm else 1,
              "login_ok": lst.ok, "login_errors": lst.err, "login_error_kinds": lst.errs})
    try:
        if lst.err:
            r["errors"] = lst.err
            return r
        body = "x" * o.body_bytes
        st = Stats()
        pending = {}  # (client id, stanza id) -> [t0, future]
        bare = {i: "%s@%s" % (user_name(o, i), o.domain) for i in idxs}

        def make_handler(c):
            cid = id(c)

            def on_stanza(el):
                if el.tag != T_MESSAGE:
                    return False
                rq = el.find(T_REQUEST)
                if rq is not None:
                    c.send("<message to='%s' id='a%s'><received xmlns='%s' id='%s'/></message>"
                           % (el.get("from"), el.get("id"), NS_RECEIPTS, el.get("id")))
                    return True
                rc = el.find(T_RECEIVED)
                if rc is not None:
                    p = pending.pop((cid, rc.get("id")), None)
                    if p is not None:
                        st.lat.append(now() - p[0])
                        if not p[1].done():
                            p[1].set_result(None)
                    return True
                return True
            return on_stanza

        if o.sm:
            # XEP-0280 carbons and XEP-0198 stream management on every client, as a phone has them
            # (untimed); from then on each client counts what it receives and answers <r/> with it.
            for c in [*clients.values(), *(c for device in others for c in device.values())]:
                await c.iq("<enable xmlns='%s'/>" % NS_CARBONS)
                await c.enable_sm()
            copies = Stats()  # what the other devices get: messages, receipts, carbons of both

            def silent(el):
                if el.tag == T_MESSAGE:
                    copies.ok += 1
                return True
            for device in others:
                for c in device.values():
                    c.proto.on_stanza = c.counting(silent)
                    if c.proto.queue:
                        c.proto.queue.clear()
        for c in clients.values():
            c.proto.on_stanza = make_handler(c)
            if o.sm:
                c.proto.on_stanza = c.counting(c.proto.on_stanza)
            if c.proto.queue:
                c.proto.queue.clear()
        loop = asyncio.get_running_loop()

        async def side(me, peer):
            c = clients[me]
            cid = id(c)
            to = bare[peer]
            sem = asyncio.Semaphore(o.window)
            futs = []
            for k in range(o.m):
                if now() > deadline or c.proto.closed is not None:
                    break
                await sem.acquire()
                sid = "m%d" % k
                f = loop.create_future()
                f.add_done_callback(lambda _f: sem.release())
                pending[(cid, sid)] = [now(), f]
                c.send("<message type='chat' to='%s' id='%s'><body>%s</body><request xmlns='%s'/></message>"
                       % (to, sid, body, NS_RECEIPTS))
                futs.append((sid, f))
            for sid, f in futs:
                try:
                    await asyncio.wait_for(asyncio.shield(f), max(0.01, min(o.op_timeout, deadline - now())))
                    st.ok += 1
                except asyncio.TimeoutError:
                    pending.pop((cid, sid), None)
                    st.fail(XMPPError("receipt-timeout"))

        m = Meter(o.server_pid).start()
        tasks = []
        for k in range(o.pairs):
            a, b = idxs[2 * k], idxs[2 * k + 1]
            tasks.append(side(a, b))
            tasks.append(side(b, a))
        await asyncio.gather(*tasks)
        m.stop()
        r.update({"messages_ok": st.ok, "errors": st.err, "error_kinds": st.errs,
                  "per_s": round(st.ok / max(m.elapsed, 1e-9), 1),
                  "stanzas_routed_per_s": round(2 * st.ok / max(m.elapsed, 1e-9), 1)})
        r.update(latency_fields(st.lat, "rtt_"))
        r.update(m.fields())
        if others:
            # Untimed: what the other devices got, and whether the archive is on (its count).
            r["device_messages"] = copies.ok
            holder = clients[idxs[0]]
            holder.proto.on_stanza = holder.counting(lambda el: True)
            try:
                _, fin = await mam_query(holder, "<max>0</max>")
                found = re.search(rb"<count>(\d+)</count>", fin)
                r["archive_count"] = int(found.group(1)) if found else None
            except XMPPError as e:
                r["archive_count"] = None
                r["archive_error"] = str(e)
    finally:
        close_all(clients)
        for device in others:
            close_all(device)
    return r


async def sc_resume(o, cache):
    """
    XEP-0198 resumption, one at a time: log in, enable management with
    resumption, drop the connection without a word, then on a new
    connection (STARTTLS, SCRAM) resume. The latency is <resume/> to
    <resumed/>; the JSON also has the whole reconnection (connect to resumed).
    """
    deadline = now() + o.max_seconds
    st = Stats()
    whole = []
    m = Meter(o.server_pid).start()
    for k in range(o.n):
        if now() > deadline:
            break
        i = o.start + k % o.pool
        user, password = user_name(o, i), user_password(o, i)
        first, again = Client(o, cache), Client(o, cache)
        try:
            await first.login(user, password, "resume", presence=False)
            token = await first.enable_sm()
            first.abort()
            t0 = now()
            await again.connect()
            await again.auth(user, password)
            t1 = now()
            again.send("<resume xmlns='%s' previd='%s' h='0'/>" % (NS_SM, token))
            el = await again.recv()
            if el.tag != "{%s}resumed" % NS_SM:
                raise XMPPError("not-resumed:" + el.tag.split("}")[-1])
            st.lat.append(now() - t1)
            whole.append(now() - t0)
            st.ok += 1
        except XMPPError as e:
            st.fail(e)
        finally:
            first.abort()
            again.close()
    m.stop()
    r = base_result(o, "resume")
    r.update({"n": o.n, "ok": st.ok, "errors": st.err, "error_kinds": st.errs,
              "per_s": round(st.ok / max(m.elapsed, 1e-9), 1)})
    r.update(latency_fields(st.lat))
    r.update(latency_fields(whole, "reconnect_"))
    r.update(m.fields())
    return r


async def sc_idle(o, cache):
    """Open K connections in two halves; RSS is read before, after the first
    half and after all.  bytes_per_conn = (full - before)/K; the marginal
    figure (full - half)/(K - K/2) is less sensitive to one-off warm-up."""
    deadline = now() + o.max_seconds
    idxs = [o.start + k for k in range(o.k)]
    half = o.k // 2
    r = base_result(o, "idle")
    rss = lambda: tree_rss_bytes(o.server_pid) if o.server_pid else None
    rss0 = rss()
    lst = Stats()
    m = Meter(o.server_pid).start()

    async def connect(part):
        """Log in part of the users; with --sm each then enables XEP-0198 with resumption."""
        batch = await login_many(o, part, o.c, deadline, cache, lst, keep=True, resource="idle")
        if o.sm:
            for c in batch.values():
                await c.enable_sm()
                c.proto.on_stanza = c.counting(lambda el: True)  # answers the server's <r/>
                c.proto.queue.clear()
        return batch

    clients = await connect(idxs[:half])
    n_half = len(clients)
    await asyncio.sleep(o.settle)
    rss_half = rss()
    clients.update(await connect(idxs[half:]))
    m.stop()
    m.t0 += o.settle  # the settle pause is not login time
    try:
        await asyncio.sleep(o.settle)
        alive = sum(1 for c in clients.values() if c.proto.closed is None)
        rss1 = rss()
        hold_until = min(deadline, now() + o.hold)
        while now() < hold_until:
            await asyncio.sleep(min(1.0, max(0.0, hold_until - now())))
        alive_end = sum(1 for c in clients.values() if c.proto.closed is None)
        rss2 = rss()
        gen_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        r.update({"k": o.k, "concurrency": o.c, "connected": lst.ok, "errors": lst.err,
                  "error_kinds": lst.errs, "alive_after_settle": alive, "alive_after_hold": alive_end,
                  "rss_before_bytes": rss0, "rss_half_bytes": rss_half, "rss_held_bytes": rss1,
                  "rss_end_of_hold_bytes": rss2,
                  "server_processes": len(process_tree(o.server_pid)) if o.server_pid else None,
                  "gen_max_rss_bytes": gen_rss})
        if rss0 is not None and rss1 is not None and lst.ok:
            r["bytes_per_conn"] = int((rss1 - rss0) / lst.ok)
            if len(clients) > n_half and rss_half is not None:
                r["bytes_per_conn_marginal"] = int((rss1 - rss_half) / (len(clients) - n_half))
        r.update(latency_fields(lst.lat, "login_"))
        mf = m.fields()
        r.update({"login_per_s": round(lst.ok / max(m.elapsed, 1e-9), 1)})
        r.update({("login_" + k): v for k, v in mf.items()})
    finally:
        close_all(clients)
    return r


async def sc_roster(o, cache):
    deadline = now() + o.max_seconds
    idxs = [o.start + k for k in range(o.u)]
    r = base_result(o, "roster")
    r.update({"users": o.u, "items": o.r, "gets_per_user": o.gets, "concurrency": o.c})
    pool = max(1, o.pool)
    lst = Stats()
    clients = await login_many(o, idxs, o.c, deadline, cache, lst, keep=True, resource="roster")
    try:
        r.update({"login_ok": lst.ok, "login_errors": lst.err, "login_error_kinds": lst.errs})
        # setup (untimed for the figure, reported separately): add missing items
        setup = Stats()
        added = [0]

        async def fill(k):
            c = clients.get(idxs[k])
            if c is None:
                return
            try:
                res = await c.iq("<query xmlns='%s'/>" % NS_ROSTER, typ="get")
                q = res.find("{%s}query" % NS_ROSTER)
                have = {it.get("jid") for it in q} if q is not None else set()
                want = []
                for j in range(1, o.r + 1):
                    jid = "%s@%s" % (user_name(o, (idxs[k] - o.start + j) % pool + o.start), o.domain)
                    if jid not in have and jid != "%s@%s" % (user_name(o, idxs[k]), o.domain):
                        want.append((j, jid))
                # pipeline roster sets in batches of 20
                for b in range(0, len(want), 20):
                    ids = []
                    for j, jid in want[b:b + 20]:
                        i = c.nid("rs")
                        ids.append(i)
                        c.send("<iq type='set' id='%s'><query xmlns='%s'><item jid='%s' name='Contact %d'>"
                               "<group>Bench</group></item></query></iq>" % (i, NS_ROSTER, jid, j))
                    waiting = set(ids)
                    for _ in range(100000):
                        if not waiting:
                            break
                        el = await c.recv()
                        if el.tag == T_IQ and el.get("id") in waiting:
                            waiting.discard(el.get("id"))
                            if el.get("type") != "result":
                                raise XMPPError("roster-set:" + _stanza_cond(el))
                            added[0] += 1
                setup.ok += 1
            except XMPPError as e:
                setup.fail(e)

        ms = Meter(o.server_pid).start()
        await run_pool(len(idxs), o.c, fill, deadline)
        ms.stop()
        r.update({"setup_items_added": added[0], "setup_errors": setup.err,
                  "setup_error_kinds": setup.errs,
                  "setup_items_per_s": round(added[0] / max(ms.elapsed, 1e-9), 1)})
        st = Stats()
        sizes = []

        async def get(k):
            c = clients.get(idxs[k])
            if c is None:
                return
            for _ in range(o.gets):
                if now() > deadline:
                    return
                t0 = now()
                try:
                    count = await c.roster_count()
                    st.lat.append(now() - t0)
                    sizes.append(count)
                    st.ok += 1
                except XMPPError as e:
                    st.fail(e)
                    return

        m = Meter(o.server_pid).start()
        await run_pool(len(idxs), o.c, get, deadline)
        m.stop()
        r.update({"gets_ok": st.ok, "errors": st.err + lst.err + setup.err, "error_kinds": st.errs,
                  "per_s": round(st.ok / max(m.elapsed, 1e-9), 1),
                  "items_per_s": round(sum(sizes) / max(m.elapsed, 1e-9), 1),
                  "min_items_seen": min(sizes) if sizes else None,
                  "max_items_seen": max(sizes) if sizes else None})
        r.update(latency_fields(st.lat))
        r.update(m.fields())
    finally:
        close_all(clients)
    return r


_MAM_FIRST = re.compile(rb"<first[^>]*>([^<]+)</first>")
_MAM_COMPLETE = re.compile(rb"""complete=["']true["']""")
_MAM_COUNT = re.compile(rb"<count>(\d+)</count>")


def _iq_answer(raw, i, fut):
    """A raw filter's test for the answer to iq C{i}: resolve C{fut} with (type, bytes)."""
    if not raw.startswith(b"<iq"):
        return False
    head = raw[:_START_TAG.match(raw).end()]
    mi = _ID_ATTR.search(head)
    if mi is None or (mi.group(1) if mi.group(1) is not None else mi.group(2)) != i:
        return False
    mt = _TYPE_ATTR.search(head)
    if not fut.done():
        fut.set_result((mt.group(1) or mt.group(2) if mt else b"", raw))
    return True


async def mam_query(c, rsm):
    """One archive query (RSM C{rsm}); its results and fin are consumed raw:
    returns (results received, fin bytes)."""
    i = c.nid("mq").encode()
    fut = asyncio.get_running_loop().create_future()
    results = [0]

    def rf(raw):
        if raw.startswith(b"<message"):
            if b"<result" in raw:
                results[0] += 1
            return True  # results, and any live message, are only counted
        return _iq_answer(raw, i, fut)

    c.proto.raw_filter = rf
    try:
        c.send("<iq type='set' id='%s'><query xmlns='%s' queryid='%s'><set xmlns='%s'>%s</set></query></iq>"
               % (i.decode(), NS_MAM, i.decode(), NS_RSM, rsm))
        try:
            typ, raw = await asyncio.wait_for(fut, c.o.op_timeout)
        except asyncio.TimeoutError:
            raise XMPPError(str(c.proto.closed) if c.proto.closed else "timeout")
    finally:
        c.proto.raw_filter = None
    if typ != b"result":
        raise XMPPError("iq-error:" + _stanza_cond(ET.fromstring(c.proto.header + raw + c.proto.close_tag)[0]))
    return results[0], raw


async def sc_mam(o, cache):
    """XEP-0313: one user's archive of N messages (filled untimed by a peer
    while the user is online), then C clients of that user each page
    backward through it, PAGE messages a query, as a client scrolling up
    its history does; wraps to the last page at the start."""
    deadline = now() + o.max_seconds
    owner, peer = o.start, o.start + 1
    r = base_result(o, "mam")
    r.update({"archive": o.archive, "page": o.page, "queries_per_client": o.queries, "concurrency": o.c})
    lst = Stats()
    setup = await login_many(o, [owner, peer], 2, deadline, cache, lst, keep=True, resource="fill")
    clients = {}
    try:
        if lst.err:
            r.update({"errors": lst.err, "error_kinds": lst.errs})
            return r
        holder, sender = setup[owner], setup[peer]
        _, fin = await mam_query(holder, "<max>0</max>")
        have = int(_MAM_COUNT.search(fin).group(1)) if _MAM_COUNT.search(fin) else 0
        holder.proto.raw_filter = lambda raw: raw.startswith(b"<message")  # live copies: dropped
        to = "%s@%s" % (user_name(o, owner), o.domain)
        t0 = now()
        for b in range(have, o.archive, 200):
            for k in range(b, min(b + 200, o.archive)):
                sender.send("<message type='chat' to='%s' id='f%d'><body>archived message %d, "
                            "long enough to look like a chat line</body></message>" % (to, k, k))
            await sender.sync()
        await holder.sync()
        _, fin = await mam_query(holder, "<max>0</max>")
        stored = int(_MAM_COUNT.search(fin).group(1)) if _MAM_COUNT.search(fin) else 0
        r.update({"setup_archived": stored - have, "setup_seconds": round(now() - t0, 2),
                  "archive_count": stored})
        close_all(setup)
        deadline = now() + o.max_seconds  # the fill is setup: the queries get the whole time
        st = Stats()
        for k in range(o.c):  # C sessions of one user (login_many keys its clients by user)
            clients[k] = Client(o, cache)
            await clients[k].login(user_name(o, owner), user_password(o, owner), "q%d" % k,
                                   presence=False)
        got = [0]

        async def pager(k):
            c = clients[k]
            before = ""
            for _ in range(o.queries):
                if now() > deadline:
                    return
                t0 = now()
                try:
                    n, fin = await mam_query(c, "<max>%d</max><before>%s</before>" % (o.page, before))
                except XMPPError as e:
                    st.fail(e)
                    return
                st.lat.append(now() - t0)
                st.ok += 1
                got[0] += n
                first = _MAM_FIRST.search(fin)
                if n != o.page and not _MAM_COMPLETE.search(fin):
                    st.fail(XMPPError("short-page"))
                before = "" if _MAM_COMPLETE.search(fin) or first is None else first.group(1).decode()

        m = Meter(o.server_pid).start()
        await run_pool(o.c, o.c, pager, deadline)
        m.stop()
        r.update({"queries_ok": st.ok, "errors": st.err + lst.err, "error_kinds": st.errs,
                  "per_s": round(st.ok / max(m.elapsed, 1e-9), 1),
                  "messages_per_s": round(got[0] / max(m.elapsed, 1e-9), 1)})
        r.update(latency_fields(st.lat))
        r.update(m.fields())
    finally:
        close_all(setup)
        close_all(clients)
    return r


# --------------------------------------------------------------------------
def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, want, 65536)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def add_common(ap, sup=False):
    """Common options; accepted before or after the scenario name."""
    d = (lambda v: argparse.SUPPRESS) if sup else (lambda v: v)
    ap.add_argument("--host", default=d("127.0.0.1"))
    ap.add_argument("--port", type=int, default=d(5222))
    ap.add_argument("--domain", default=d("localhost"))
    ap.add_argument("--server-pid", type=int, default=d(0), help="server PID for RSS/CPU (children included)")
    ap.add_argument("--also-pids", default=d(""),
                    help="comma-separated PIDs whose CPU counts with the server's (a cluster's other nodes, Redis)")
    ap.add_argument("--prefix", default=d("bench"), help="username prefix (user = PREFIX + index)")
    ap.add_argument("--password", default=d(""), help="one password for all (default: pw-<user>)")
    ap.add_argument("--start", type=int, default=d(0), help="first user index")
    ap.add_argument("--op-timeout", type=float, default=d(30.0), help="seconds per protocol step")
    ap.add_argument("--max-seconds", type=float, default=d(240.0), help="hard limit per scenario")
    ap.add_argument("--plain", action="store_true", default=d(False), help="use SASL PLAIN even if SCRAM is offered")
    ap.add_argument("--no-require-tls", dest="require_tls", action="store_false", default=d(True))
    ap.add_argument("--scram-cache", default=d(""), help="file persisting SCRAM salted passwords")
    ap.add_argument("--label", default=d(""), help="free text copied into the JSON result")
    ap.add_argument("--no-uvloop", action="store_true", default=d(False))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common(ap)
    sub = ap.add_subparsers(dest="scenario", required=True)
    _add = sub.add_parser

    def add_parser(name):
        p = _add(name)
        add_common(p, sup=True)
        return p
    sub.add_parser = add_parser
    p = sub.add_parser("register")
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("-c", type=int, default=50)
    p.add_argument("--token-file", default="", help="XEP-0401 preauth tokens, one per line")
    p.add_argument("--reg-get-form", action="store_true", help="fetch the form before submitting")
    p = sub.add_parser("login")
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("-c", type=int, default=50)
    p = sub.add_parser("messages")
    p.add_argument("-p", "--pairs", type=int, default=50)
    p.add_argument("-m", type=int, default=200, help="messages sent by each side of a pair")
    p.add_argument("-w", "--window", type=int, default=1, help="unacknowledged messages per sender")
    p.add_argument("-c", type=int, default=50, help="login concurrency")
    p.add_argument("--body-bytes", type=int, default=64)
    p.add_argument("--sm", action="store_true", help="carbons and XEP-0198 stream management on")
    p.add_argument("--devices", type=int, default=1,
                   help="with --sm: clients per account; the others get carbons (smarchive)")
    p.add_argument("--port2", type=int, default=0,
                   help="the second side of each pair logs in on this port (another node of a cluster)")
    p = sub.add_parser("resume")
    p.add_argument("-n", type=int, default=200, help="resumptions, one at a time")
    p.add_argument("--pool", type=int, default=100, help="users [start, start+pool) take turns")
    p = sub.add_parser("idle")
    p.add_argument("-k", type=int, default=2000)
    p.add_argument("-c", type=int, default=50, help="login concurrency")
    p.add_argument("--settle", type=float, default=3.0, help="seconds before the RSS reading")
    p.add_argument("--hold", type=float, default=5.0, help="seconds to hold after it")
    p.add_argument("--sm", action="store_true",
                   help="XEP-0198 stream management with resumption on every connection")
    p = sub.add_parser("roster")
    p.add_argument("-u", type=int, default=100, help="users")
    p.add_argument("-r", type=int, default=50, help="roster items per user")
    p.add_argument("-g", "--gets", type=int, default=5, help="roster gets per user")
    p.add_argument("-c", type=int, default=50)
    p.add_argument("--pool", type=int, default=2000, help="contacts are drawn from users [start, start+pool)")
    p = sub.add_parser("mam")
    p.add_argument("--archive", type=int, default=10000, help="messages in the user's archive")
    p.add_argument("--page", type=int, default=50, help="messages per query")
    p.add_argument("-q", "--queries", type=int, default=200, help="queries per client")
    p.add_argument("-c", type=int, default=10, help="clients (sessions of the user) querying at once")
    return ap.parse_args(argv)


async def amain(o):
    cache = ScramCache(o.scram_cache or None)
    try:
        if o.scenario == "register":
            r = await sc_register(o)
        elif o.scenario == "login":
            r = await sc_login(o, cache)
        elif o.scenario == "messages":
            r = await sc_messages(o, cache)
        elif o.scenario == "resume":
            r = await sc_resume(o, cache)
        elif o.scenario == "idle":
            r = await sc_idle(o, cache)
        elif o.scenario == "roster":
            r = await sc_roster(o, cache)
        elif o.scenario == "mam":
            r = await sc_mam(o, cache)
        else:
            raise SystemExit("unknown scenario")
    finally:
        cache.save()
    await asyncio.sleep(0.2)  # let the closes flush
    return r


def main(argv=None):
    o = parse_args(argv)
    Meter.also = tuple(int(pid) for pid in o.also_pids.split(",") if pid)
    want = {"idle": o.__dict__.get("k", 0),
            "messages": 2 * o.__dict__.get("pairs", 0) * o.__dict__.get("devices", 1)}.get(o.scenario, 0)
    want = max(want, o.__dict__.get("u", 0), o.__dict__.get("c", 0)) + 256
    o.nofile = raise_nofile(want)
    if o.nofile < want:
        log("warning: RLIMIT_NOFILE %d < %d wanted" % (o.nofile, want))
    if uvloop is not None and not o.no_uvloop:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    t0 = time.time()
    r = asyncio.run(amain(o))
    r["started_unix"] = round(t0, 1)
    print(json.dumps(r, sort_keys=False), flush=True)
    return 0 if not r.get("errors") else 3


if __name__ == "__main__":
    sys.exit(main())
