"""
The reader of Prosody's stored Lua tables: what Prosody's own serializer
writes (checked against the real C{util.serialization} when Debian's Prosody
and Lua are installed) reads back exactly; anything else, code first, is
refused with a line and column, and hostile shapes (deep nesting, unfinished
strings, huge files) end in a clear error, never in a crash or a long wait.
"""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import pytest

from invitesrv import prosodydata
from invitesrv.luatable import MAX_DEPTH, LuaSyntaxError, loadList, loadRecord, sequence

LUA = Path("/usr/bin/lua5.4")
SERIALIZATION = Path("/usr/lib/prosody/util/serialization.lua")

ROSTER = rb"""return {
	[false] = {
		["version"] = 6;
		["pending"] = {};
	};
	["j\195\188rgen@prosody.test"] = {
		["name"] = "J\195\188rgen \"the\" \x41\t";
		["groups"] = {
			["Family"] = true;
		};
		["subscription"] = "both";
	};
};
"""


def test_prosodyRoster():
    """A roster file as Prosody 0.12 writes it: boolean key, escapes, nested tables."""
    roster = loadRecord(ROSTER)
    assert roster[False] == {"version": 6, "pending": {}}
    item = roster["jürgen@prosody.test"]
    assert item == {"name": 'Jürgen "the" A\t', "groups": {"Family": True}, "subscription": "both"}


def test_listItems():
    """An archive (.list): item() calls, each with a stanza in preserialized form."""
    items = loadList(b'item({\n\t{\n\t\t"hi";\n\t\t["name"] = "body";\n\t\t["attr"] = {};\n\t};\n'
                     b'\t["name"] = "message";\n\t["when"] = 1796313574.5;\n});\n'
                     b'item({["name"] = "message"; ["when"] = 17;});\n')
    assert len(items) == 2
    assert items[0]["when"] == 1796313574.5 and sequence(items[0]) == [
        {1: "hi", "name": "body", "attr": {}}]
    assert loadList(b"") == []


def test_numbers():
    assert loadRecord(b"return { 1; -7; 1.5; 1.00000000000000003e-300; 2e10; (1/0); (-1/0) };") == {
        1: 1, 2: -7, 3: 1.5, 4: 1e-300, 5: 2e10, 6: math.inf, 7: -math.inf}
    assert math.isnan(loadRecord(b"return (0/0);"))


def test_binaryStringsKeepTheirBytes():
    """A salt with any bytes: back to the same bytes through surrogateescape."""
    value = loadRecord(b'return "\\000\\255\\xff\\1272";')
    assert value.encode("utf-8", "surrogateescape") == b"\x00\xff\xff\x7f2"


@pytest.mark.skipif(not (LUA.exists() and SERIALIZATION.exists()),
                    reason="Lua 5.4 and Prosody are not installed (apt-get install -y prosody)")
def test_roundTripThroughProsodysSerializer():
    """Whatever Prosody's own util.serialization writes, of every byte, reads back exactly."""
    script = """
    package.path = "/usr/lib/prosody/?.lua;" .. package.path
    package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath
    local serialize = require "util.serialization".serialize
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    io.write("return " .. serialize({ bytes = table.concat(all), [false] = { version = 3 },
      1.5, -7, big = 2^53, tiny = 1e-300, inf = math.huge, nested = { { { "deep" } } },
      yes = true, no = false, [10] = "ten", [2.5] = "float key", ["with space"] = "x" }) .. ";\\n")
    """
    output = subprocess.run([str(LUA), "-"], input=script.encode(), capture_output=True,
                            check=True, timeout=30).stdout
    value = loadRecord(output)
    assert value["bytes"].encode("utf-8", "surrogateescape") == bytes(range(256))
    assert value[False] == {"version": 3}
    assert (value[1], value[2], value[10], value[2.5]) == (1.5, -7, "ten", "float key")
    assert value["big"] == 2 ** 53 and value["tiny"] == 1e-300 and value["inf"] == math.inf
    assert value["nested"] == {1: {1: {1: "deep"}}}
    assert (value["yes"], value["no"], value["with space"]) == (True, False, "x")


@pytest.mark.parametrize("data", [
    b'return os.execute("rm -rf /");',
    b"return { [1] = os.getenv('HOME') };",
    b"return { function() end };",
    b"return { a = 1 };",  # an unquoted key: not what Prosody's storage writes
    b'return "a" .. "b";',
    b"return { 1 } ; os.exit()",
    b"return {{}; [{}] = 1};",
    b'return "\\q";',
    b'return "\\256";',
    b'return "line\nbreak";',
    b'return "unfinished',
    b"return { 1; 2",
    b"return { [1] = 1; 2 };",  # the same key twice
    b"return 0x10;",
    b"return nil;",
    b"returnx {};",
    b"",
    b'item({}); os.execute("id")',
])
def test_codeAndJunkRefused(data):
    """Nothing but data: names, calls, operators and malformed values are refused."""
    loader = loadList if data.startswith(b"item") else loadRecord
    with pytest.raises(LuaSyntaxError):
        loader(data)


def test_errorSaysWhere():
    with pytest.raises(LuaSyntaxError, match=r"roster\.dat:3:10: expected a string, number"):
        loadRecord(b'return {\n\t["a"] = 1;\n\t["b"] = os.time();\n};', "roster.dat")


def test_deepNestingRefused():
    """Nesting past the limit is an error, not a RecursionError or a crash."""
    assert loadRecord(b"return " + b"{" * MAX_DEPTH + b"}" * MAX_DEPTH + b";") is not None
    deep = b"return " + b"{" * 100_000 + b"}" * 100_000 + b";"
    with pytest.raises(LuaSyntaxError, match="nested deeper"):
        loadRecord(deep)
    with pytest.raises(LuaSyntaxError, match="nested deeper"):
        loadRecord(b"return {[" + b"{" * 100_000 + b"] = 1};")


def test_hugeStringsReadInLinearTime():
    """
    A 32 MB string reads at C speed; escapes cost one dictionary look-up each
    (about a microsecond here: 8 MB of them take seconds, not minutes).
    """
    started = time.monotonic()
    assert len(loadRecord(b'return "' + b"x" * (32 << 20) + b'";')) == 32 << 20
    assert time.monotonic() - started < 10
    started = time.monotonic()
    assert len(loadRecord(b'return "' + b"\\255" * (1 << 20) + b'";')) == 1 << 20
    assert time.monotonic() - started < 20


def test_oversizedFileRefused(tmp_path, monkeypatch):
    """The importer reads no file over its size limit."""
    path = tmp_path / "big.dat"
    path.write_bytes(b'return "' + b"x" * 2000 + b'";')
    monkeypatch.setattr(prosodydata, "MAX_FILE_SIZE", 1000)
    with pytest.raises(prosodydata.ProsodyDataError, match="more than the 1000"):
        prosodydata.readFile(path)
    path.write_bytes(b'return { os.execute("id") };')
    with pytest.raises(prosodydata.ProsodyDataError, match="not Prosody data"):
        prosodydata.readFile(path)


@pytest.mark.parametrize(("name", "encoded"), [
    ("alice", "alice"), ("jürgen", "j%c3%bcrgen"), ("prosody.test", "prosody%2etest"),
    ("bücher.test", "b%c3%bccher%2etest"), ("a_b-c", "a%5fb%2dc")])
def test_fileNames(name, encoded):
    """Prosody's %-encoding of host and user names, both ways."""
    assert prosodydata.encodeName(name) == encoded
    assert prosodydata.decodeName(encoded) == name
