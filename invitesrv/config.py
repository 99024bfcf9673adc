"""
Configuration: a TOML file turned into frozen, validated dataclasses.

Every option has a default, so an empty file (or no file) is a working
server for C{localhost}. A wrong option stops start-up with a L{ConfigError}
naming the key and the file. C{conf/invitesrv.example.toml} documents every
option; C{tests/test_config.py} checks that the example and these defaults
agree.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from twisted.internet import endpoints
from twisted.words.protocols.jabber import jid

from invitesrv.logs import LEVELS

DEFAULT_MODULES = (
    "roster",
    "presence",
    "offline",
    "disco",
    "ping",
    "version",
    "time",
    "adhoc",
    "adhoc_admin",
    "register",
    "register_limits",
    "invites",
    "invites_register",
    "invites_adhoc",
    "watchdog",
    "carbons",
    "csi",
    "blocking",
    "sasl2",
    "bind2",
    "fast",
    "mam",
    "pep",
    "vcard",
    "private",
    "smacks",
    "push",
    "upload",
    "external_services",
    "muc",
    "circles",
)
ARCHIVE_POLICIES = ("always", "never", "roster")  # XEP-0441 defaults


class ConfigError(Exception):
    """A configuration value is wrong; the message names the key and the file."""


class Duration(float):
    """
    A number of seconds, written in the config as a number or as a string such
    as C{"90s"}, C{"15m"}, C{"1h"}, C{"7d"} or C{"4w"}.
    """

    _UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 30, '15m', '7d'")
        if isinstance(value, (int, float)):
            if value < 0:
                raise ValueError("a duration cannot be negative")
            return cls(value)
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", value)
            if match:
                return cls(float(match.group(1)) * cls._UNITS[match.group(2) or "s"])
        raise ValueError(f"expected a duration such as 30, '15m', '7d', not {value!r}")


@dataclass(frozen=True)
class HostOptions:
    """Options of one virtual host; C{[host_defaults]} sets them for every host."""

    admins: tuple[str, ...] = ()
    allow_registration: bool = False
    registration_invite_only: bool = True
    offline_max_messages: int = 500
    offline_max_message_size: int = 262_144
    max_pending_subscriptions: int = 200
    subscription_request_max_size: int = 4096
    password_min_length: int = 8
    password_max_length: int = 1024
    # Invites.
    invite_expiry: Duration = Duration(7 * 86400)
    reset_invite_expiry: Duration = Duration(86400)
    allow_contact_invites: bool = True
    allow_user_invites: bool = False
    max_pending_invites: int = 20
    invitee_invite_delay: Duration = Duration(0)
    invites_page: str = ""
    site_name: str = ""
    notify_inviter: bool = True
    welcome_message: str = ""
    invite_reminder: Duration = Duration(86400)
    # Registration throttle (per client address).
    min_seconds_between_registrations: Duration = Duration(0)
    registration_throttle_max: int = 0
    registration_throttle_period: Duration = Duration(3600)
    registration_allowlist: tuple[str, ...] = ("127.0.0.1", "::1")
    registration_blocklist: tuple[str, ...] = ()
    allowlist_registration_only: bool = False
    # Message archive (XEP-0313, the mam module).
    archive_expires_after: Duration = Duration(7 * 86400)
    archive_default_policy: str = "always"
    archive_max_items: int = 10_000
    archive_max_page: int = 50
    archive_sweep_interval: Duration = Duration(3600)


@dataclass(frozen=True)
class Limits:
    """Per-connection limits that protect the server from hostile peers."""

    stanza_size_preauth: int = 10_000
    stanza_size: int = 262_144
    auth_timeout: Duration = Duration(30)
    max_depth: int = 100
    max_attributes: int = 64
    max_attribute_length: int = 8192
    # Reading and writing (bytes per second; 0: no limit).
    read_rate_preauth: int = 10_000
    read_burst_preauth: int = 50_000
    read_rate: int = 200_000
    read_burst: int = 1_000_000
    send_buffer: int = 1_048_576
    send_timeout: Duration = Duration(60)
    # Idle connections.
    idle_timeout: Duration = Duration(300)
    ping_timeout: Duration = Duration(60)
    tcp_keepalive: Duration = Duration(600)
    # Connections (0: no limit); the allowlist is exempt from the per-address ones.
    max_connections: int = 10_000
    max_connections_per_address: int = 100
    connection_rate: int = 10
    connection_burst: int = 50
    allowlist: tuple[str, ...] = ("127.0.0.1", "::1")
    # The HTTP listeners' own connection caps (0: no limit), so that HTTP cannot
    # take the XMPP listeners' share, and deadlines for a request's head and body.
    http_max_connections: int = 1000
    http_max_connections_per_address: int = 50
    http_connection_rate: int = 10
    http_connection_burst: int = 50
    http_header_timeout: Duration = Duration(20)
    http_body_timeout: Duration = Duration(30)
    # An upload's body (XEP-0363) may take one second more per this many bytes.
    http_upload_min_rate: int = 16_384
    # Failed authentications and invite tokens.
    auth_failures_free: int = 5
    auth_failures_block: int = 30
    auth_delay_max: Duration = Duration(30)
    auth_failure_window: Duration = Duration(900)
    token_failures_free: int = 5
    token_failures_block: int = 30
    # The store.
    store_busy_timeout: Duration = Duration(5)
    metrics_interval: Duration = Duration(3600)


@dataclass(frozen=True)
class ComponentOptions:
    """
    A subdomain service of a host (C{[hosts."HOST".components.NAME]} serves
    C{NAME.HOST}): either C{modules} run in this server, or an external
    XEP-0114 component that connects to C{[listen] component} with C{secret}.
    """

    modules: tuple[str, ...] = ()
    secret: str = ""


MIN_COMPONENT_SECRET = 16  # characters: the secret is all that proves an external component


DEFAULT_S2S_PORT = 5269

# Mozilla's "intermediate" TLS 1.2 suites, forward-secret AEAD only (its
# DHE suites left out), and its groups: the defaults of [tls] ciphers, groups.
TLS_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
               "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
               "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
TLS_GROUPS = "X25519:P-256:P-384"


DNS_PORT = 53


def parseHostPort(text: str, defaultPort: int = DEFAULT_S2S_PORT) -> tuple[str, int]:
    """
    C{"host:port"}, C{"[v6address]:port"} or a bare C{"host"} (port
    C{defaultPort}), as C{[s2s] hosts} and C{dns_servers} values are written.
    """
    host, port = text.strip(), defaultPort
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not host:port")
        host, portText = inside, rest[1:]
    elif host.count(":") == 1:
        host, portText = host.split(":")
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address as [address]:port")
    else:
        portText = ""
    if portText:
        if not portText.isdigit() or not 0 < int(portText) < 65536:
            raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
        port = int(portText)
    if not host or any(c.isspace() or c in "/@" for c in host):
        raise ValueError(f"{text!r} is not host:port")
    return host, port


STORE_BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class StoreOptions:
    """
    C{[store]}: where accounts and everything else are kept. SQLite (a file
    in the data dir) serves one node; PostgreSQL, at C{dsn}, several.
    """

    backend: str = "sqlite"
    dsn: str = ""


def _store(table: object, source: str) -> StoreOptions:
    """The C{[store]} table, checked: a backend this server has, and a DSN for PostgreSQL only."""
    options = buildTable(StoreOptions, table, "store", source)
    if options.backend not in STORE_BACKENDS:
        raise ConfigError(f"{source}: store.backend: expected one of {', '.join(STORE_BACKENDS)},"
                          f" not {options.backend!r}")
    if options.backend == "postgresql" and not options.dsn:
        raise ConfigError(f"{source}: store.dsn: the postgresql backend needs the database's"
                          " address (e.g. \"host=/run/postgresql dbname=invitesrv\")")
    if options.backend == "sqlite" and options.dsn:
        raise ConfigError(f"{source}: store.dsn is for the postgresql backend; the sqlite"
                          " database is in the data dir")
    return options


@dataclass(frozen=True)
class FederationOptions:
    """
    Server-to-server options (the C{[s2s]} table). Federation itself is on
    when C{[listen] s2s} names at least one listener: a peer proving its
    name by dialback must be able to connect back.
    """

    hosts: dict[str, tuple[str, int]] = field(default_factory=dict)
    dns_servers: tuple[str, ...] = ()
    fallback_port: int = DEFAULT_S2S_PORT
    connect_timeout: Duration = Duration(30)
    idle_timeout: Duration = Duration(600)
    require_encryption: bool = True
    require_valid_certificates: bool = False
    trust: str = ""
    max_queued: int = 1000
    # Stanzas per second from one remote domain, and at once (0: no limit).
    stanza_rate: int = 100
    stanza_burst: int = 1000

    @property
    def dnsServers(self) -> list[tuple[str, int]]:
        """C{dns_servers} as (address, port) pairs; empty: the system's resolv.conf."""
        return [parseHostPort(server, DNS_PORT) for server in self.dns_servers]


@dataclass(frozen=True)
class ClusterOptions:
    """
    Cluster mode (the C{[cluster]} table, L{invitesrv.cluster}): nodes that
    serve the same domains with the same config and store, coordinated
    through Redis. Off unless C{enabled}.
    """

    enabled: bool = False
    redis: str = "redis://127.0.0.1:6379/0"
    node: str = ""  # this node's name, unique in the cluster; empty: the host name
    ttl: Duration = Duration(15)  # a silent node's sessions expire after this
    roster_settle: Duration = Duration(1)  # a roster changed elsewhere is read again this late
    resume_timeout: Duration = Duration(5)  # a node asked for a session to resume answers within


@dataclass(frozen=True)
class Config:
    """The whole server configuration."""

    hosts: dict[str, HostOptions] = field(default_factory=lambda: {"localhost": HostOptions()})
    data_dir: Path = Path("data")
    c2s: tuple[str, ...] = ("tcp:5222",)
    c2s_direct_tls: tuple[str, ...] = ()
    s2s: tuple[str, ...] = ()
    http: tuple[str, ...] = ()
    https: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    component: tuple[str, ...] = ()
    public_url: str = ""
    trusted_proxies: tuple[str, ...] = ()
    app_catalogue: str = ""
    hide_apps: tuple[str, ...] = ()
    hsts_max_age: Duration = Duration(365 * 86400)
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    tls_certificates: Path | None = None
    tls_ciphers: str = TLS_CIPHERS
    tls_groups: str = TLS_GROUPS
    tls_resumption: Duration = Duration(12 * 3600)
    require_encryption: bool = True
    scram_iterations: int = 4096
    log_level: str = "info"
    modules: tuple[str, ...] = DEFAULT_MODULES
    # [modules.NAME] tables, and [hosts."x".modules.NAME] by host: checked against the
    # module's options schema when it is loaded (invitesrv.host.moduleOptions).
    module_options: dict[str, dict] = field(default_factory=dict)
    host_module_options: dict[str, dict[str, dict]] = field(default_factory=dict)
    limits: Limits = Limits()
    federation: FederationOptions = FederationOptions()
    store: StoreOptions = StoreOptions()
    # host -> component domain -> its options, from [hosts."HOST".components.NAME]
    components: dict[str, dict[str, ComponentOptions]] = field(default_factory=dict)
    cluster: ClusterOptions = ClusterOptions()
    source: str = "<defaults>"

    @property
    def certificatePath(self) -> Path:
        """Where the certificate is read from (or generated, if unset)."""
        return self.tls_certificate or self.data_dir / "tls" / "server.crt"

    @property
    def keyPath(self) -> Path:
        return self.tls_key or self.data_dir / "tls" / "server.key"

    @property
    def certificatesDir(self) -> Path:
        """The per-host certificates (C{<host>/fullchain.pem} and C{privkey.pem}, as certbot)."""
        return self.tls_certificates or self.data_dir / "tls"

    @property
    def databasePath(self) -> Path:
        return self.data_dir / "invitesrv.sqlite3"


# Keys of the top-level tables and where they go in Config.
_SERVER_KEYS = {"data_dir", "require_encryption", "scram_iterations", "log_level", "modules",
                "public_url", "trusted_proxies", "app_catalogue", "hide_apps", "hsts_max_age"}
_LISTEN_KEYS = {"c2s", "c2s_direct_tls", "s2s", "http", "https", "metrics", "component"}
_TLS_KEYS = {"certificate": "tls_certificate", "key": "tls_key", "ciphers": "tls_ciphers",
             "groups": "tls_groups", "certificates": "tls_certificates",
             "resumption": "tls_resumption"}


def _convert(value: object, annotation: object, key: str) -> object:
    """Check C{value} against a dataclass field's type and convert it."""
    if annotation is Duration:
        return Duration.parse(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected a whole number")
        if value < 0:
            raise ValueError("expected a number of 0 or more")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    if annotation == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        return tuple(value)
    if annotation == Path or annotation == (Path | None):
        if not isinstance(value, str) or not value:
            raise ValueError("expected a file or directory path")
        return Path(value)
    raise ValueError(f"unsupported option type {annotation!r}")  # pragma: no cover


def _fieldTypes(cls: type) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def buildTable(cls: type, table: object, where: str, source: str, base: object = None):
    """Build dataclass C{cls} from a TOML table, every key checked."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{where}] must be a table")
    types = _fieldTypes(cls)
    values = {}
    for key, value in table.items():
        if key not in types:
            raise ConfigError(f"{source}: unknown option {where}.{key}")
        try:
            values[key] = _convert(value, types[key], key)
        except ValueError as e:
            raise ConfigError(f"{source}: {where}.{key}: {e}") from None
    return replace(base, **values) if base is not None else cls(**values)


def _checkHostOptions(options: HostOptions, where: str, source: str) -> HostOptions:
    """Host options that take one of a few words take one of them."""
    if options.archive_default_policy not in ARCHIVE_POLICIES:
        raise ConfigError(f"{source}: {where}.archive_default_policy: expected one of"
                          f" {', '.join(ARCHIVE_POLICIES)}, not {options.archive_default_policy!r}")
    return options


def _checkHostName(name: str, source: str) -> str:
    try:
        prepared = jid.JID(name)
    except Exception:
        prepared = None
    if prepared is None or prepared.user or prepared.resource or not name:
        raise ConfigError(f"{source}: hosts.{name!r} is not a valid domain name")
    return prepared.host


def checkEndpoint(description: str, where: str) -> str:
    """
    Parse a listener's endpoint string now, so a typo stops start-up with
    the option's name rather than a traceback from the listener.
    """
    try:
        endpoints.serverFromString(None, description)
    except (ValueError, TypeError) as e:
        hint = ""
        if description.count(":") > 2 and "\\:" not in description:
            hint = " (write colons inside a value as \\:, e.g. interface=\\:\\:)"
        raise ConfigError(f"{where}: {description!r} is not a valid endpoint: {e}{hint}") from None
    return description


def _checkAdmins(host: str, options: HostOptions, source: str) -> HostOptions:
    admins = []
    for admin in options.admins:
        try:
            adminJID = jid.JID(admin)
        except (jid.InvalidFormat, UnicodeError):
            adminJID = None
        if adminJID is None or not adminJID.user:
            raise ConfigError(f"{source}: hosts.{host}.admins: {admin!r} is not an account JID"
                              " (user@host)")
        admins.append(adminJID.userhost())
    return replace(options, admins=tuple(admins))


def _federation(table: object, source: str) -> FederationOptions:
    """The C{[s2s]} table; its C{hosts} map (domain -> "host:port") is checked here."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [s2s] must be a table")
    rest = dict(table)
    hosts = rest.pop("hosts", {})
    if not isinstance(hosts, dict):
        raise ConfigError(f"{source}: s2s.hosts must be a table of domain = \"host:port\"")
    options = buildTable(FederationOptions, rest, "s2s", source)
    routes = {}
    for name, address in hosts.items():
        try:
            domain = jid.JID(name)
        except (jid.InvalidFormat, UnicodeError):
            domain = None
        if domain is None or domain.user or domain.resource:
            raise ConfigError(f"{source}: s2s.hosts: {name!r} is not a domain name")
        if not isinstance(address, str):
            raise ConfigError(f"{source}: s2s.hosts.{name}: expected a string \"host:port\"")
        try:
            routes[domain.host] = parseHostPort(address)
        except ValueError as e:
            raise ConfigError(f"{source}: s2s.hosts.{name}: {e}") from None
    for server in options.dns_servers:
        try:
            address, _ = parseHostPort(server, DNS_PORT)
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"{source}: s2s.dns_servers: {server!r} is not an IP address with an"
                              " optional port") from None
    if not 0 < options.fallback_port < 65536:
        raise ConfigError(f"{source}: s2s.fallback_port must be a port number from 1 to 65535")
    if options.trust and not Path(options.trust).is_file():
        raise ConfigError(f"{source}: s2s.trust: {options.trust!r} is not a readable file")
    return replace(options, hosts=routes)


def _cluster(table: object, source: str) -> ClusterOptions:
    """The C{[cluster]} table: a Redis URL that parses, a node name without spaces."""
    from invitesrv.cluster.redis import parseURL
    options = buildTable(ClusterOptions, table, "cluster", source)
    try:
        parseURL(options.redis)
    except ValueError as e:
        raise ConfigError(f"{source}: cluster.redis: {e}") from None
    if options.node and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", options.node):
        raise ConfigError(f"{source}: cluster.node: {options.node!r} is not a node name"
                          " (letters, digits, '.', '_' and '-')")
    if options.ttl < 3:
        raise ConfigError(f"{source}: cluster.ttl must be at least 3 seconds")
    if options.enabled:
        try:
            import hiredis  # noqa: F401
        except ImportError:
            raise ConfigError(f"{source}: cluster.enabled needs the hiredis package"
                              " (pip install 'invitesrv[cluster]')") from None
    return options


def _components(host: str, table: object, source: str) -> dict[str, ComponentOptions]:
    """The C{components} table of host C{host}: subdomain name -> its options, checked."""
    where = f"hosts.{host}.components"
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{where}] must be a table of subdomain names")
    components = {}
    for name, options in table.items():
        domain = _checkHostName(f"{name}.{host}", source)
        if not name or "." in name:
            raise ConfigError(f"{source}: {where}: {name!r} is not a subdomain label")
        options = buildTable(ComponentOptions, options, f"{where}.{name}", source)
        if bool(options.modules) == bool(options.secret):
            raise ConfigError(f"{source}: {where}.{name}: give either modules (served here) or"
                              " secret (an external component), not both or neither")
        if "disco" in options.modules:
            raise ConfigError(f"{source}: {where}.{name}.modules: leave out 'disco': every"
                              " component answers disco for itself")
        if options.secret and len(options.secret) < MIN_COMPONENT_SECRET:
            raise ConfigError(f"{source}: {where}.{name}.secret: use at least"
                              f" {MIN_COMPONENT_SECRET} characters")
        components[domain] = options
    return components


def _moduleTables(table: object, where: str, source: str) -> dict[str, dict]:
    """The C{[modules.NAME]} tables under C{where}, each a table (checked by its module later)."""
    if not isinstance(table, dict) or not all(isinstance(t, dict) for t in table.values()):
        raise ConfigError(f"{source}: [{where}] must hold one table per module, [{where}.NAME]")
    return dict(table)


def parseConfig(data: dict, source: str = "<config>") -> Config:
    """Turn a parsed TOML document into a L{Config}."""
    known = {"server", "listen", "tls", "limits", "s2s", "host_defaults", "hosts", "modules",
             "store", "cluster"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: unknown section or option {key!r}")

    values: dict[str, object] = {"source": source}
    types = _fieldTypes(Config)

    def take(section: str, mapping: dict[str, str]) -> None:
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key, value in table.items():
            if key not in mapping:
                raise ConfigError(f"{source}: unknown option {section}.{key}")
            target = mapping[key]
            try:
                values[target] = _convert(value, types[target], key)
            except ValueError as e:
                raise ConfigError(f"{source}: {section}.{key}: {e}") from None

    take("server", {k: k for k in _SERVER_KEYS})
    take("listen", {k: k for k in _LISTEN_KEYS})
    take("tls", _TLS_KEYS)
    if "limits" in data:
        values["limits"] = buildTable(Limits, data["limits"], "limits", source)
    if "s2s" in data:
        values["federation"] = _federation(data["s2s"], source)
    if "store" in data:
        values["store"] = _store(data["store"], source)
    if "cluster" in data:
        values["cluster"] = _cluster(data["cluster"], source)
        if values["cluster"].enabled and values.get("store", StoreOptions()).backend == "sqlite":
            # Each node's start would free the others' invite reservations, and
            # a file serves one machine: the nodes share a PostgreSQL store.
            raise ConfigError(f"{source}: cluster.enabled needs the postgresql store that every"
                              " node shares ([store] backend = \"postgresql\" and dsn)")

    defaults = _checkHostOptions(
        buildTable(HostOptions, data.get("host_defaults", {}), "host_defaults", source),
        "host_defaults", source)
    hostTables = data.get("hosts", {"localhost": {}})
    if not isinstance(hostTables, dict) or not hostTables:
        raise ConfigError(f"{source}: [hosts] must name at least one virtual host")
    hosts = {}
    components = {}
    hostModules = {}
    for name, table in hostTables.items():
        host = _checkHostName(name, source)
        if isinstance(table, dict) and ("components" in table or "modules" in table):
            table = dict(table)
            if "components" in table:
                components[host] = _components(host, table.pop("components"), source)
            if "modules" in table:
                hostModules[host] = _moduleTables(table.pop("modules"), f"hosts.{name}.modules",
                                                  source)
        options = _checkHostOptions(buildTable(HostOptions, table, f"hosts.{name}", source,
                                               base=defaults), f"hosts.{name}", source)
        hosts[host] = _checkAdmins(host, options, source)
    values["hosts"] = hosts
    values["components"] = components
    domains = [domain for served in components.values() for domain in served]
    for domain in domains:
        if domain in hosts or domains.count(domain) > 1:
            raise ConfigError(f"{source}: the component domain {domain} is served twice")
    values["host_module_options"] = hostModules
    values["module_options"] = _moduleTables(data.get("modules", {}), "modules", source)

    config = Config(**values)
    loaded = set(config.modules).union(*(options.modules for served in components.values()
                                         for options in served.values()))
    for where, tables in [("modules", config.module_options)] + [
            (f"hosts.{host}.modules", tables) for host, tables in hostModules.items()]:
        for name in tables:
            if name not in loaded:
                raise ConfigError(f"{source}: [{where}.{name}]: module {name!r} is not in"
                                  " server.modules nor a component's modules")
    if config.scram_iterations < 4096:
        raise ConfigError(f"{source}: server.scram_iterations must be at least 4096")
    if config.log_level not in LEVELS:
        raise ConfigError(f"{source}: server.log_level: expected one of {', '.join(LEVELS)},"
                          f" not {config.log_level!r}")
    for entry in config.limits.allowlist:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"{source}: limits.allowlist: {entry!r} is not an address"
                              " or network") from None
    for key in sorted(_LISTEN_KEYS):
        for description in getattr(config, key):
            checkEndpoint(description, f"{source}: listen.{key}")
    if bool(config.tls_certificate) != bool(config.tls_key):
        raise ConfigError(f"{source}: tls.certificate and tls.key go together")
    for proxy in config.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"{source}: server.trusted_proxies: {proxy!r} is not an address"
                              " or network") from None
    return config


def loadConfig(path: str | Path | None) -> Config:
    """Read the TOML file at C{path}, or return the defaults when it is None."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parseConfig(data, str(path))


def withOverrides(
    config: Config,
    dataDir: str | None = None,
    domains: typing.Sequence[str] = (),
    c2s: typing.Sequence[str] = (),
    s2s: typing.Sequence[str] = (),
    admins: typing.Sequence[str] = (),
    http: typing.Sequence[str] = (),
    publicURL: str | None = None,
) -> Config:
    """Apply the command-line overrides (C{--data-dir}, C{--domain}, ...)."""
    changes: dict[str, object] = {}
    source = "command line"
    if dataDir:
        changes["data_dir"] = Path(dataDir)
    hosts = dict(config.hosts)
    if domains:
        template = next(iter(config.hosts.values()))
        hosts = {}
        for name in domains:
            host = _checkHostName(name, source)
            hosts[host] = config.hosts.get(host, template)
    if admins:
        for admin in admins:
            try:
                adminJID = jid.JID(admin)
            except Exception:
                raise ConfigError(f"{source}: --admin {admin!r} is not a JID") from None
            if not adminJID.user or adminJID.host not in hosts:
                raise ConfigError(f"{source}: --admin {admin!r} is not an account of a served host")
            options = hosts[adminJID.host]
            if adminJID.userhost() not in options.admins:
                hosts[adminJID.host] = replace(options, admins=options.admins + (adminJID.userhost(),))
    changes["hosts"] = hosts
    if c2s:
        changes["c2s"] = tuple(checkEndpoint(d, f"{source}: --c2s") for d in c2s)
    if s2s:
        changes["s2s"] = tuple(checkEndpoint(d, f"{source}: --s2s") for d in s2s)
    if http:
        changes["http"] = tuple(checkEndpoint(d, f"{source}: --http") for d in http)
    if publicURL:
        changes["public_url"] = publicURL
    return dataclasses.replace(config, **changes)
