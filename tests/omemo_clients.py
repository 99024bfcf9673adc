"""
Two slixmpp-omemo clients (XEP-0384: legacy OMEMO and OMEMO 2), romeo and
juliet, log in to the test server at the port given, publish their device
lists and bundles, and juliet sends romeo an encrypted message, which he
decrypts. Prints one JSON line: romeo's device id, the decrypted text, its
sender, and whether the plaintext was visible in the stanza on the wire.
Run by C{test_pep_e2e.py} in a process of its own.
"""

from __future__ import annotations

import asyncio
import json
import sys

import omemo
from slixmpp import JID
from slixmpp.plugins import register_plugin
from slixmpp_omemo import XEP_0384

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from slix import Client  # noqa: E402

TEXT = "Wherefore art thou"


class MemoryStorage(omemo.storage.Storage):
    """OMEMO state kept in a dict for the life of the client."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict = {}

    async def _load(self, key):
        if key in self.data:
            return omemo.storage.Just(self.data[key])
        return omemo.storage.Nothing()

    async def _store(self, key, value):
        self.data[key] = value

    async def _delete(self, key):
        self.data.pop(key, None)


class TestOmemo(XEP_0384):
    """XEP-0384 with blind trust before verification, as Conversations does by default."""

    default_config = {"fallback_message": "This message is OMEMO encrypted."}

    def plugin_init(self) -> None:
        self.memory = MemoryStorage()
        super().plugin_init()

    @property
    def storage(self):
        return self.memory

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(self, blindly_trusted, identifier):
        """Nothing to tell anyone."""

    async def _prompt_manual_trust(self, manually_trusted, identifier):
        raise AssertionError("blind trust is on: no manual decision is asked")


def omemoClient(address: str, password: str) -> Client:
    """A slixmpp client with OMEMO, whose C{initialized} fires once its keys are published."""
    client = Client(address, password, plugins=("xep_0030", "xep_0060", "xep_0115", "xep_0163",
                                                 "xep_0199", "xep_0280", "xep_0334"))
    client.register_plugin("xep_0384", module=sys.modules[__name__])
    client.initialized = asyncio.get_event_loop().create_future()
    client.add_event_handler("omemo_initialized",
                             lambda _: client.initialized.done() or client.initialized.set_result(True))
    return client


async def scenario(port: int, password: str) -> dict:
    romeo, juliet = omemoClient("romeo@localhost", password), omemoClient("juliet@localhost", password)
    received = asyncio.get_event_loop().create_future()
    romeo.add_event_handler("message", lambda msg: received.done() or (
        romeo["xep_0384"].is_encrypted(msg) and received.set_result(msg)))
    for client in (romeo, juliet):
        assert await client.login(port)
    await asyncio.wait_for(asyncio.gather(romeo.initialized, juliet.initialized), 60)
    manager = await romeo["xep_0384"].get_session_manager()
    romeoDevice = (await manager.get_own_device_information())[0].device_id
    message = juliet.make_message(mto="romeo@localhost", mtype="chat")
    message["body"] = TEXT
    encrypted, errors = await juliet["xep_0384"].encrypt_message(message, JID("romeo@localhost"))
    assert not errors, errors
    encrypted.send()
    stanza = await asyncio.wait_for(received, 30)
    plain, sender = await romeo["xep_0384"].decrypt_message(stanza)
    for client in (romeo, juliet):
        await client.logout()
    return {"romeoDevice": romeoDevice, "decrypted": plain["body"], "sender": sender.bare_jid,
            "plaintextOnWire": TEXT in str(stanza)}


if __name__ == "__main__":
    register_plugin(TestOmemo, name="xep_0384")
    result = asyncio.run(asyncio.wait_for(scenario(int(sys.argv[1]), sys.argv[2]), 150))
    print(json.dumps(result))
