"""
Registration limits per client address, as Prosody's mod_register_limits
has them: a blocklist, an allowlist (exempt from the throttle, or the only
addresses allowed with C{allowlist_registration_only}), and a throttle of
C{registration_throttle_max} accounts per C{registration_throttle_period}
with at least C{min_seconds_between_registrations} between two.

It vetoes through the registrar's C{user-registering} hook, so in-band
registration and the web form are both held to it; an admin's own actions
(command line, admin API) are trusted and exempt. Only registrations that
succeed count against the throttle: a typo in a form costs nothing. A refused
attempt keeps its invite reserved on the stream, and the invite stays usable.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque

from invitesrv.config import ConfigError
from invitesrv.modules.base import HostModule
from invitesrv.registrar import Registration, RegistrationError

THROTTLED = "Too many registrations from this IP address recently"


def parseNetworks(entries, key: str) -> tuple:
    """Addresses or CIDR networks from the config, checked once at start."""
    try:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def inNetworks(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


class RegisterLimitsModule(HostModule):
    """Vetoes registrations from blocked or too eager addresses."""

    name = "register_limits"
    hooks = (("user-registering", "check", 10), ("user-registered", "record"))
    maxAddresses = 10_000  # remembered addresses; the oldest are forgotten first

    def connectionInitialized(self):
        options = self.parent.options
        self.allowlist = parseNetworks(options.registration_allowlist, "registration_allowlist")
        self.blocklist = parseNetworks(options.registration_blocklist, "registration_blocklist")
        self.history: OrderedDict[str, deque[float]] = OrderedDict()
        HostModule.connectionInitialized(self)

    def _window(self) -> float:
        options = self.parent.options
        return max(options.registration_throttle_period, options.min_seconds_between_registrations)

    def _recent(self, address: str) -> deque[float]:
        """The address's registrations still inside the throttle window."""
        history = self.history.get(address)
        if history is None:
            return deque()
        horizon = self.parent.now() - self._window()
        while history and history[0] <= horizon:
            history.popleft()
        if not history:
            del self.history[address]
        return history

    def check(self, registration: Registration) -> None:
        if registration.trusted:
            return
        options = self.parent.options
        address = registration.address
        if inNetworks(address, self.blocklist):
            raise RegistrationError("forbidden", "Your IP address is blocklisted", "auth")
        allowed = inNetworks(address, self.allowlist)
        if options.allowlist_registration_only and not allowed:
            raise RegistrationError("forbidden", "Your IP address is not allowlisted", "auth")
        if allowed:
            return
        recent = self._recent(address)
        now = self.parent.now()
        minimum = options.min_seconds_between_registrations
        tooSoon = minimum and recent and now - recent[-1] < minimum
        tooMany = options.registration_throttle_max and len(
            [t for t in recent if t > now - options.registration_throttle_period]
        ) >= options.registration_throttle_max
        if tooSoon or tooMany:
            raise RegistrationError("policy-violation", THROTTLED, "wait")

    def record(self, registration: Registration) -> None:
        if registration.trusted or not registration.address:
            return
        self.remember(registration.address, self.parent.now())

    def remember(self, address: str, when: float) -> None:
        """Count a registration from C{address} at C{when} (here, or on another node of a cluster)."""
        history = self.history.pop(address, None) or deque()
        history.append(when)
        self.history[address] = history
        while len(self.history) > self.maxAddresses:
            self.history.popitem(last=False)
