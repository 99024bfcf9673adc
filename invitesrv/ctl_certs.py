"""
C{invitesrvctl cert import DIR...}: copy each served host's certificate (and
its subdomains') from certbot's C{/etc/letsencrypt/live} or another
directory into the server's certificates directory (C{[tls] certificates}),
readable by the server's user alone, if it matches its key, names the host
and has not expired (the checks of C{invitesrvctl check}), then have the running server reload
them. certbot's files are readable by root only, so a deploy hook runs this
as root after each renewal.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

from twisted.internet import defer

from invitesrv import check, control
from invitesrv.ctl import CommandError, remote
from invitesrv.tls import hostCertificates


def writePrivate(path: Path, data: bytes, owner: tuple[int, int] | None) -> None:
    """Write C{path} whole (a temporary file renamed), mode 0600, owned by C{owner}."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if owner is not None:
        os.chown(temporary, *owner)
    os.replace(temporary, path)


@defer.inlineCallbacks
def importCertificates(server, args):
    config = server.config
    target = config.certificatesDir
    dataDir = config.data_dir.stat()
    # Run as root (certbot's hook): what is written belongs to the server's user.
    owner = (dataDir.st_uid, dataDir.st_gid) if os.geteuid() == 0 else None
    imported = 0
    now = datetime.datetime.now(datetime.timezone.utc)
    for directory in map(Path, args.directories):
        if not directory.is_dir():
            print(f"Skipped {directory}: not a directory")
            continue
        found = hostCertificates(directory, list(server.hosts))
        for name in server.hosts:
            if name not in found:
                print(f"Skipped {name}: no {directory / name}/fullchain.pem and privkey.pem"
                      f" (nor {name}.crt and {name}.key)")
        for name, paths in found.items():
            errors = [finding.text for finding in check.checkPair(*paths, [name], now)
                      if finding.level == "error"]
            if errors:
                print(f"Skipped {name} ({paths[0]}): {'; '.join(errors)}")
                continue
            for folder in (target, target / name):
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                if owner is not None:
                    os.chown(folder, *owner)
            writePrivate(target / name / "privkey.pem", paths[1].read_bytes(), owner)
            writePrivate(target / name / "fullchain.pem", paths[0].read_bytes(), owner)
            print(f"Imported {name} from {paths[0]} into {target / name}")
            imported += 1
    if not imported:
        raise CommandError("no certificate imported")
    answer = yield remote(args, control.Reload)
    if answer is None:
        print("The server is not running: it uses them from its next start")
    else:
        for line in answer["changes"]:
            print(f"Reloaded: {line}")


def addCertCommands(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser("cert", help="certificates: import from certbot's live directory")
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    action = actions.add_parser("import", help="copy each host's certificate and key into the"
                                " certificates directory, then reload the running server")
    action.add_argument("directories", nargs="+", metavar="DIR",
                        help="e.g. /etc/letsencrypt/live: DIR/HOST/fullchain.pem and privkey.pem,"
                             " or DIR/HOST.crt and HOST.key")
    action.set_defaults(run=importCertificates, opensStore=False)
