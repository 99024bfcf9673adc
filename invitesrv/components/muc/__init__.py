"""
Multi-user chat (XEP-0045) on a subdomain of a host: L{service} is the
component and its host module, L{room} one room, L{archive} the queries of
room archives (XEP-0313).
"""
