"""
XEP-0077 in-band registration end to end: one real server with three virtual
hosts (open registration, invite-only, none), raw XML for the exact answers
of the error table, and slixmpp's xep_0077 plugin for the whole life of an
account (register, log in, change the password, remove the account).
"""

from __future__ import annotations

import re

import pytest
from rawxmpp import RawClient
from slix import Client, run

OPEN = "localhost"
CLOSED = "closed.test"
NONE = "none.test"

CONFIG = f"""
[hosts.{OPEN}]
allow_registration = true
registration_invite_only = false
[hosts."{CLOSED}"]
[hosts."{NONE}"]
allow_registration = false
registration_invite_only = false
"""

FEATURE = "<register xmlns='http://jabber.org/features/iq-register'/>"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import RunningServer
    running = RunningServer(tmp_path_factory.mktemp("register"), CONFIG)
    running.start()
    running.adduser(f"taken@{OPEN}", "a long password")
    yield running
    running.stop()


def reply(client: RawClient, iqid: str) -> str:
    """The next reply to iq C{iqid}, as text."""
    return client.recvUntil(rf"<iq [^>]*id='{iqid}'[^>]*(/>|>.*?</iq>)")


def submit(client: RawClient, username: str, password: str, iqid: str = "reg") -> str:
    client.send(f"<iq type='set' id='{iqid}'><query xmlns='jabber:iq:register'>"
                f"<username>{username}</username><password>{password}</password></query></iq>")
    return reply(client, iqid)


def errorText(text: str) -> str:
    match = re.search(r"<text[^>]*>(.*?)</text>", text, re.DOTALL)
    return match.group(1) if match else ""


def test_featureOnlyAfterTLS(server):
    """The IBR feature is hidden on plaintext (encryption is required) and shown after STARTTLS."""
    with RawClient(server.port, OPEN) as client:
        plain = client.openStream()
        assert "starttls" in plain and FEATURE not in plain
    with RawClient(server.port, OPEN) as client:
        assert FEATURE in client.startTLS()


def test_featureOnlyWhereRegistrationIsPossible(server):
    """Invite-only hosts advertise IBR (invites are on); a host without registration does not."""
    with RawClient(server.port, CLOSED) as client:
        assert FEATURE in client.startTLS()
    with RawClient(server.port, NONE) as client:
        features = client.startTLS()
        assert FEATURE not in features
        client.send("<iq type='get' id='f'><query xmlns='jabber:iq:register'/></iq>")
        assert "<service-unavailable" in reply(client, "f")


def test_plaintextRefused(server):
    """IBR on a plaintext stream, where encryption is required: policy-violation, nothing created."""
    with RawClient(server.port, OPEN) as client:
        client.openStream()
        answer = submit(client, "plainuser", "a long password")
        assert "type='error'" in answer and "<policy-violation" in answer
        assert "type='modify'" in answer and errorText(answer) == "Encryption is required"
    assert "plainuser@localhost" not in server.ctl("users", OPEN).stdout


def test_form(server):
    """The form has the legacy fields and a data form with FORM_TYPE jabber:iq:register."""
    with RawClient(server.port, OPEN) as client:
        client.startTLS()
        client.send(f"<iq type='get' id='f' to='{OPEN}'><query xmlns='jabber:iq:register'/></iq>")
        form = reply(client, "f")
    assert "type='result'" in form and f"from='{OPEN}'" in form
    assert "<username/>" in form and "<password/>" in form
    assert ("<instructions>Choose a username and password for use with this service."
            "</instructions>") in form
    assert re.search(r"<field type='hidden' var='FORM_TYPE'><value>jabber:iq:register</value>", form)
    assert re.search(r"var='username'[^>]*><required/>", form)
    assert re.search(r"type='text-private' var='password'", form)


@pytest.mark.parametrize(("username", "password", "condition", "text"), [
    ("", "", "not-acceptable", "Username: Required value missing\nPassword: Required value missing"),
    ("someone", "", "not-acceptable", "Password: Required value missing"),
    ("a b", "a long password", "not-acceptable", "The requested username is invalid."),
    ("a@b", "a long password", "not-acceptable", "The requested username is invalid."),
    ("x" * 1100, "a long password", "not-acceptable", "The requested username is invalid."),
    ("TAKEN", "a long password", "conflict", "The requested username already exists."),
    ("longpw", "p" * 2000, "not-acceptable", "Password is too long (maximum 1024 characters)"),
    ("shortpw", "short", "not-acceptable", "Password is too short (minimum 8 characters)"),
])
def test_errorTable(server, username, password, condition, text):
    """Each refused submission gets the condition and text of the error table."""
    with RawClient(server.port, OPEN) as client:
        client.startTLS()
        answer = submit(client, username, password)
    assert "type='error'" in answer and f"<{condition} " in answer, answer
    assert errorText(answer) == text


def test_removeUnauthenticated(server):
    """<remove/> before authentication: auth/registration-required."""
    with RawClient(server.port, OPEN) as client:
        client.startTLS()
        client.send("<iq type='set' id='rm'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        answer = reply(client, "rm")
    assert "<registration-required " in answer and "type='auth'" in answer


def test_inviteOnlyWithoutInvite(server):
    """On an invite-only host a submission without a preauth is refused with Prosody's words."""
    with RawClient(server.port, CLOSED) as client:
        client.startTLS()
        answer = submit(client, "stranger", "a long password")
    assert "<not-acceptable " in answer and "type='modify'" in answer
    assert errorText(answer) == "Registration on this server is through invitation only"


def test_dataFormRegistrationAndLogin(server):
    """A data-form submission creates the account; it logs in with SCRAM; the name is then taken."""
    with RawClient(server.port, OPEN) as client:
        client.startTLS()
        client.send("<iq type='set' id='df'><query xmlns='jabber:iq:register'>"
                    "<x xmlns='jabber:x:data' type='submit'>"
                    "<field var='FORM_TYPE'><value>jabber:iq:register</value></field>"
                    "<field var='username'><value>FormUser</value></field>"
                    "<field var='password'><value>form password</value></field></x></query></iq>")
        assert re.search(r"<iq [^>]*type='result'", reply(client, "df"))
        again = submit(client, "formuser", "other password", "df2")
        assert "<conflict " in again
    with RawClient(server.port, OPEN) as client:
        assert client.login("formuser", "form password") == "formuser@localhost/raw"


def test_authenticatedForm(server):
    """
    A user sees jabber:iq:register in the host's disco#info; asking for the
    form, they are told they are registered, with their name; they cannot
    change another account's password.
    """
    server.adduser(f"regd@{OPEN}", "a long password")
    with RawClient(server.port, OPEN) as client:
        client.login("regd", "a long password")
        client.send(f"<iq type='get' id='d' to='{OPEN}'>"
                    "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        assert "<feature var='jabber:iq:register'/>" in reply(client, "d")
        client.send("<iq type='get' id='g'><query xmlns='jabber:iq:register'/></iq>")
        answer = reply(client, "g")
        assert "<registered/>" in answer and "<username>regd</username>" in answer
        client.send("<iq type='set' id='s'><query xmlns='jabber:iq:register'>"
                    "<username>taken</username><password>stolen password</password></query></iq>")
        answer = reply(client, "s")
        assert "<not-allowed " in answer
    with RawClient(server.port, OPEN) as client:
        assert client.login("taken", "a long password")


def test_slixmppAccountLifecycle(server):
    """
    slixmpp's xep_0077 registers an account in-band, logs in, changes its
    password (the old one then fails, the new one works) and removes the
    account (the stream is closed and the account can no longer log in).
    """
    address = f"slixuser@{OPEN}"

    async def scenario():
        registering = Client(address, "first password", plugins=("xep_0030", "xep_0004",
                                                                   "xep_0066", "xep_0077"))
        registering.plugin["xep_0077"].force_registration = True
        registered = registering.loop.create_future()

        async def onRegister(form):
            iq = registering.Iq()
            iq["type"] = "set"
            iq["register"]["username"] = registering.boundjid.user
            iq["register"]["password"] = registering.password
            try:
                await iq.send(timeout=10)
                registered.set_result(True)
            except Exception as e:  # noqa: BLE001 - any failure is the test's answer
                registered.set_result(e)

        registering.add_event_handler("register", onRegister)
        assert await registering.login(server.port)
        assert await registered is True
        await registering.plugin["xep_0077"].change_password("second password", timeout=10)
        await registering.logout()

        old = Client(address, "first password")
        assert not await old.login(server.port)
        await old.logout()

        user = Client(address + "/phone", "second password", plugins=("xep_0030", "xep_0004",
                                                                      "xep_0066", "xep_0077"))
        assert await user.login(server.port)
        await user.plugin["xep_0077"].cancel_registration(timeout=10)
        await user.logout()

        gone = Client(address, "second password")
        assert not await gone.login(server.port)
        await gone.logout()

    run(scenario())
    assert address not in server.ctl("users", OPEN).stdout


def test_noErrorsLogged(server):
    """Everything above was answered without an unhandled error in the server log."""
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log
