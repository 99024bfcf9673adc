"""
The web pages in the visitor's language: gettext catalogues managed with
Babel, chosen from C{?lang=}, the language cookie, then C{Accept-Language}.

The catalogues are the C{.po} files under C{locale/}, the sources
translators edit; they are read and compiled in memory when first needed
(L{catalogues}), so an editable install, a plain C{pip install .} and a
source checkout all serve the same texts, and no generated C{.mo} file has
to be built, shipped or kept in step. To update them::

    pybabel extract -F babel.cfg -k Text -k N_ -k RegistrationError:2 \
        --no-location --sort-output -o invitesrv/web/locale/messages.pot .
    pybabel update -i invitesrv/web/locale/messages.pot -d invitesrv/web/locale

Texts are L{Text} objects, translated when the page is flattened: a
template's literal sentences are marked C{t:render="tr"} (extracted by
L{extractTemplate}), the rest are made in Python with C{Text("…")}.
"""

from __future__ import annotations

import re
import xml.parsers.expat
from datetime import datetime, timezone
from functools import cache
from io import BytesIO
from pathlib import Path
from urllib.parse import parse_qsl

from babel import Locale, negotiate_locale
from babel.dates import format_date, format_time
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations
from twisted.web.iweb import IRenderable
from twisted.web.template import slot
from zope.interface import implementer

LOCALE = Path(__file__).resolve().parent / "locale"
SOURCE = "en"
LANG_COOKIE = b"invitesrv_lang"
PLACEHOLDER = re.compile(r"\{(\w+)\}")
TEMPLATE_NS = "http://twistedmatrix.com/ns/twisted.web.template/0.1"


@cache
def catalogues() -> dict[str, Translations]:
    """Every shipped language's translations, compiled from its C{.po} file once."""
    found = {}
    for po in sorted(LOCALE.glob("*/LC_MESSAGES/messages.po")):
        language = po.parent.parent.name
        with po.open("rb") as source:
            catalog = read_po(source, locale=language)
        compiled = BytesIO()
        write_mo(compiled, catalog)
        compiled.seek(0)
        found[language] = Translations(compiled)
    return found


def languages() -> list[str]:
    """The languages pages are offered in: English first, then the catalogues' own."""
    return [SOURCE] + sorted(catalogues())


def negotiate(accepted: str) -> str:
    """
    The best offered language for an C{Accept-Language} value: by q-value,
    a region falling back to its language (C{de-AT} to C{de}), English when
    nothing offered is accepted.
    """
    weighted = []
    for position, item in enumerate(accepted.split(",")[:32]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        tag = tag.strip()
        if tag and tag != "*" and 0 < quality <= 1:
            weighted.append((-quality, position, tag.replace("_", "-")))
    preferred = [tag for _, _, tag in sorted(weighted)]
    return negotiate_locale(preferred, languages(), sep="-") or SOURCE


def query(request) -> list[tuple[bytes, bytes]]:
    """
    The fields of the request's URL query, never those of a form it
    posted (L{invitesrv.web.register_page.readForm} adds those to C{args}).
    """
    return parse_qsl(request.uri.partition(b"?")[2], keep_blank_values=True)


def askedFor(request) -> str | None:
    """The offered language the URL asks for with C{?lang=}, if any."""
    return offered(next((value for key, value in query(request) if key == b"lang"), None))


def offered(value: bytes | str | None) -> str | None:
    """C{value} if it names an offered language, else None."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value if value in languages() else None


def languageOf(request) -> str:
    """
    The language of the answer to C{request} (remembered on it): C{?lang=},
    else the cookie the switcher set, else C{Accept-Language}.
    """
    if request is None:
        return SOURCE
    chosen = getattr(request, "language", None)
    if chosen is None:
        chosen = (askedFor(request) or offered(request.getCookie(LANG_COOKIE))
                  or negotiate((request.getHeader(b"accept-language") or b"").decode("latin-1")))
        request.language = chosen
    return chosen


def translations(request) -> NullTranslations:
    """The gettext translations for C{request}'s language."""
    return catalogues().get(languageOf(request)) or NullTranslations()


def direction(language: str) -> str:
    """C{rtl} or C{ltr}, as Babel's locale data says."""
    return Locale.parse(language, sep="-").text_direction


def displayName(language: str) -> str:
    """A language's name in itself, for the switcher (C{Deutsch}, C{العربية})."""
    name = Locale.parse(language, sep="-").get_display_name(language)
    return name[:1].upper() + name[1:]


def remember(request) -> None:
    """Keep a language chosen with C{?lang=} in a cookie for the visitor's next pages."""
    asked = askedFor(request)
    if asked and asked != offered(request.getCookie(LANG_COOKIE)):
        request.addCookie(LANG_COOKIE, asked.encode("ascii"), path=b"/",
                          max_age=b"%d" % (365 * 86400), secure=request.isSecure(),
                          httpOnly=True, sameSite="lax")


def N_(message: str) -> str:
    """Mark C{message} for the catalogues; it is translated where it is shown (L{Text})."""
    return message


@implementer(IRenderable)
class Text:
    """
    A sentence of a page, translated when it is rendered: C{message} is the
    English text and msgid, its C{{name}} placeholders are filled with
    C{params} (strings, tags or other L{Text}s) after translation.
    """

    def __init__(self, message: str, **params):
        self.message = message
        self.params = params

    def lookupRenderMethod(self, name):
        raise NotImplementedError(name)

    def render(self, request):
        translated = translations(request).gettext(self.message)
        if not self.params:
            return translated
        parts = PLACEHOLDER.split(translated)
        return [self.params.get(part, f"{{{part}}}") if i % 2 else part
                for i, part in enumerate(parts) if part]

    def __repr__(self) -> str:
        return f"Text({self.message!r})"


@implementer(IRenderable)
class LocalTime:
    """A moment (Unix time) written as the visitor's language writes dates, in UTC."""

    def __init__(self, seconds: float):
        self.moment = datetime.fromtimestamp(seconds, timezone.utc)

    def lookupRenderMethod(self, name):
        raise NotImplementedError(name)

    def render(self, request):
        language = languageOf(request).replace("-", "_")
        return (f"{format_date(self.moment, 'long', locale=language)}, "
                f"{format_time(self.moment, 'HH:mm', tzinfo=timezone.utc, locale=language)} UTC")


def normalize(text: str) -> str:
    """Whitespace as a msgid of a template has it: runs of it as one space, none at the ends."""
    return " ".join(text.split())


def templateText(children) -> tuple[str, dict]:
    """
    The msgid of a C{t:render="tr"} element's children (text and
    C{t:slot}s, as C{{name}}), and the slots by name.
    """
    parts, slots = [], {}
    for child in children:
        if isinstance(child, slot):
            parts.append(f"{{{child.name}}}")
            slots[child.name] = child
        elif isinstance(child, str):
            parts.append(child)
        else:
            raise ValueError(f"t:render='tr' holds text and slots only, not {child!r}")
    return normalize("".join(parts)), slots


def extractTemplate(fileobj, keywords, commentTags, options):
    """
    A Babel extractor for the page templates: each C{t:render="tr"}
    element's text, its slots as C{{name}}, as L{templateText} makes it.
    """
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    stack: list[tuple[int, list[str]] | None] = []

    def start(name, attributes):
        if stack and stack[-1] is not None and name == f"{TEMPLATE_NS} slot":
            stack[-1][1].append(f"{{{attributes['name']}}}")
        if attributes.get(f"{TEMPLATE_NS} render") == "tr":
            stack.append((parser.CurrentLineNumber, []))
        else:
            stack.append(None)

    def end(name):
        entry = stack.pop()
        if entry is not None:
            found.append((entry[0], None, normalize("".join(entry[1])), []))

    def text(data):
        if stack and stack[-1] is not None:
            stack[-1][1].append(data)

    found: list = []
    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = text
    parser.ParseFile(fileobj)
    return found
