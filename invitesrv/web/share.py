"""
C{/share/}: the HTTP side of XEP-0363 uploads (L{invitesrv.modules.upload}).

    PUT  /share/ID/MAC/NAME?expires=T&sig=S   the file, once, while the URL is valid
    GET  /share/ID/MAC/NAME                   the file (HEAD, Range, If-None-Match too)

A PUT is checked from its request line and headers before a byte of its
body is read (L{BodyPolicy}): a forged or expired URL is refused with 403,
a C{Content-Length} other than the slot's size with 413 (or 411 without
one), another content type than the slot's with 415 (a slot asked for
without one takes any, and serves the file as C{application/octet-stream}),
a slot already used or being used
with 409. The body then goes to a partial file as it arrives (never into
memory), under this route's own cap (the largest C{max_file_size}) and a
body deadline that grows with the size (C{limits.http_upload_min_rate}),
on the same connection limits as every HTTP client.

A file is served with headers that keep it inert on the server's origin:
C{Content-Security-Policy} with C{sandbox} and nothing allowed to load or
run, C{X-Content-Type-Options: nosniff}, and C{Content-Disposition:
attachment} for every type but images, audio, video and plain text, so
that an uploaded HTML page or SVG image cannot run script as the server.
Anyone with the GET URL may fetch it (it is shared in chats); the URL
carries a 96-bit random id and a 256-bit HMAC, so it cannot be guessed.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, quote

from twisted.internet import defer
from twisted.web import http, resource, static
from twisted.web.server import NOT_DONE_YET

from invitesrv.logs import logger
from invitesrv.modules.upload import DEFAULT_TYPE, UploadFailed
from invitesrv.web.pages import BodyPolicy, Refused, finishWith, watchConnection

log = logger()

TEXT = b"text/plain; charset=utf-8"
# Nothing in a served file may load or run anything; images and media shown
# directly by the browser still display.
FILE_POLICY = "default-src 'none'; img-src 'self'; media-src 'self'; sandbox; frame-ancestors 'none'"
INLINE = re.compile(r"(image/(?!svg)[\w.+-]+|audio/[\w.+-]+|video/[\w.+-]+|text/plain)")
CORS = {"access-control-allow-origin": "*"}


def disposition(contentType: str, filename: str) -> str:
    """C{inline} for types a browser only displays, C{attachment} for the rest; the name in RFC 6266 form."""
    kind = "inline" if INLINE.fullmatch(contentType) else "attachment"
    return f"{kind}; filename*=UTF-8''{quote(filename, safe='')}"


class PlainRefusal(resource.Resource):
    """A request refused before its body was read, answered in plain text."""

    isLeaf = True

    def __init__(self, error: Refused):
        resource.Resource.__init__(self)
        self.error = error

    def render(self, request):
        """The status, the refusal's headers and its message."""
        request.setResponseCode(self.error.code)
        request.setHeader(b"content-type", TEXT)
        for name, value in self.error.headers.items():
            request.setHeader(name.encode("ascii"), value.encode("ascii"))
        return self.error.message.encode("utf-8") + b"\n"


class StoredFile(static.File):
    """One uploaded file: its own content type, no guessing from the name, no listings."""

    def __init__(self, path, contentType: str):
        static.File.__init__(self, str(path))
        self.type = contentType
        self.encoding = None


class ShareResource(BodyPolicy, resource.Resource):
    """C{/share/}: PUT and GET of uploads for every host that loads the upload module."""

    isLeaf = True

    def __init__(self, context):
        resource.Resource.__init__(self)
        self.context = context

    def modules(self) -> dict:
        """The upload module of each host that has one, by host name."""
        return {name: host.modules["upload"] for name, host in self.context.server.hosts.items()
                if "upload" in host.modules}

    @property
    def maxBody(self) -> int:
        """The largest file any host takes (each slot is held to its own size)."""
        return max((module.options.max_file_size for module in self.modules().values()), default=0)

    def bodyTimeout(self, length: int | None, limits) -> float:
        """C{http_body_timeout}, and one second more per C{http_upload_min_rate} bytes."""
        if not limits.http_body_timeout or not limits.http_upload_min_rate:
            return 0
        return limits.http_body_timeout + (length or 0) / limits.http_upload_min_rate

    def refusal(self, error: Refused) -> resource.IResource:
        """Refusals here are for HTTP clients, not people: plain text."""
        return PlainRefusal(error)

    @defer.inlineCallbacks
    def find(self, segments: list[bytes]):
        """Fire with (module, upload) for C{ID/MAC/NAME}; fail with 404 when it is not an upload's URL."""
        if len(segments) != 3:
            raise Refused(404, "There is no such file")
        uploadId, mac = (segment.decode("ascii", "replace") for segment in segments[:2])
        upload = yield self.context.store.getUpload(uploadId)
        module = self.modules().get(upload.host) if upload is not None else None
        if module is None or not module.checkGet(upload, mac):
            raise Refused(404, "There is no such file")
        return module, upload

    def checkBeforeBody(self, request, method: bytes, segments: list[bytes]):
        """Only a PUT has a body here, and only to a valid, unused slot of its size and type."""
        if method != b"PUT":
            raise Refused(400, "Only a PUT sends a body here")
        return self.checkPut(request, segments)

    @defer.inlineCallbacks
    def checkPut(self, request, segments: list[bytes]):
        """Check the URL and headers, take the slot, open its partial file; fire with it."""
        module, upload = yield self.find(segments)
        query = parse_qs(request.uri.partition(b"?")[2].decode("ascii", "replace"))
        expires, signature = query.get("expires", [""])[0], query.get("sig", [""])[0]
        if not module.checkPut(upload, segments[1].decode("ascii", "replace"), expires, signature):
            log.info("Upload {id}: PUT from {address} with a wrong or expired URL", id=upload.id,
                     address=request.clientIP())
            raise Refused(403, "This upload URL is not valid, or has expired")
        length = request.getHeader(b"content-length")
        if length is None:
            raise Refused(411, "Send the file with a Content-Length")
        if int(length) != upload.size:
            raise Refused(413, f"The slot is for {upload.size} bytes, not {int(length)}")
        contentType = (request.getHeader(b"content-type") or DEFAULT_TYPE.encode()).decode(
            "latin-1").split(";")[0].strip().lower()
        if contentType != upload.contentType and upload.contentType != DEFAULT_TYPE:
            # A slot asked for without a type takes any: it is served as the slot's anyway.
            raise Refused(415, f"The slot is for {upload.contentType}, not {contentType}")
        if upload.state != "slot" or not (yield self.context.store.beginUpload(upload.id,
                                                                                module.host.now())):
            raise Refused(409, "This file is uploaded already, or being uploaded")
        try:
            return module.receive(upload)
        except OSError as e:
            module.release(upload)
            log.error("Upload {id}: cannot create its file: {error}", id=upload.id, error=e)
            raise Refused(500, "The server cannot store the file now") from None

    def openBody(self, request):
        """The body of an allowed PUT goes to its partial file."""
        return request.checked

    def render_PUT(self, request):
        """The whole body has come: make it the file (201), or say why not."""
        lost = watchConnection(request)
        partial = request.checked
        if partial is None:  # no body at all (Content-Length: 0): no slot is that small
            finishWith(request, lost, 400, b"Send the file's bytes\n", TEXT, {})
            return NOT_DONE_YET
        d = partial.module.complete(partial)

        def failed(failure):
            if failure.check(UploadFailed):
                finishWith(request, lost, 400, f"Upload failed: {failure.value}\n".encode(), TEXT, {})
                return
            log.failure("Storing upload {id} failed", failure, id=partial.upload.id)
            finishWith(request, lost, 500, b"The server could not store the file\n", TEXT, {})
        d.addCallbacks(lambda _: finishWith(request, lost, 201, b"", TEXT, CORS), failed)
        return NOT_DONE_YET

    def render_GET(self, request):
        """The file of a valid GET URL (and HEAD), or 404."""
        lost = watchConnection(request)
        d = self.find(request.postpath)
        d.addCallback(self.serve, request, lost)

        def failed(failure):
            if not failure.check(Refused):
                log.failure("Serving an upload failed", failure)
                failure = Refused(500, "The server cannot serve the file now")
            else:
                failure = failure.value
            finishWith(request, lost, failure.code, failure.message.encode() + b"\n", TEXT, {})
        d.addErrback(failed)
        return NOT_DONE_YET

    render_HEAD = render_GET

    def serve(self, found, request, lost) -> None:
        """Send a stored file that has not expired, with headers that keep it inert."""
        module, upload = found
        now = module.host.now()
        path = module.path(upload.id)
        if upload.state != "stored" or upload.expires <= now or not path.exists():
            raise Refused(404, "There is no such file")
        if lost[0]:
            return
        for name, value in {"content-security-policy": FILE_POLICY,
                            "content-disposition": disposition(upload.contentType, upload.filename),
                            "cache-control": f"public, max-age={int(upload.expires - now)}, immutable",
                            **CORS}.items():
            request.setHeader(name.encode("ascii"), value.encode("utf-8"))
        if request.setETag(f'"{upload.id}"'.encode("ascii")) is http.CACHED:
            request.finish()
            return
        body = StoredFile(path, upload.contentType).render(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()

    def render_OPTIONS(self, request):
        """A browser's preflight before a web client's PUT from another origin."""
        request.setResponseCode(204)
        for name, value in {**CORS, "access-control-allow-methods": "GET, HEAD, PUT",
                            "access-control-allow-headers": "Content-Type",
                            "access-control-max-age": "86400"}.items():
            request.setHeader(name.encode("ascii"), value.encode("ascii"))
        return b""
