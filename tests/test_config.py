"""
Configuration: the example file is the documentation, so it is checked
against the dataclasses (every option present, with its real default); wrong
values stop start-up with a message naming the key and the file; the
command-line overrides of C{twistd invitesrv} apply on top of the file.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import TWISTD
from hypothesis import given
from hypothesis import strategies as st
from twisted.python import usage

from invitesrv.config import (
    Config,
    ConfigError,
    Duration,
    HostOptions,
    loadConfig,
    parseConfig,
    withOverrides,
)
from invitesrv.tap import Options

EXAMPLE = Path(__file__).resolve().parent.parent / "conf" / "invitesrv.example.toml"
OPTION_LINE = re.compile(r"^#(?=[a-z][a-z0-9_]* = )", re.MULTILINE)

# Config fields that are not options of a [server]/[listen]/[tls] table.
STRUCTURE = {"hosts", "components", "source", "module_options", "host_module_options"}
# Config fields that hold a table of their own, and that table's name.
TABLES = {"limits": "limits", "federation": "s2s", "cluster": "cluster"}


def documentedOptions() -> dict[str, dict[str, object]]:
    """The example with every "#name = value" line uncommented, parsed: section -> options."""
    return tomllib.loads(OPTION_LINE.sub("", EXAMPLE.read_text("utf-8")))


def writeConfig(directory: Path, text: str, name: str = "invitesrv.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def configError(directory: Path, text: str) -> str:
    """The message of the L{ConfigError} that loading C{text} raises."""
    path = writeConfig(directory, text)
    with pytest.raises(ConfigError) as caught:
        loadConfig(path)
    message = str(caught.value)
    assert str(path) in message, message
    return message


# -- the example file --------------------------------------------------------


def test_exampleAsShippedIsTheDefaults():
    """The example, with everything commented out, is a working default config."""
    config = loadConfig(EXAMPLE)
    assert dataclasses.replace(config, source="<defaults>") == Config()


def test_exampleDocumentsEveryOption():
    """Every dataclass field has a "#name = value" line in its section of the example."""
    documented = documentedOptions()
    defaults = Config()
    missing = []
    for field in dataclasses.fields(Config):
        default = getattr(defaults, field.name)
        if field.name in STRUCTURE:
            continue
        if dataclasses.is_dataclass(default):
            table = TABLES.get(field.name, field.name)
            missing += [f"{table}.{f.name}" for f in dataclasses.fields(default)
                        if f.name not in documented.get(table, {})]
            continue
        if field.name.startswith("tls_"):
            if field.name[len("tls_"):] not in documented["tls"]:
                missing.append(f"tls.{field.name[len('tls_'):]}")
        elif field.name not in documented["server"] and field.name not in documented["listen"]:
            missing.append(f"server.{field.name} or listen.{field.name}")
    missing += [f"host_defaults.{f.name}" for f in dataclasses.fields(HostOptions)
                if f.name not in documented["host_defaults"]]
    assert not missing, f"options missing from {EXAMPLE.name}: {missing}"


def test_exampleShowsTheDefaultValues():
    """
    Uncommenting every option line gives exactly the defaults, except the
    certificate, key and certificates directory, which are unset by default and
    shown with example paths.
    """
    config = parseConfig(documentedOptions(), str(EXAMPLE))
    assert None not in (config.tls_certificate, config.tls_key, config.tls_certificates)
    shown = dataclasses.replace(config, tls_certificate=None, tls_key=None, tls_certificates=None,
                                source="<defaults>")
    defaults = Config()
    for field in dataclasses.fields(Config):
        assert getattr(shown, field.name) == getattr(defaults, field.name), field.name
    assert Config().tls_certificate is None and Config().tls_key is None
    assert Config().tls_certificates is None


def test_exampleHostDefaultsApplyToHosts():
    """A [host_defaults] value reaches every host, and a host table overrides it."""
    config = parseConfig({"host_defaults": {"offline_max_messages": 7},
                          "hosts": {"localhost": {}, "example.org": {"offline_max_messages": 9}}})
    assert config.hosts["localhost"].offline_max_messages == 7
    assert config.hosts["example.org"].offline_max_messages == 9


# -- errors name the key and the file ----------------------------------------


def test_unknownOption(tmp_path):
    """A misspelt option is refused, not ignored."""
    assert "server.requre_encryption" in configError(tmp_path, "[server]\nrequre_encryption = true\n")
    assert "limits.stanza_sise" in configError(tmp_path, "[limits]\nstanza_sise = 1\n")
    assert "hosts.localhost.admin" in configError(tmp_path, '[hosts."localhost"]\nadmin = []\n')
    assert "'listener'" in configError(tmp_path, "[listener]\nc2s = []\n")


def test_wrongType(tmp_path):
    """A value of the wrong type names the key and what was expected."""
    message = configError(tmp_path, '[server]\nrequire_encryption = "yes"\n')
    assert "server.require_encryption" in message and "true or false" in message
    message = configError(tmp_path, '[listen]\nc2s = "tcp:5222"\n')
    assert "listen.c2s" in message and "list of strings" in message
    message = configError(tmp_path, "[limits]\nstanza_size = -1\n")
    assert "limits.stanza_size" in message
    message = configError(tmp_path, "[host_defaults]\noffline_max_messages = 1.5\n")
    assert "host_defaults.offline_max_messages" in message and "whole number" in message


def test_badDuration(tmp_path):
    """A duration must be a number or a number with one unit letter."""
    message = configError(tmp_path, '[host_defaults]\ninvite_expiry = "7 days"\n')
    assert "host_defaults.invite_expiry" in message and "'7 days'" in message
    message = configError(tmp_path, "[limits]\nauth_timeout = -5\n")
    assert "limits.auth_timeout" in message and "negative" in message
    assert "limits.auth_timeout" in configError(tmp_path, "[limits]\nauth_timeout = true\n")


def test_badHostName(tmp_path):
    """A host table must be named after a domain, not an account or a phrase."""
    assert "'alice@example.org'" in configError(tmp_path, '[hosts."alice@example.org"]\n')
    assert "'exa mple.org'" in configError(tmp_path, '[hosts."exa mple.org"]\n')
    assert "at least one" in configError(tmp_path, "hosts = {}\n")


def test_badAdminJID(tmp_path):
    """An admin must be an account address; "alice" alone is a domain, not an admin."""
    for admin in ("alice@", "a@b@c", "alice"):
        message = configError(tmp_path, f'[hosts."localhost"]\nadmins = ["{admin}"]\n')
        assert "hosts.localhost.admins" in message and repr(admin) in message


def test_adminsArePrepared(tmp_path):
    """Admin JIDs are stringprepped and reduced to the bare JID."""
    config = loadConfig(writeConfig(tmp_path, '[host_defaults]\nadmins = ["Alice@LocalHost/phone"]\n'))
    assert config.hosts["localhost"].admins == ("alice@localhost",)


def test_otherChecks(tmp_path):
    """Rules across options, and files that are not TOML or not there."""
    assert "4096" in configError(tmp_path, "[server]\nscram_iterations = 1000\n")
    assert "server.log_level: expected one of debug, info, warn, error, critical, not 'loud'" in \
        configError(tmp_path, '[server]\nlog_level = "loud"\n')
    assert "go together" in configError(tmp_path, '[tls]\ncertificate = "a.pem"\n')
    assert "not valid TOML" in configError(tmp_path, "[server\n")
    with pytest.raises(ConfigError, match="nowhere.toml: cannot read"):
        loadConfig(tmp_path / "nowhere.toml")


@given(st.integers(0, 10**6), st.sampled_from([("", 1), ("s", 1), ("m", 60), ("h", 3600),
                                                ("d", 86400), ("w", 604800)]))
def test_durationUnits(number, unit):
    """Every unit multiplies: "15m" is 900 seconds."""
    suffix, seconds = unit
    assert Duration.parse(f"{number}{suffix}") == number * seconds
    assert Duration.parse(number) == number


# -- command-line overrides ----------------------------------------------------


def test_overrides():
    """--data-dir, --domain, --c2s, --s2s and --admin replace or extend the file's values."""
    base = parseConfig({"host_defaults": {"offline_max_messages": 3}})
    config = withOverrides(base, dataDir="/srv/xmpp", domains=["Example.org"],
                           c2s=["tcp:5223"], s2s=["tcp:5269"], admins=["Boss@example.org"])
    assert config.data_dir == Path("/srv/xmpp")
    assert list(config.hosts) == ["example.org"]
    assert config.hosts["example.org"].offline_max_messages == 3
    assert config.hosts["example.org"].admins == ("boss@example.org",)
    assert config.c2s == ("tcp:5223",)
    assert config.s2s == ("tcp:5269",)
    assert withOverrides(base) == base


def test_tapOptions(tmp_path):
    """The twistd options load the file and apply the overrides in postOptions."""
    path = writeConfig(tmp_path, '[listen]\nc2s = ["tcp:5999"]\ns2s = ["tcp:5998"]\n')
    options = Options()
    options.parseOptions(["--config", str(path), "--data-dir", str(tmp_path / "d"),
                          "--domain", "chat.example", "--domain", "localhost",
                          "--admin", "root@chat.example", "--c2s", "tcp:0",
                          "--s2s", "tcp:5269:interface=\\:\\:", "--s2s", "tcp:5270"])
    config = options.config
    assert config.source == str(path)
    assert config.data_dir == tmp_path / "d"
    assert sorted(config.hosts) == ["chat.example", "localhost"]
    assert config.hosts["chat.example"].admins == ("root@chat.example",)
    assert config.hosts["localhost"].admins == ()
    assert config.c2s == ("tcp:0",)
    assert config.s2s == ("tcp:5269:interface=\\:\\:", "tcp:5270")


def test_federationDNSOptions():
    """[s2s] dns_servers are addresses with optional ports (53); fallback_port is a port."""
    options = parseConfig({"s2s": {"dns_servers": ["127.0.0.1:5353", "[::1]", "192.0.2.53"],
                                   "fallback_port": 5999}}).federation
    assert options.dnsServers == [("127.0.0.1", 5353), ("::1", 53), ("192.0.2.53", 53)]
    assert options.fallback_port == 5999
    assert parseConfig({}).federation.dnsServers == []
    assert parseConfig({}).federation.fallback_port == 5269
    for table, expected in (({"dns_servers": ["dns.example.org"]}, "'dns.example.org' is not an IP"),
                            ({"dns_servers": ["::1:53"]}, "s2s.dns_servers"),
                            ({"dns_servers": "127.0.0.1"}, "list of strings"),
                            ({"fallback_port": 0}, "s2s.fallback_port must be a port"),
                            ({"fallback_port": 70000}, "s2s.fallback_port must be a port")):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            parseConfig({"s2s": table})


def test_tapOptionsRefuse(tmp_path):
    """Wrong overrides and wrong files are usage errors with the reason."""
    with pytest.raises(usage.UsageError, match="--admin 'root@elsewhere' is not an account of a"):
        Options().parseOptions(["--admin", "root@elsewhere"])
    with pytest.raises(usage.UsageError, match="--admin 'localhost' is not an account"):
        Options().parseOptions(["--admin", "localhost"])
    with pytest.raises(usage.UsageError, match="'a b' is not a valid domain"):
        Options().parseOptions(["--domain", "a b"])
    with pytest.raises(usage.UsageError, match="--s2s: 'tcp:notaport' is not a valid endpoint"):
        Options().parseOptions(["--s2s", "tcp:notaport"])
    path = writeConfig(tmp_path, "[limits]\nauth_timeout = 'soon'\n")
    with pytest.raises(usage.UsageError, match=re.escape(f"{path}: limits.auth_timeout")):
        Options().parseOptions(["--config", str(path)])


def test_twistdStopsOnBadConfig(tmp_path):
    """
    twistd with a wrong config exits non-zero before listening, and says
    which key of which file is wrong.
    """
    for text, key in (("[server]\nbogus = 1\n", "server.bogus"),
                      ("[limits]\nauth_timeout = 'soon'\n", "limits.auth_timeout"),
                      ('[server]\nmodules = ["roster", "nosuchmodule"]\n', "server.modules")):
        path = writeConfig(tmp_path, text, "bad.toml")
        result = subprocess.run([TWISTD, "-n", "--pidfile=", "invitesrv", "--config", str(path)],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert str(path) in output and key in output, output
        assert "listening" not in output


def test_storeBackend(tmp_path):
    """[store] names a backend this server has; PostgreSQL needs a DSN, SQLite takes none."""
    assert Config().store.backend == "sqlite"
    config = loadConfig(writeConfig(tmp_path, '[store]\nbackend = "postgresql"\ndsn = "dbname=x"\n'))
    assert (config.store.backend, config.store.dsn) == ("postgresql", "dbname=x")
    assert "store.backend" in configError(tmp_path, '[store]\nbackend = "mysql"\n')
    assert "store.dsn" in configError(tmp_path, '[store]\nbackend = "postgresql"\n')
    assert "store.dsn" in configError(tmp_path, '[store]\ndsn = "dbname=x"\n')
