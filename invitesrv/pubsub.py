"""
The XEP-0060 pieces of a personal pubsub service (XEP-0163 PEP) that are
not about who hears what: node options, their data forms, and errors.

A node's options are a small dict (C{access_model}, C{max_items}, ...), kept
in the store as JSON. They are read from a C{pubsub#node_config} form (a
configure request) or a C{pubsub#publish-options} form (publish-options,
XEP-0060 section 7.1.5) with one checker, so the two cannot disagree on
what a value means. C{max_items} is a number or C{"max"}: the most the
server allows (its C{max_items} option).
"""

from __future__ import annotations

import json

from twisted.words.protocols.jabber import error
from twisted.words.xish import domish
from wokkel import data_form

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = NS_PUBSUB + "#owner"
NS_EVENT = NS_PUBSUB + "#event"
NS_ERRORS = NS_PUBSUB + "#errors"
NS_CONFIG = NS_PUBSUB + "#node_config"
NS_PUBLISH_OPTIONS = NS_PUBSUB + "#publish-options"
NS_DATA = "jabber:x:data"

ACCESS_MODELS = ("open", "presence", "roster", "whitelist")
SEND_LAST = ("never", "on_sub", "on_sub_and_presence")
BOOLEANS = {"1": True, "true": True, "0": False, "false": False}

DEFAULTS = {
    "access_model": "presence",
    "max_items": 1,
    "persist_items": True,
    "send_last_published_item": "on_sub_and_presence",
    "notify_retract": True,
    "notify_delete": True,
    "deliver_payloads": True,
    "deliver_notifications": True,
    "roster_groups_allowed": [],
    "title": "",
    "type": "",
    "publish_model": "publishers",
}
BOOLEAN_OPTIONS = frozenset(name for name, value in DEFAULTS.items() if isinstance(value, bool))

# The features an account's bare JID lists (what clients look for before publishing).
FEATURES = (NS_PUBSUB,) + tuple(f"{NS_PUBSUB}#{name}" for name in (
    "access-open", "access-presence", "access-roster", "access-whitelist", "auto-create",
    "auto-subscribe", "config-node", "create-and-configure", "create-nodes", "delete-items",
    "delete-nodes", "filtered-notifications", "item-ids", "last-published", "multi-items",
    "persistent-items", "presence-notifications", "publish", "publish-options", "purge-nodes",
    "retract-items", "retrieve-affiliations", "retrieve-default", "retrieve-items",
    "retrieve-subscriptions"))


def pubsubError(condition: str, pubsubCondition: str | None = None, text: str | None = None,
                feature: str | None = None) -> error.StanzaError:
    """A stanza error, with a C{pubsub#errors} condition when given (XEP-0060 section 7)."""
    appCondition = None
    if pubsubCondition is not None:
        appCondition = domish.Element((NS_ERRORS, pubsubCondition))
        if feature is not None:
            appCondition["feature"] = feature
    return error.StanzaError(condition, text=text, appCondition=appCondition)


def formValues(parent: domish.Element, formNamespace: str) -> dict[str, list[str]] | None:
    """
    The fields of the data form of type C{formNamespace} in C{parent}, each
    with its values; None if there is no such form.
    """
    for form in parent.elements(NS_DATA, "x"):
        fields = {}
        for field in form.elements(NS_DATA, "field"):
            fields[field.getAttribute("var", "")] = [str(v) for v in field.elements(NS_DATA, "value")]
        if fields.pop("FORM_TYPE", [None])[0] == formNamespace:
            return fields
    return None


def checkOptions(fields: dict[str, list[str]], maxItems: int) -> dict:
    """
    The node options a form's C{pubsub#...} fields set, checked; a
    C{not-acceptable} error naming the field for a value the server does
    not take. Fields this server does not know are left out.
    """
    options = {}
    for var, values in fields.items():
        if not var.startswith("pubsub#"):
            continue
        name, value = var[len("pubsub#"):], values[0] if values else ""
        if name not in DEFAULTS:
            continue
        if name in BOOLEAN_OPTIONS:
            if value.lower() not in BOOLEANS:
                raise pubsubError("not-acceptable", text=f"{var}: expected a boolean, not {value!r}")
            options[name] = BOOLEANS[value.lower()]
        elif name == "access_model":
            if value not in ACCESS_MODELS:
                raise pubsubError("not-acceptable", "unsupported-access-model",
                                  text=f"{var}: one of {', '.join(ACCESS_MODELS)}")
            options[name] = value
        elif name == "send_last_published_item":
            if value not in SEND_LAST:
                raise pubsubError("not-acceptable", text=f"{var}: one of {', '.join(SEND_LAST)}")
            options[name] = value
        elif name == "max_items":
            options[name] = parseMaxItems(value, maxItems)
        elif name == "roster_groups_allowed":
            options[name] = sorted(set(values))
        elif name == "publish_model":
            if value != "publishers":
                raise pubsubError("not-acceptable", text=f"{var}: only 'publishers' (the owner)")
            options[name] = value
        else:
            options[name] = value
    return options


def parseMaxItems(value: str, maxItems: int) -> int | str:
    """C{pubsub#max_items}: C{"max"} or a number from 1 to C{maxItems}."""
    if value == "max":
        return value
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 1 <= number <= maxItems:
        raise pubsubError("not-acceptable", text=f"pubsub#max_items: 'max' or 1 to {maxItems},"
                          f" not {value!r}")
    return number


def optionsForm(options: dict, formNamespace: str = NS_CONFIG, formType: str = "form") -> domish.Element:
    """A data form of C{options} (a configure or default answer)."""
    form = data_form.Form(formType, formNamespace=formNamespace)
    for name, value in options.items():
        var = f"pubsub#{name}"
        if isinstance(value, bool):
            form.addField(data_form.Field("boolean", var, value=value))
        elif isinstance(value, list):
            form.addField(data_form.Field("list-multi", var, values=value))
        elif name == "access_model":
            form.addField(data_form.Field("list-single", var, value=value, options=[
                data_form.Option(model) for model in ACCESS_MODELS]))
        else:
            form.addField(data_form.Field("text-single", var, value=str(value)))
    return form.toElement()


def dumpOptions(options: dict) -> str:
    """The options as the store keeps them."""
    return json.dumps(options, sort_keys=True)


def loadOptions(text: str) -> dict:
    """Stored options over today's defaults (an option added later gets its default)."""
    return {**DEFAULTS, **json.loads(text)}
