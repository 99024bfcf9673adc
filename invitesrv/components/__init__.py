"""
Components: subdomain services (C{groups.HOST}, C{share.HOST}) routed like
hosts. L{base} has what every component is to the router and its host, and
the component served by modules in this process; L{external} the XEP-0114
connection through which an external component serves its domain.
"""
