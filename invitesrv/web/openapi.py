"""
The OpenAPI 3 description of the admin API, served at C{/api/v1/openapi.json}
so that clients can be generated and requests checked against it.
"""

from __future__ import annotations

import invitesrv


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(schema: str, description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _body(schema: str, required: bool = True) -> dict:
    return {"required": required,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


UNAUTHORIZED = _error("No API key, or a wrong one")
FORBIDDEN = _error("The key belongs to a host this server does not serve")
BAD_REQUEST = _error("The input is not valid")
NOT_FOUND = _error("No such object on the key's host")

INVITE_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
USERNAME = {"name": "username", "in": "path", "required": True, "schema": {"type": "string"}}
CIRCLE = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}

USES = {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "enum": ["unlimited"]}]}

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error", "message"],
        "properties": {"error": {"type": "string", "example": "not-found"},
                       "message": {"type": "string"}},
    },
    "Invite": {
        "type": "object",
        "properties": {
            "id": {"type": "string"}, "host": {"type": "string"},
            "type": {"type": "string", "enum": ["account", "contact", "reset"]},
            "status": {"type": "string", "enum": ["pending", "used", "expired", "revoked"]},
            "username": {"type": "string", "nullable": True},
            "inviter": {"type": "string", "nullable": True},
            "allow_registration": {"type": "boolean"},
            "uses_allowed": USES, "uses": {"type": "integer"}, "reserved": {"type": "integer"},
            "created": {"type": "string", "format": "date-time"},
            "expires": {"type": "string", "format": "date-time"},
            "revoked": {"type": "string", "format": "date-time", "nullable": True},
            "roles": {"type": "array", "items": {"type": "string"}},
            "groups": {"type": "array", "items": {"type": "string"}},
            "room": {"type": "string", "nullable": True},
            "note": {"type": "string"}, "source": {"type": "string"},
            "welcome": {"type": "string"},
            "used_by": {"type": "array", "items": {"type": "object", "properties": {
                "username": {"type": "string"}, "at": {"type": "string", "format": "date-time"},
                "path": {"type": "string"}, "address": {"type": "string"}}}},
        },
    },
    "Joined": {
        "type": "object",
        "properties": {
            "invite": {"type": "string"},
            "inviter": {"type": "string", "nullable": True,
                        "description": "The local user the invite came from, if any"},
            "joined": {"type": "array", "items": {"type": "object", "properties": {
                "username": {"type": "string"}, "jid": {"type": "string"},
                "at": {"type": "string", "format": "date-time"},
                "path": {"type": "string", "description": "How: ibr (an app) or web"}}}},
        },
    },
    "CreatedInvite": {
        "allOf": [{"$ref": "#/components/schemas/Invite"}, {
            "type": "object", "properties": {
                "token": {"type": "string", "description": "shown only in this answer"},
                "uri": {"type": "string", "example": "xmpp:example.org?register;preauth=TOKEN"},
                "landing_url": {"type": "string", "nullable": True}}}],
    },
    "NewInvite": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "type": {"type": "string", "enum": ["account", "contact", "reset"],
                     "default": "account"},
            "username": {"type": "string",
                         "description": "account: the only username it creates; reset: the account"},
            "inviter": {"type": "string", "description": "contact: the local user to add"},
            "allow_registration": {"type": "boolean", "default": False,
                                   "description": "contact: also creates an account"},
            "uses": USES,
            "expires_in": {"type": "number", "minimum": 1, "maximum": 31536000},
            "roles": {"type": "array", "items": {"type": "string"}},
            "note": {"type": "string", "maxLength": 1000},
            "welcome": {"type": "string", "maxLength": 1000,
                        "description": "account, contact: shown on the landing page and sent"
                                       " to the new account from its creator"},
            "room": {"type": "string", "description": "contact: a persistent room the inviter"
                                                      " owns, into which the redeemer is invited"},
            "circles": {"type": "array", "items": {"type": "string"},
                        "description": "account invites: circles the new account joins"},
        },
    },
    "Circle": {
        "type": "object",
        "properties": {
            "name": {"type": "string"}, "room": {"type": "string", "description": "its group chat"},
            "members": {"type": "array", "items": {"type": "string"}},
            "created": {"type": "string", "format": "date-time"}},
    },
    "InviteChanges": {
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "properties": {
            "expires": {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]},
            "expires_in": {"type": "number", "minimum": 1, "maximum": 31536000},
            "uses": USES, "note": {"type": "string", "maxLength": 1000},
        },
    },
    "ResetOptions": {
        "type": "object", "additionalProperties": False,
        "properties": {"expires_in": {"type": "number", "minimum": 1, "maximum": 31536000},
                       "note": {"type": "string", "maxLength": 1000}},
    },
    "TokenCheck": {
        "type": "object", "required": ["valid"],
        "properties": {"valid": {"type": "boolean"},
                       "type": {"type": "string", "enum": ["account", "contact", "reset"]},
                       "host": {"type": "string"}, "allow_registration": {"type": "boolean"},
                       "expires": {"type": "string", "format": "date-time"}},
    },
}


def openAPIDocument() -> dict:
    """The OpenAPI 3.0 document of C{/api/v1}."""
    secured = [{"apiKey": []}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "invitesrv admin API", "version": invitesrv.__version__,
                 "description": "Invites and accounts of the host an API key belongs to. "
                                "Keys: invitesrvctl apikey create HOST."},
        "servers": [{"url": "/api/v1"}],
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "KEYID.SECRET"}},
            "schemas": SCHEMAS,
        },
        "paths": {
            "/invites": {
                "get": {
                    "summary": "List invites", "security": secured,
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {
                            "type": "string", "enum": ["pending", "used", "expired", "revoked"]}},
                        {"name": "inviter", "in": "query", "schema": {"type": "string"},
                         "description": "a username or bare JID: invites that user created"}],
                    "responses": {"200": {"description": "The invites, newest first", "content": {
                        "application/json": {"schema": {"type": "object", "properties": {
                            "invites": {"type": "array", "items": {
                                "$ref": "#/components/schemas/Invite"}}}}}}},
                        "400": BAD_REQUEST, "401": UNAUTHORIZED, "403": FORBIDDEN},
                },
                "post": {
                    "summary": "Create an invite", "security": secured,
                    "requestBody": _body("NewInvite"),
                    "responses": {"201": _json("CreatedInvite", "Created; the only time the "
                                                                "token is shown"),
                                  "400": BAD_REQUEST, "401": UNAUTHORIZED, "403": FORBIDDEN,
                                  "409": _error("Refused by the invite rules (the account "
                                                "exists, the username is held, ...)"),
                                  "413": _error("Body too large"),
                                  "415": _error("Not application/json")},
                },
            },
            "/invites/{id}": {
                "parameters": [INVITE_ID],
                "get": {"summary": "One invite, with its uses", "security": secured,
                        "responses": {"200": _json("Invite", "The invite"),
                                      "401": UNAUTHORIZED, "403": FORBIDDEN, "404": NOT_FOUND}},
                "patch": {"summary": "Change expiry, uses or note", "security": secured,
                          "requestBody": _body("InviteChanges"),
                          "responses": {"200": _json("Invite", "The changed invite"),
                                        "400": BAD_REQUEST, "401": UNAUTHORIZED,
                                        "403": FORBIDDEN, "404": NOT_FOUND,
                                        "410": _error("The invite was revoked")}},
                "delete": {"summary": "Revoke a pending invite", "security": secured,
                           "responses": {"204": {"description": "Revoked"},
                                         "401": UNAUTHORIZED, "403": FORBIDDEN,
                                         "404": NOT_FOUND,
                                         "410": _error("Not pending: used, expired or revoked")}},
            },
            "/invites/{id}/joined": {
                "parameters": [INVITE_ID],
                "get": {"summary": "Who joined through the invite, and when", "security": secured,
                        "responses": {"200": _json("Joined", "The accounts made with the invite,"
                                                             " oldest first"),
                                      "401": UNAUTHORIZED, "403": FORBIDDEN, "404": NOT_FOUND}},
            },
            "/users": {
                "get": {"summary": "List accounts", "security": secured,
                        "responses": {"200": {"description": "The accounts", "content": {
                            "application/json": {"schema": {"type": "object", "properties": {
                                "users": {"type": "array", "items": {"type": "object",
                                                                     "properties": {
                                    "username": {"type": "string"},
                                    "jid": {"type": "string"}}}}}}}}},
                            "401": UNAUTHORIZED, "403": FORBIDDEN}},
            },
            "/users/{username}": {
                "parameters": [USERNAME],
                "delete": {"summary": "Delete an account and all it owns", "security": secured,
                           "responses": {"204": {"description": "Deleted"},
                                         "401": UNAUTHORIZED, "403": FORBIDDEN,
                                         "404": NOT_FOUND}},
            },
            "/users/{username}/reset": {
                "parameters": [USERNAME],
                "post": {"summary": "Create a password-reset invite", "security": secured,
                         "requestBody": _body("ResetOptions", required=False),
                         "responses": {"201": _json("CreatedInvite", "Created"),
                                       "400": BAD_REQUEST, "401": UNAUTHORIZED,
                                       "403": FORBIDDEN, "404": NOT_FOUND}},
            },
            "/uploads": {
                "get": {"summary": "Upload usage (XEP-0363) per account: files kept, their bytes,"
                                   " slots not used yet", "security": secured,
                        "responses": {"200": {"description": "Accounts with uploads", "content": {
                            "application/json": {"schema": {"type": "object", "properties": {
                                "uploads": {"type": "array", "items": {"type": "object",
                                                                       "properties": {
                                    "username": {"type": "string"},
                                    "jid": {"type": "string"},
                                    "files": {"type": "integer"},
                                    "bytes": {"type": "integer"},
                                    "pending_slots": {"type": "integer"}}}}}}}}},
                            "401": UNAUTHORIZED, "403": FORBIDDEN}},
            },
            "/circles": {
                "get": {"summary": "List circles with their members", "security": secured,
                        "responses": {"200": {"description": "The circles", "content": {
                            "application/json": {"schema": {"type": "object", "properties": {
                                "circles": {"type": "array", "items": {
                                    "$ref": "#/components/schemas/Circle"}}}}}}},
                            "401": UNAUTHORIZED, "403": FORBIDDEN, "404": NOT_FOUND}},
                "post": {"summary": "Create a circle and its members-only room", "security": secured,
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"type": "object", "additionalProperties": False,
                                        "required": ["name"],
                                        "properties": {"name": {"type": "string",
                                                                "maxLength": 64}}}}}},
                         "responses": {"201": _json("Circle", "Created"),
                                       "400": BAD_REQUEST, "401": UNAUTHORIZED,
                                       "403": FORBIDDEN, "404": NOT_FOUND,
                                       "409": _error("A circle of that name exists")}},
            },
            "/circles/{name}": {
                "parameters": [CIRCLE],
                "delete": {"summary": "Delete a circle, its room and the subscriptions it gave",
                           "security": secured,
                           "responses": {"204": {"description": "Deleted"},
                                         "401": UNAUTHORIZED, "403": FORBIDDEN,
                                         "404": NOT_FOUND}},
            },
            "/circles/{name}/members/{username}": {
                "parameters": [CIRCLE, USERNAME],
                "put": {"summary": "Add an account to a circle", "security": secured,
                        "responses": {"200": _json("Circle", "The circle with its members"),
                                      "401": UNAUTHORIZED, "403": FORBIDDEN, "404": NOT_FOUND}},
                "delete": {"summary": "Take an account out of a circle", "security": secured,
                           "responses": {"204": {"description": "Removed"},
                                         "401": UNAUTHORIZED, "403": FORBIDDEN,
                                         "404": NOT_FOUND}},
            },
            "/tokens/{token}": {
                "parameters": [{"name": "token", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "get": {"summary": "Is this invite token valid? Never uses it. Rate-limited per "
                                   "client address; no key needed.",
                        "responses": {"200": _json("TokenCheck", "valid true or false"),
                                      "429": _error("Too many checks; see Retry-After")}},
            },
            "/openapi.json": {
                "get": {"summary": "This document",
                        "responses": {"200": {"description": "OpenAPI 3 document"}}},
            },
        },
    }
