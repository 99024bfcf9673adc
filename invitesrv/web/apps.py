"""
The catalogue of XMPP apps that invite pages recommend, and the guess of the
visitor's platform that picks the ones to show first.

Apps that open C{xmpp:…?register;preauth=…} links themselves (XEP-0401)
redeem an invite in one tap; the others (Dino, Gajim, Beagle IM) need the web
registration form first, then an ordinary login. The built-in list follows
what Prosody's C{mod_register_apps} and ejabberd's C{apps.json} offer; an
admin may replace it with a JSON file (C{server.app_catalogue}) or hide some
entries (C{server.hide_apps}).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from invitesrv.web.i18n import N_

PLATFORMS = {
    "android": "Android",
    "ios": N_("iPhone and iPad"),
    "linux": "Linux",
    "windows": "Windows",
    "macos": "macOS",
}


class CatalogueError(Exception):
    """The app catalogue file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Download:
    """One place to get an app: a store page or a download page."""

    text: str
    url: str


@dataclass(frozen=True)
class App:
    """
    One recommended app. C{magicLink}, when set, is a download link that
    carries the invite through installation (the Play Store's install
    referrer): its C{{uri}} is replaced by the percent-encoded invite URI.
    """

    id: str
    name: str
    platforms: tuple[str, ...]
    supportsPreauth: bool
    text: str
    downloads: tuple[Download, ...]
    magicLink: str = ""

    def installLink(self, uri: str) -> str:
        """Where the main install button goes for this invite URI."""
        if self.magicLink:
            return self.magicLink.replace("{uri}", quote(uri, safe=""))
        return self.downloads[0].url if self.downloads else ""


PLAY = "https://play.google.com/store/apps/details?id="

BUILTIN = (
    App("conversations", "Conversations", ("android",), True,
        N_("An easy to use and secure messenger for Android, with end-to-end encryption."),
        (Download("Google Play", PLAY + "eu.siacs.conversations"),
         Download("F-Droid", "https://f-droid.org/packages/eu.siacs.conversations/")),
        magicLink=PLAY + "eu.siacs.conversations&referrer={uri}"),
    App("monal", "Monal", ("ios", "macos"), True,
        N_("A modern open-source chat app for iPhone, iPad and Mac."),
        (Download("App Store (iPhone, iPad)", "https://apps.apple.com/app/id317711500"),
         Download("Mac App Store", "https://apps.apple.com/app/id1637078500"))),
    App("siskin-im", "Siskin IM", ("ios",), True,
        N_("A lightweight XMPP app for iPhone and iPad."),
        (Download("App Store", "https://apps.apple.com/app/id1153516838"),)),
    App("dino", "Dino", ("linux",), False,
        N_("A modern open-source chat app for the Linux desktop."),
        (Download(N_("Download Dino"), "https://dino.im/#download"),
         Download("Flathub", "https://flathub.org/apps/im.dino.Dino"))),
    App("gajim", "Gajim", ("windows", "linux"), False,
        N_("A fully-featured desktop chat app for Windows and Linux."),
        (Download(N_("Download Gajim"), "https://gajim.org/download/"),)),
    App("beagle-im", "Beagle IM", ("macos",), False,
        N_("A lightweight XMPP app for macOS."),
        (Download("Mac App Store", "https://apps.apple.com/app/id1445349494"),)),
    App("yaxim", "yaxim", ("android",), True,
        N_("A lean XMPP app for Android."),
        (Download("Google Play", PLAY + "org.yaxim.androidclient"),
         Download("F-Droid", "https://f-droid.org/packages/org.yaxim.androidclient/")),
        magicLink=PLAY + "org.yaxim.androidclient&referrer={uri}"),
)


def detectPlatform(userAgent: str | None) -> str | None:
    """
    The visitor's platform from a User-Agent header, or None when it is not
    one we have apps for. Android says "Linux" too and iPads may say
    "Macintosh", so the order of the checks matters.
    """
    agent = userAgent or ""
    if "Android" in agent:
        return "android"
    if re.search(r"iPhone|iPad|iPod", agent):
        return "ios"
    if "Windows" in agent:
        return "windows"
    if "Macintosh" in agent or "Mac OS X" in agent:
        return "macos"
    if re.search(r"Linux|X11|CrOS", agent):
        return "linux"
    return None


def appId(name: str) -> str:
    """An app id from its name, as Prosody makes them: lower case, runs of non-word characters as '-'."""
    return re.sub(r"\W+", "-", name.lower()).strip("-")


def _text(entry: dict, key: str, where: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise CatalogueError(f"{where}: {key!r} must be a string")
    return value


def _url(value: object, where: str) -> str:
    if not isinstance(value, str) or not re.match(r"https?://", value):
        raise CatalogueError(f"{where}: expected an http(s) URL, not {value!r}")
    return value


def parseCatalogue(data: object, where: str) -> tuple[App, ...]:
    """Apps from the JSON of a catalogue file (a list of objects); ids must be unique."""
    if not isinstance(data, list):
        raise CatalogueError(f"{where}: expected a list of apps")
    apps: list[App] = []
    seen: set[str] = set()
    for index, entry in enumerate(data):
        at = f"{where}: app {index + 1}"
        if not isinstance(entry, dict):
            raise CatalogueError(f"{at}: expected an object")
        name = _text(entry, "name", at)
        ident = _text(entry, "id", at, appId(name))
        platforms = entry.get("platforms", [])
        if not isinstance(platforms, list) or not all(p in PLATFORMS for p in platforms):
            raise CatalogueError(f"{at}: platforms must be a list of {', '.join(PLATFORMS)}")
        downloads = entry.get("downloads", [])
        if not isinstance(downloads, list) or not downloads:
            raise CatalogueError(f"{at}: downloads must be a list of {{text, url}} objects")
        links = []
        for download in downloads:
            if not isinstance(download, dict):
                raise CatalogueError(f"{at}: downloads must be a list of {{text, url}} objects")
            links.append(Download(_text(download, "text", at), _url(download.get("url"), at)))
        magic = entry.get("magic_link", "")
        if magic:
            _url(magic, at)
        preauth = entry.get("supports_preauth", False)
        if not isinstance(preauth, bool):
            raise CatalogueError(f"{at}: supports_preauth must be true or false")
        if ident in seen:
            raise CatalogueError(f"{at}: duplicate app id {ident!r}")
        seen.add(ident)
        apps.append(App(ident, name, tuple(platforms), preauth, _text(entry, "text", at, ""),
                        tuple(links), magic))
    return tuple(apps)


def loadCatalogue(path: str = "", hide: tuple[str, ...] = ()) -> tuple[App, ...]:
    """The built-in apps, or those of the JSON file at C{path}, less the C{hide} ids."""
    apps = BUILTIN
    if path:
        try:
            data = json.loads(Path(path).read_text("utf-8"))
        except OSError as e:
            raise CatalogueError(f"{path}: cannot read the app catalogue: {e.strerror}") from None
        except ValueError as e:
            raise CatalogueError(f"{path}: not valid JSON: {e}") from None
        apps = parseCatalogue(data, path)
    return tuple(app for app in apps if app.id not in hide)


def recommended(apps: tuple[App, ...], platform: str | None) -> tuple[App, ...]:
    """The apps for C{platform}; all of them when it is unknown or has none."""
    mine = tuple(app for app in apps if platform in app.platforms)
    return mine or apps
