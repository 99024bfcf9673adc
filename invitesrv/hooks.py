"""
Named hooks: the few places where modules cooperate without knowing each other.

A module declares the hooks it takes (L{invitesrv.modules.base.HostModule}'s
C{hooks}); the host adds them when the module starts and removes them when it
stops. Whoever owns the event runs the hook. Callbacks run in priority order
(higher first). For L{Hooks.fire}, a callback may return a Deferred, which is
waited for before the next one runs, and an exception stops the chain: that is
how a module vetoes a registration.

The stream extension points are here too, with the two that are not hooks:
a module handles top-level non-stanza elements of client streams with its
C{nonzas} declaration (L{invitesrv.host.VirtualHost.addNonza}), and wraps
what goes out to a session and comes in from it with
L{invitesrv.xmpp.c2s.Session.addOutput} and C{addInput} (typically from
C{session-bound}). Per-stream and per-session state goes in
L{invitesrv.services.slots.Slot}s. In the hooks below, C{stream} is a client
stream's L{invitesrv.xmpp.auth.C2SAuthenticator} (before and after binding)
and C{session} a bound L{invitesrv.xmpp.c2s.Session}.
These are all the hooks, with what they are given:

C{stream-features} (stream, features)
    Synchronous. Add feature elements to the C{<stream:features/>} being sent,
    before authentication and after (C{stream.authenticated} and
    C{stream.encrypted} say which stage it is). What is added may depend on
    the stage, the channel-binding types and the host's configuration and
    modules, not on one stream: the features are made once per stage
    (L{invitesrv.host.VirtualHost.streamFeatures}). C{sasl2-features} and
    C{bind2-features}, run from here, are under the same rule.
C{preauth-iq} (stream, iq) -> Deferred or None
    An IQ on an unauthenticated stream. The first callback that returns a
    Deferred owns the IQ; it fires with the response element.
C{stream-lost} (session, reason) -> True or None
    Run with L{Hooks.first} when the connection of a bound session is lost
    without the client closing its stream. A callback that returns True
    keeps the session bound (stream management holds it for resumption, see
    L{invitesrv.xmpp.auth.C2SAuthenticator.takeOver}) and must close it
    later; otherwise the session closes at once.
C{client-stanza} (session, stanza) -> True or None
    Run with L{Hooks.first} for every stanza from a bound client that passed
    the stream's checks (C{from} stamped), before C{client-presence} and any
    routing. A callback that returns True has dealt with it (refused it,
    say, as blocking does with a stanza to a blocked JID); nothing more is done.
C{inbound-stanza} (stanza, target) -> True or None
    Run with L{Hooks.first} for every stanza the host receives for one of its
    accounts (C{target}, bare or full), before the modules and delivery. True:
    dealt with (dropped or bounced); nothing more is done.
C{host-send} (stanza) -> True or None
    Run with L{Hooks.first} for every stanza a module sends through the host
    (presence broadcasts and probe answers among them), before the router.
    True: the stanza must not go; it is dropped.
C{sasl2-features} (stream, inline)
    Synchronous. Add what a module does inline in XEP-0388 SASL2 to the
    C{<inline/>} of C{<authentication/>} (the C{bind2} and C{fast} modules;
    stream management adds C{<sm/>}).
C{sasl2-mechanism} (stream, mechanism, request) -> exchange or None
    Run with L{Hooks.first} when a SASL2 C{<authenticate/>} (C{request})
    names C{mechanism}: a module that implements it returns an exchange
    (C{step(data)} firing with a challenge or an
    L{invitesrv.xmpp.auth.Success}; FAST's token mechanisms), or raises
    L{invitesrv.xmpp.auth.SASLFailure}. None: the stream's own SASL mechanisms.
C{sasl2-inline} (stream, request, success) -> callable, None or Deferred
    Run with L{Hooks.fire} after a SASL2 exchange succeeded (the stream is
    authenticated), before C{<success/>} is sent: each module acts on its
    child of C{request} and adds its answer to C{success}. Stream management
    resumes a session here (priority above 0, with C{stream.takeOver}), and
    C{bind2} (priority -10) then binds nothing; C{fast} issues tokens. A
    callable returned (or fired) runs once C{<success/>} is sent.
C{bind2-features} (stream) -> namespace or None
    Synchronous: a namespace a module handles inside XEP-0386's C{<bind/>}
    (carbons, CSI, stream management's C{enable}); offered in SASL2's inline.
C{bind2-inline} (session, request, bound)
    Synchronous, after Bind2 bound C{session} and before C{<success/>} and
    C{session-bound}: each module acts on its child of the C{<bind/>}
    C{request} and may add its answer to C{<bound/>}.
C{hibernated-stanza} (session, stanza)
    Synchronous. A stream-managed session whose connection is lost, waiting
    to be resumed (L{invitesrv.modules.smacks}), was sent C{stanza}: it is
    queued for the client (push notifications wake the device). Run too for
    what was unacknowledged when the connection was lost.
C{resume-elsewhere} (stream, token) -> Deferred or None
    Run with L{Hooks.first} by stream management when a C{<resume/>} names
    a token this node does not hold (cluster mode asks the other nodes,
    L{invitesrv.cluster.resumption}). A Deferred returned fires with the
    session, handed over and bound to C{stream}, or None (C{<failed/>}).
C{when-sent} (session) -> Deferred[bool] or None
    Run with L{Hooks.first} by L{invitesrv.xmpp.c2s.Session.whenSent}: a
    module that knows better than the transport when the client has what
    was sent so far (stream management: its acknowledgement) answers with a
    Deferred firing True then, or False if the session ends first; what the
    caller waits for is then the caller's to keep, not the module's.
C{host-stopping} (host) -> Deferred or None
    The host is stopping (the listeners have let their clients go) and its
    modules are still up: end what is held in memory and must not be lost
    (stream management hands on its sessions' stanzas); a Deferred returned
    is waited for (at most 10 s at a shutdown) before the modules stop and
    the store closes.
C{stream-closed} (stream)
    An unauthenticated or authenticated stream ended: free what its slots hold.
C{disco-items} (requestor, node) -> list[DiscoItem]
    Synchronous: the items the host lists in its disco#items (services,
    components), for C{node} ('' for the top level).
C{user-registering} (registration)
    Before an account is created; raise a C{StanzaError} to refuse. May add to
    C{registration.rosterItems}, C{registration.roles} and the like
    (C{registration.circles}: circles joined in the account's transaction).
C{user-registered} (registration)
    After the account, and everything written with it, is committed.
C{password-changed} (host, username)
    After the account's other sessions were ended.
C{user-deleting} (host, username)
    Before the account and its data go: tell contacts.
C{user-deleted} (host, username)
    After the account, its roles and its invites went, and its sessions ended.
C{session-bound} (session)
C{session-closed} (session)
C{initial-presence} (session)
    The session has just become available: its first available presence, or
    the first after an unavailable one.
C{client-presence} (session, presence) -> True or None
    A presence stanza from a bound client (C{from} already stamped), before
    any routing. A callback that returns True has processed it: the user's
    server side of RFC 6121 (broadcast, directed presence, outbound
    subscription state) is done there, whatever domain the C{to} names.
C{subscription-request} (host, username, contact, stanza) -> Deferred[bool] or None
    An inbound C{subscribe} from C{contact} (a bare JID) for the local user
    C{username}, run with L{Hooks.first} just before the request would be
    stored and delivered to the user (not when the server answers it itself:
    the contact is already subscribed or was pre-approved). A callback that
    fires True has dealt with the request (e.g. approved it with
    L{invitesrv.modules.presence.PresenceModule.approveSubscription}); nothing
    more is done for it. False or None: the request goes to the user as usual.
C{message-delivered} (message, sessions)
    Synchronous. A message for a local account was just sent to C{sessions}
    (bound sessions of that one account): to its full JID, or to those its
    bare JID reaches. Not run when it went to offline storage or nowhere.
C{offline-message} (username, stanza) -> Deferred[bool]
    A message for a local user with no available resource; fire True if kept
    (or deliberately dropped, e.g. a bare chat-state notification), False to
    have the sender told C{service-unavailable}.
C{adhoc-commands} (host) -> list[AdHocCommand]
    Synchronous, run at every XEP-0050 request: the ad-hoc commands a module
    offers now (L{invitesrv.modules.adhoc.AdHocCommand}; a
    L{invitesrv.modules.adhoc.CommandProvider} module adds this callback itself).
C{archive-prefs-changed} (host, username, prefs)
    Synchronous. The user's XEP-0313 preferences (an
    L{invitesrv.store.interfaces.ArchivePrefs}) were stored; cluster mode
    gives them to the other nodes
    (L{invitesrv.modules.mam.MAMModule.learnPrefs}).
C{blocklist-changed} (host, username)
    Synchronous. The user's blocklist (XEP-0191) was changed in the store by
    a block or an unblock; cluster mode has the other nodes read it again
    (L{invitesrv.modules.blocking.BlockingModule.refresh}).
C{pep-changed} (host, username, node, options, eventXML)
    Synchronous. The user's PEP nodes (XEP-0163) were changed in the store:
    C{node} (None: the account went, or a change with nothing to tell) was
    published to, retracted from, purged, deleted or configured, and
    C{eventXML}, if not None, is the serialised C{<event/>} for the
    resources interested in C{node} that its C{options} let read it. Cluster
    mode has the other nodes forget their copy of the user's nodes and tell
    their interested resources
    (L{invitesrv.modules.pep.PepModule.changedElsewhere}).
C{pep-presence} (host, sender, presence) -> True or None
    Run with L{Hooks.first} for an available or unavailable presence of
    C{sender} (a full JID) to an account's bare JID, before PEP reads the
    interest its caps say. True: it is not read here (cluster mode: the
    session of C{sender} is on another node, which is handed the presence:
    each node keeps the interest of its own sessions and asks them for
    their caps, L{invitesrv.modules.pep.PepModule.contactPresence}).
C{invite-created} (invite, links)
    After an invite is stored; C{links} is a dict (C{uri}, C{landing}, C{token})
    a callback may change, e.g. to point C{landing} elsewhere.
C{invite-used} (invite, username, path)
    After an invite was spent: a registration, a reset, or (path C{contact},
    username then the contact's JID) a pre-authorised subscription.
C{invite-expired} (invite)
    Synchronous. The hourly sweep found this invite expired (never fully
    used) and is about to delete it.
C{invite-preauth} (stream, token) -> Deferred[Invite] or None
    A token presented on an unauthenticated stream: reserve its invite for
    the stream (C{host.registrar.reservations.hold}) or fail with a
    C{StanzaError}, after waiting on C{stream.tokenRefused()} when the token
    was not valid (it is counted and logged, and throttled per address).
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable
from typing import Any

from twisted.internet import defer


class Hooks:
    """
    A registry of named hooks. Each hook's callbacks, in order, are kept
    ready (a tuple, made again when one is added or removed): several hooks
    run for every connection and stanza. C{version} changes with every
    addition and removal, for what is made from the callbacks' answers.
    """

    def __init__(self) -> None:
        self._hooks: dict[str, list[tuple[int, int, Callable]]] = {}
        self._ordered: dict[str, tuple[Callable, ...]] = {}
        self._counter = 0
        self.version = 0

    def add(self, name: str, callback: Callable, priority: int = 0) -> None:
        """Run C{callback} when hook C{name} fires; higher priorities run first."""
        self._counter += 1
        self.version += 1
        insort(self._hooks.setdefault(name, []), (-priority, self._counter, callback))
        self._ordered[name] = tuple(entry[2] for entry in self._hooks[name])

    def remove(self, name: str, callback: Callable) -> None:
        self.version += 1
        self._hooks[name] = [entry for entry in self._hooks.get(name, []) if entry[2] != callback]
        self._ordered[name] = tuple(entry[2] for entry in self._hooks[name])

    def callbacks(self, name: str) -> tuple[Callable, ...]:
        """The callbacks of hook C{name}, in the order they run (a snapshot: hooks may change meanwhile)."""
        return self._ordered.get(name, ())

    def run(self, name: str, *args: Any) -> list[Any]:
        """Run the callbacks synchronously and return their results."""
        return [callback(*args) for callback in self.callbacks(name)]

    def first(self, name: str, *args: Any) -> Any:
        """Return the first result that is not None, running callbacks until then."""
        for callback in self.callbacks(name):
            result = callback(*args)
            if result is not None:
                return result
        return None

    @defer.inlineCallbacks
    def fire(self, name: str, *args: Any):
        """Run the callbacks one after the other, waiting on each; fire with their results."""
        results = []
        for callback in self.callbacks(name):
            results.append((yield defer.maybeDeferred(callback, *args)))
        return results
