"""
XEP-0363 HTTP File Upload: clients share files (photos, voice messages)
through a component of the host, C{share.HOST} by default, listed in the
host's disco#items.

A local account asks the component for a slot (file name, size, content
type); the host checks its limits (per file, its quota, its daily limit)
and records the slot in the store, and answers with a PUT URL and a GET
URL under the server's C{public_url} (L{invitesrv.web.share} serves them
on the HTTP listeners). Both carry an HMAC of the slot under a key derived
from the installation secret (C{server.secret} in the data dir), so they
cannot be guessed or forged; the PUT URL's also binds the size, the content
type, the file name and its expiry (C{slot_lifetime}), and the store lets
one PUT take a slot at a time and none once the file is stored.

The body of a PUT goes to a partial file in the host's upload directory
(C{DATA_DIR/uploads/HOST/}) as it arrives, never into memory, and becomes
the file only when every byte the slot promised has come; a PUT that fails
or is cut leaves nothing behind and the slot may be tried again while its
URL is valid. Files expire C{expires_after} after their upload (a week,
as Prosody's C{mod_http_file_share}), swept every C{sweep_interval} in
batches of C{sweep_batch}; an account's files go with it unless
C{delete_with_account} is false (then they stay until they expire).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from twisted.internet import defer, task
from twisted.words.protocols.jabber import error, jid
from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish
from wokkel import data_form, disco

from invitesrv.accountiq import answer
from invitesrv.config import Duration
from invitesrv.logs import logger
from invitesrv.modules.base import HostModule, ModuleError
from invitesrv.store.interfaces import QuotaExceeded, Upload

log = logger()

NS_UPLOAD = "urn:xmpp:http:upload:0"
SLOT_REQUEST = f"/iq[@type='get']/request[@xmlns='{NS_UPLOAD}']"
DEFAULT_TYPE = "application/octet-stream"
# A media type without parameters (RFC 6838 section 4.2).
MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w!#$&^.+-]{0,126}/[A-Za-z0-9][\w!#$&^.+-]{0,126}")
MAX_FILENAME = 255  # bytes of UTF-8, as most file systems allow
PARTIAL = ".part"


@dataclass(frozen=True)
class UploadOptions:
    """C{[modules.upload]}: where uploads are served, their limits and their life."""

    component: str = "share"
    name: str = "File sharing"
    max_file_size: int = 104_857_600
    quota: int = 1_073_741_824
    daily_quota: int = 536_870_912
    expires_after: Duration = Duration(7 * 86400)
    slot_lifetime: Duration = Duration(600)
    delete_with_account: bool = True
    sweep_interval: Duration = Duration(3600)
    sweep_batch: int = 100


class UploadFailed(Exception):
    """A PUT's body could not become the file (short, too long, disk error)."""


def sign(key: bytes, *parts: object) -> str:
    """The HMAC-SHA256 of C{parts}, URL-safe base64 without padding."""
    message = "\0".join(str(part) for part in parts).encode("utf-8")
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def checkFilename(filename: str | None) -> str:
    """The slot's file name, or a bad-request error: one path segment, printable, not too long."""
    if (not filename or "/" in filename or "\\" in filename or filename in (".", "..")
            or any(ord(c) < 0x20 or ord(c) == 0x7f for c in filename)
            or len(filename.encode("utf-8")) > MAX_FILENAME):
        raise error.StanzaError("bad-request", "modify", "Invalid file name")
    return filename


def loadUploadKey(dataDir: Path) -> bytes:
    """The key of upload URLs: derived from the installation secret, never the secret itself."""
    from invitesrv.service import loadSecret
    return hmac.new(loadSecret(dataDir / "server.secret"), b"invitesrv upload URLs",
                    hashlib.sha256).digest()


class PartialFile:
    """
    The body of one PUT, written to disk as it arrives (the request's
    content): L{commit} makes it the file once all of it came; closed
    before that (an error, a lost connection), it is deleted and the slot
    given back.
    """

    def __init__(self, module: UploadModule, upload: Upload):
        self.module = module
        self.upload = upload
        self.path = module.partialPath(upload.id)
        self.file = open(self.path, "xb")  # noqa: SIM115 -- closed by commit or close
        self.received = 0
        self.failure: str | None = None
        self.done = False

    def write(self, data: bytes) -> None:
        """Write what came, unless it goes past the slot's size or the disk failed."""
        self.received += len(data)
        if self.failure is not None:
            return
        if self.received > self.upload.size:
            self.failure = "more bytes than the slot's size"
            return
        try:
            self.file.write(data)
        except OSError as e:
            self.failure = f"cannot write {self.path}: {e.strerror}"
            log.error("Upload {id}: {failure}", id=self.upload.id, failure=self.failure)

    def tell(self) -> int:
        """How many bytes came (Twisted asks before rendering)."""
        return self.received

    def seek(self, offset: int, whence: int = 0) -> None:
        """Twisted rewinds a request's content before rendering: nothing to do for a file being written."""

    def commit(self) -> Path:
        """Rename the partial file to the upload's file; raise L{UploadFailed} if it is not whole."""
        self.done = True
        try:
            self.file.close()
            if self.failure is None and self.received != self.upload.size:
                self.failure = f"{self.received} bytes, not {self.upload.size}"
            if self.failure is not None:
                raise UploadFailed(self.failure)
            final = self.module.path(self.upload.id)
            os.replace(self.path, final)
            return final
        except (OSError, UploadFailed):
            self.path.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """The request is done with its content: if it was not committed, nothing stays."""
        if self.done:
            return
        self.done = True
        self.file.close()
        self.path.unlink(missing_ok=True)
        self.module.release(self.upload)


class UploadModule(HostModule):
    """
    The host's side of uploads: the component that hands out slots, the
    files on disk and their expiry, and the account's files going with it.
    """

    name = "upload"
    Options = UploadOptions
    hooks = (("user-deleted", "onUserDeleted"),)

    component = None
    key = b""
    sweeper: task.LoopingCall | None = None

    @property
    def directory(self) -> Path:
        """The host's upload directory: its files and the partial files being received."""
        return self.host.config.data_dir / "uploads" / self.host.name

    def path(self, uploadId: str) -> Path:
        """Where a stored upload's file is."""
        return self.directory / uploadId

    def partialPath(self, uploadId: str) -> Path:
        """Where a PUT's body is written until all of it has come."""
        return self.directory / (uploadId + PARTIAL)

    def connectionInitialized(self) -> None:
        """Serve the component, clean what a crash left, and sweep expired files from now on."""
        HostModule.connectionInitialized(self)
        from invitesrv.components.base import InternalComponent
        host = self.host
        domain = f"{self.options.component}.{host.name}"
        if domain in host.config.hosts or domain in host.config.components.get(host.name, {}):
            raise ModuleError(f"module 'upload' of {host.name} serves {domain}, which the config"
                              " serves otherwise: set [modules.upload] component to another name")
        self.key = loadUploadKey(host.config.data_dir)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        partials = list(self.directory.glob("*" + PARTIAL))
        for partial in partials:  # no PUT survives a restart
            partial.unlink(missing_ok=True)
        if partials:
            log.info("{host}: removed {count} partial uploads left by the last run", host=host.name,
                     count=len(partials))
        if not host.config.public_url:
            log.warn("{host}: HTTP upload (XEP-0363) is off: set server.public_url to the address"
                     " of the HTTP listener", host=host.name)
        else:
            self.component = InternalComponent(domain, host)
            self.component.addModule("upload_slots", SlotsModule(self))
            self.component.start()
        if self.options.sweep_interval:
            self.sweeper = task.LoopingCall(self.sweep)
            self.sweeper.clock = host.clock
            self.sweeper.start(self.options.sweep_interval, now=True).addErrback(
                lambda failure: log.failure("Sweeping expired uploads failed", failure))

    def connectionLost(self, reason) -> None:
        """Stop sweeping and serving the component."""
        if self.sweeper is not None and self.sweeper.running:
            self.sweeper.stop()
        if self.component is not None:
            self.component.stop()
            self.component = None
        HostModule.connectionLost(self, reason)

    # -- slots ---------------------------------------------------------------

    @defer.inlineCallbacks
    def createSlot(self, requestor: jid.JID, filename: str, size: int, contentType: str):
        """
        Record a slot for the local account C{requestor}; fire with its
        (PUT URL, GET URL), or fail with the XEP's stanza error.
        """
        options = self.options
        if size > options.max_file_size:
            tooLarge = domish.Element((NS_UPLOAD, "file-too-large"))
            tooLarge.addElement("max-file-size", content=str(options.max_file_size))
            raise error.StanzaError("not-acceptable", "modify",
                                    f"The file is larger than {options.max_file_size} bytes",
                                    appCondition=tooLarge)
        now = self.host.now()
        upload = Upload(secrets.token_urlsafe(12), self.host.name, requestor.user, filename, size,
                        contentType, now, now + options.slot_lifetime)
        try:
            yield self.host.store.createUpload(upload, options.quota, options.daily_quota)
        except QuotaExceeded as e:
            limit = "quota" if e.kind == "quota" else "daily limit"
            amount = options.quota if e.kind == "quota" else options.daily_quota
            raise error.StanzaError("resource-constraint", "wait",
                                    f"Upload {limit} of {amount} bytes reached") from None
        log.info("Upload slot {id} for {user}@{host}: {size} bytes", id=upload.id,
                 user=upload.username, host=upload.host, size=size)
        return self.putURL(upload), self.getURL(upload)

    def getURL(self, upload: Upload) -> str:
        """Where the file is fetched: the id and its HMAC make it unguessable."""
        base = self.host.config.public_url.rstrip("/")
        return (f"{base}/share/{upload.id}/{sign(self.key, 'get', upload.id)}/"
                f"{quote(upload.filename, safe='')}")

    def putSignature(self, upload: Upload, expires: int) -> str:
        """The HMAC that binds a PUT URL to the slot's size, type and name, and to its expiry."""
        return sign(self.key, "put", upload.id, upload.size, upload.contentType, upload.filename,
                    expires)

    def putURL(self, upload: Upload) -> str:
        """Where the file is sent: the GET URL with the PUT's expiry and HMAC."""
        expires = int(upload.expires)
        return f"{self.getURL(upload)}?expires={expires}&sig={self.putSignature(upload, expires)}"

    def checkGet(self, upload: Upload, mac: str) -> bool:
        """Whether C{mac} is the upload's own (compared in constant time)."""
        return hmac.compare_digest(sign(self.key, "get", upload.id), mac)

    def checkPut(self, upload: Upload, mac: str, expires: str, signature: str) -> bool:
        """Whether a PUT URL is this upload's, and still valid."""
        if not expires.isdigit() or not self.checkGet(upload, mac):
            return False
        return (hmac.compare_digest(self.putSignature(upload, int(expires)), signature)
                and int(expires) > self.host.now())

    # -- receiving -------------------------------------------------------------

    def receive(self, upload: Upload) -> PartialFile:
        """The partial file a PUT taking C{upload} writes to."""
        return PartialFile(self, upload)

    @defer.inlineCallbacks
    def complete(self, partial: PartialFile):
        """Make the received body the upload's file; fail with L{UploadFailed} and keep nothing."""
        upload = partial.upload
        try:
            final = partial.commit()
        except OSError as e:
            self.release(upload)
            log.error("Upload {id}: cannot store the file: {error}", id=upload.id, error=e)
            raise UploadFailed("the server could not store the file") from None
        except UploadFailed:
            self.release(upload)
            raise
        try:
            stored = yield self.host.store.finishUpload(upload.id,
                                                        self.host.now() + self.options.expires_after)
        except Exception:
            final.unlink(missing_ok=True)
            self.release(upload)
            raise
        if not stored:  # its account was deleted meanwhile
            final.unlink(missing_ok=True)
            raise UploadFailed("the slot is gone")
        log.info("Upload {id} stored: {size} bytes from {user}@{host}", id=upload.id,
                 size=upload.size, user=upload.username, host=upload.host)

    def release(self, upload: Upload) -> None:
        """A PUT that failed gives its slot back, to be tried again while its URL is valid."""
        d = self.host.store.abortUpload(upload.id)
        d.addErrback(lambda failure: log.failure("Cannot give back upload slot {id}", failure,
                                                 id=upload.id))

    # -- deleting ----------------------------------------------------------------

    def deleteFiles(self, uploads) -> list[str]:
        """Delete the files of C{uploads}; return the ids whose file is gone (or never came)."""
        gone = []
        for upload in uploads:
            try:
                self.path(upload.id).unlink(missing_ok=True)
            except OSError as e:
                log.error("Cannot delete uploaded file {path}: {error}", path=self.path(upload.id),
                          error=e.strerror)
                continue
            gone.append(upload.id)
        return gone

    @defer.inlineCallbacks
    def sweep(self):
        """
        Delete the expired files and unused slots, C{sweep_batch} at a time
        (the store, then the disk, then the rows); fire with how many went.
        """
        total = 0
        while True:
            expired = yield self.host.store.expiredUploads(self.host.name, self.host.now(),
                                                           self.options.sweep_batch)
            gone = self.deleteFiles(expired)
            total += (yield self.host.store.deleteUploads(gone)) if gone else 0
            if len(expired) < self.options.sweep_batch or len(gone) < len(expired):
                break
        if total:
            log.info("{host}: {count} expired uploads and unused slots deleted", host=self.host.name,
                     count=total)
        return total

    @defer.inlineCallbacks
    def onUserDeleted(self, host: str, username: str):
        """Hook C{user-deleted}: the account's files go with it (unless C{delete_with_account} is off)."""
        if not self.options.delete_with_account:
            return
        uploads = yield self.host.store.listUploads(self.host.name, username)
        gone = self.deleteFiles(uploads)
        if gone:
            yield self.host.store.deleteUploads(gone)
            log.info("{count} uploads of {user}@{host} deleted with the account", count=len(gone),
                     user=username, host=self.host.name)


class SlotsModule(HostModule):
    """The component's side: its disco#info (with C{max-file-size}) and slot requests."""

    name = "upload_slots"
    features = (NS_UPLOAD,)
    observers = ((SLOT_REQUEST, "onRequest"),)

    def __init__(self, upload: UploadModule):
        HostModule.__init__(self)
        self.upload = upload

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        """C{store/file} under the configured name, the feature, and the size limit (XEP-0363 section 4)."""
        if nodeIdentifier or target.user is not None:
            return []
        form = data_form.Form("result", formNamespace=NS_UPLOAD)
        form.addField(data_form.Field("text-single", "max-file-size",
                                      value=str(self.upload.options.max_file_size)))
        return [disco.DiscoIdentity("store", "file", self.upload.options.name),
                disco.DiscoFeature(NS_UPLOAD), form]

    def onRequest(self, iq) -> None:
        """A slot request: answered with the slot or the XEP's error."""
        answer(self, iq, self._answer, iq, what="Upload slot request")

    @defer.inlineCallbacks
    def _answer(self, iq):
        """Check the request and who asks; fire with the C{<slot/>} answer."""
        requestor = jid.JID(iq["from"])
        if requestor.host != self.upload.host.name or requestor.user is None:
            raise error.StanzaError("not-allowed", "cancel",
                                    f"Only accounts of {self.upload.host.name} may upload here")
        request = iq.request
        filename = checkFilename(request.getAttribute("filename"))
        size = request.getAttribute("size", "")
        if not size.isdigit() or int(size) == 0:
            raise error.StanzaError("bad-request", "modify", "The size must be a positive integer")
        contentType = request.getAttribute("content-type") or DEFAULT_TYPE
        if not MEDIA_TYPE.fullmatch(contentType):
            raise error.StanzaError("bad-request", "modify", "Invalid content type")
        put, get = yield self.upload.createSlot(requestor, filename, int(size), contentType.lower())
        reply = toResponse(iq, "result")
        slot = reply.addElement((NS_UPLOAD, "slot"))
        slot.addElement("put")["url"] = put
        slot.addElement("get")["url"] = get
        return reply
