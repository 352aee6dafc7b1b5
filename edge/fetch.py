"""Files downloaded by URL from allowlisted hosts, checked while they stream.

A signed command may name a file by URL, sha256 and size (a loudspeaker's audio, a software update).
The signature makes the command trustworthy; the URL inside it still decides which server the device
talks to, and the server decides what bytes arrive. So, for every download:

- **Before any I/O** the URL is checked (:meth:`Fetcher.check_url`): ``https://`` to a host in
  ``allow_hosts``, or ``http://`` to a host in ``allow_http_hosts``; no user name or password in it;
  no host that two URL parsers would read differently.
- **TLS** is verified (``CERT_REQUIRED``, host name checked) against the system store plus the
  optional ``ca_file``.
- **Bytes are counted as they arrive**: the download stops as soon as more than the announced size
  (or the cap) has come, so a server cannot fill the disk. Redirects are followed (at most
  :data:`MAX_REDIRECTS`) only to URLs that pass the same check.
- **Nothing half-written is ever visible**: the body goes to a temporary file (0600) beside the
  destination, hashed while it is written, fsynced, and renamed into place only when hash and size
  match.

Every refusal is a :exc:`FetchRejected` whose ``reason`` is one word for an event or an ack:
``host_not_allowed``, ``bad_url``, ``bad_hash`` (also a malformed sha256), ``bad_size``,
``too_large``, ``unreachable`` (DNS, TCP, TLS, timeouts, a connection cut short), ``http_error``.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import ssl
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url
from urllib3.util.ssl_ import create_urllib3_context

from edge.exceptions import ConfigError, EdgeError

log = logging.getLogger(__name__)

#: Redirects followed for one download, each to a URL that passes :meth:`Fetcher.check_url`.
MAX_REDIRECTS = 3

#: Bytes read from the network at a time.
CHUNK_BYTES = 64 * 1024

#: Name prefix of the temporary file a download is written to (removed if a crash left one).
PART_PREFIX = ".part-"

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_REDIRECTS = (301, 302, 303, 307, 308)


class FetchRejected(EdgeError, ValueError):
    """A file that will not be used. ``reason`` is one word for the event or the ack."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def check_sha256(sha256: str) -> str:
    """``sha256`` in lower case if it is 64 hex digits; else :exc:`FetchRejected` ``bad_hash``."""
    value = sha256.lower() if isinstance(sha256, str) else ""
    if not _SHA256_RE.fullmatch(value):
        raise FetchRejected("bad_hash", f"{sha256!r} is not a sha256 (64 hex digits)")
    return value


@dataclass(frozen=True)
class FetchPolicy:
    """Where files may come from and how long fetching them may take.

    ``section`` is the configuration section the settings come from (``broadcast.sources``,
    ``update``): refusals and configuration errors name the key to change.
    """

    section: str
    allow_hosts: Sequence[str]
    allow_http_hosts: Sequence[str] = ()
    ca_file: Path | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    fetch_deadline_s: float = 1800.0


class Fetcher:
    """Checked downloads with one pool of verified HTTPS connections. Thread-safe (urllib3's pool is)."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=2,
            retries=False,  # the caller decides when to try again; a retry here would hide the reason
            timeout=self.timeout(),
            ssl_context=self.ssl_context(),
            headers={"Accept-Encoding": "identity", "User-Agent": "commune-edge"},
        )

    @property
    def pool(self) -> urllib3.PoolManager:
        """The connection pool (shared with streaming readers, so they follow the same TLS rules)."""
        return self._pool

    def check_url(self, url: str) -> None:
        """Raise :exc:`FetchRejected` (``bad_url`` or ``host_not_allowed``) unless ``url`` may be fetched.

        No I/O: no name is resolved, nothing is dialled.
        """
        if not isinstance(url, str) or not url or len(url) > 2048:
            raise FetchRejected("bad_url", "a URL must be a string of 1 to 2048 characters")
        if any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in url):
            raise FetchRejected("bad_url", f"{url!r} contains spaces, control characters or backslashes")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise FetchRejected("bad_url", f"{url!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http"):
            raise FetchRejected("bad_url", f"{url!r}: only https:// and http:// URLs are fetched")
        if "@" in parts.netloc:
            raise FetchRejected("bad_url", f"{url!r}: a user name or password in the URL is not allowed")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise FetchRejected("bad_url", f"{url!r} names no host")
        if ":" in host:  # urlsplit drops the brackets of an IPv6 address
            try:
                host = f"[{ipaddress.IPv6Address(host)}]"
            except ValueError:
                raise FetchRejected("bad_url", f"{url!r}: {host!r} is not an IPv6 address") from None
        try:
            dialled = (parse_url(url).host or "").rstrip(".").lower()
        except LocationParseError:
            dialled = ""
        if dialled.strip("[]") != host.strip("[]") and f"[{dialled}]" != host:
            # The URL reads differently to the checker and to the client that would dial it: refuse
            # rather than guess which one an attacker wrote it for.
            raise FetchRejected("bad_url", f"{url!r}: the host is ambiguous")
        port = port or (443 if scheme == "https" else 80)
        allowed = self.policy.allow_hosts if scheme == "https" else self.policy.allow_http_hosts
        if host not in allowed and f"{host}:{port}" not in allowed:
            which = "allow_hosts" if scheme == "https" else "allow_http_hosts"
            raise FetchRejected("host_not_allowed", f"{host}:{port} is not in {self.policy.section}.{which}")

    def timeout(self, read_s: float | None = None) -> urllib3.Timeout:
        """The connect and read timeouts of the policy (``read_s`` overrides the read timeout)."""
        return urllib3.Timeout(
            connect=self.policy.connect_timeout_s,
            read=self.policy.read_timeout_s if read_s is None else read_s,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: certificates and host names verified, system store plus ``ca_file``."""
        ctx = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
        ctx.check_hostname = True
        ctx.load_default_certs()
        ca_file = self.policy.ca_file
        if ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    [(f"{self.policy.section}.ca_file", f"{ca_file}: not a readable PEM certificate ({exc})")]
                ) from None
        return ctx

    def download(self, url: str, sha256: str, size: int, dest: Path, *, cap: int | None = None) -> Path:
        """Fetch ``url`` into ``dest``, which appears only if the body is exactly ``size`` bytes with
        this ``sha256``. ``cap`` (default ``size``) is where the download is cut off as too large.
        Blocking; raises :exc:`FetchRejected`. The URL is checked first."""
        self.check_url(url)
        sha = check_sha256(sha256)
        cap = size if cap is None else min(size, cap)
        deadline = time.monotonic() + self.policy.fetch_deadline_s
        resp = self.open(url)
        complete = False  # the whole body was read: the connection can be reused
        fd, tmp_name = tempfile.mkstemp(prefix=PART_PREFIX, dir=dest.parent)  # created 0600
        tmp = Path(tmp_name)
        try:
            announced = resp.headers.get("Content-Length")
            if announced is not None and announced.isdigit() and int(announced) > cap:
                raise FetchRejected("too_large", f"{url}: the server announces {announced} bytes, {cap} at most")
            received = 0
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                fd = -1
                while True:
                    try:
                        chunk = resp.read1(CHUNK_BYTES, decode_content=False)
                    except Urllib3Error as exc:
                        raise FetchRejected("unreachable", f"{url}: lost after {received} bytes: {exc}") from None
                    if not chunk:
                        complete = True
                        break
                    received += len(chunk)
                    if received > cap:
                        raise FetchRejected(
                            "too_large", f"{url}: more than {cap} bytes sent ({size} announced in the command)"
                        )
                    if time.monotonic() > deadline:
                        raise FetchRejected(
                            "unreachable", f"{url}: not complete after {self.policy.fetch_deadline_s:g} s"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if received != size:
                raise FetchRejected("bad_hash", f"{url}: {received} bytes received, {size} announced")
            got = digest.hexdigest()
            if got != sha:
                raise FetchRejected("bad_hash", f"{url}: sha256 is {got}, the command says {sha}")
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        finally:
            if complete:
                resp.release_conn()
            else:  # never hand a connection with unread body back to the pool
                resp.close()
        log.info("fetched %s (%s bytes) from %s", sha, size, url)
        return dest

    def open(self, url: str) -> Any:
        """GET ``url`` and return the streaming response (status 200), following allowed redirects."""
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self._pool.request("GET", url, preload_content=False, redirect=False, decode_content=False)
            except Urllib3Error as exc:
                raise FetchRejected("unreachable", f"{url}: {network_reason(exc)}") from None
            if resp.status in _REDIRECTS:
                location = resp.headers.get("Location", "")
                resp.drain_conn()
                resp.release_conn()
                if not location:
                    raise FetchRejected("http_error", f"{url}: HTTP {resp.status} without a Location")
                target = urljoin(url, location)
                self.check_url(target)  # a redirect may not lead anywhere a command could not
                log.info("%s redirects to %s", url, target)
                url = target
                continue
            if resp.status != 200:
                reason = resp.reason or ""
                resp.drain_conn()
                resp.release_conn()
                raise FetchRejected("http_error", f"{url}: HTTP {resp.status} {reason}".rstrip())
            return resp
        raise FetchRejected("http_error", f"{url}: more than {MAX_REDIRECTS} redirects")

    def close(self) -> None:
        """Close the pooled connections. Idempotent."""
        self._pool.clear()


def remove_partials(directory: Path) -> None:
    """Delete the temporary files of downloads a crash or a power loss cut short: nothing resumes them."""
    for path in directory.glob(PART_PREFIX + "*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def network_reason(exc: BaseException) -> str:
    """The innermost cause of a urllib3 error, in words (refused, timed out, certificate...)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return network_reason(reason)
    return str(exc) or type(exc).__name__


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable: it is only once the directory entry is on disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()
