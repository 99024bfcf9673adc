"""
C{invitesrvctl check [config|certificate|datadir|ports|dns]}: look for what
keeps clients or other servers away, or weakens security, and say how to
fix each finding (L{invitesrv.check}). Exit status 1 when anything is an error.
"""

from __future__ import annotations

import argparse

from twisted.internet import defer

from invitesrv import check

TOPICS = ("config", "certificate", "datadir", "ports", "dns")


def makeResolver(config):
    """
    A DNS client asking what other people's servers would: the DNS servers
    of C{[s2s] dns_servers} or resolv.conf, never /etc/hosts, and no cache.
    """
    from twisted.internet import reactor
    from twisted.names import client

    from invitesrv.xmpp.resolve import RESOLV_CONF
    servers = config.federation.dnsServers
    if servers:
        return client.Resolver(servers=servers, reactor=reactor)
    return client.Resolver(resolv=RESOLV_CONF, reactor=reactor)


@defer.inlineCallbacks
def run(server, args):
    config = server.config
    topics = args.topics or TOPICS
    findings = []
    if "config" in topics:
        findings += check.checkConfig(config)
    if "certificate" in topics:
        findings += check.checkCertificate(config)
    if "datadir" in topics:
        findings += check.checkDataDir(config)
    if "ports" in topics:
        findings += check.checkPorts(config, running=args.control is not None)
    if "dns" in topics:
        findings += yield check.checkDNS(config, makeResolver(config))
    for finding in findings:
        print(finding)
    verdict = check.worst(findings)
    print({"ok": "All good.", "warning": "Warnings only: the server works; consider the fixes.",
           "error": "Errors: clients or servers cannot connect, or data is exposed."}[verdict])
    if verdict == "error":
        raise SystemExit(1)


def topic(text: str) -> str:
    if text not in TOPICS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(TOPICS)}")
    return text


def addCheckCommands(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser("check", help="find what to fix before running a public server")
    command.add_argument("topics", nargs="*", type=topic, metavar="TOPIC",
                         help=f"only these checks: {', '.join(TOPICS)} (default: all)")
    command.set_defaults(run=run, fixesDataDir=False)  # report the modes, don't mend them first
