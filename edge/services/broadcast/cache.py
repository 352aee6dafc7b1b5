"""Audio files fetched by URL into a content-addressed cache (DESIGN.md §8, ``source.url``).

A ``broadcast.play`` names a file by URL, sha256 and size. The file is downloaded once, checked, and
kept as ``<directory>/<sha256>``; later items with the same hash play it from disk, offline. The rules:

- **Before any I/O** the URL is checked (:meth:`AudioCache.check_url`): ``https://`` to a host in
  ``allow_hosts``, or ``http://`` to a host in ``allow_http_hosts``; no user name or password in it.
- **TLS** is verified (``CERT_REQUIRED``, host name checked) against the system store plus the
  optional ``ca_file``.
- **Bytes are counted as they arrive**: the download stops as soon as more than the announced size
  (or the cap) has come, so a server cannot fill the disk. Redirects are followed (at most
  :data:`MAX_REDIRECTS`) only to URLs that pass the same check.
- **Nothing half-written is ever visible**: the body goes to a temporary file (0600) that is hashed
  while it is written, fsynced, and renamed to its hash only when hash and size match.
- **Pins**: the scheduler pins the files of the items it holds; :meth:`AudioCache.prune` deletes the
  least recently used unpinned files while the cache is over ``cache_max_bytes``. Pins live in memory:
  after a restart the scheduler pins its items again before it prunes.

Every refusal is a :exc:`SourceRejected` whose ``reason`` goes into the ``failed`` event:
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
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url
from urllib3.util.ssl_ import create_urllib3_context

from edge.config.sources import SourcesConfig
from edge.exceptions import ConfigError, EdgeError

log = logging.getLogger(__name__)

#: Redirects followed for one download, each to a URL that passes :meth:`AudioCache.check_url`.
MAX_REDIRECTS = 3

#: Bytes read from the network at a time.
CHUNK_BYTES = 64 * 1024

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PART_PREFIX = ".part-"
_REDIRECTS = (301, 302, 303, 307, 308)


class SourceRejected(EdgeError, ValueError):
    """An audio source that will not be played. ``reason`` is one word for the ``failed`` event."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def check_sha256(sha256: str) -> str:
    """``sha256`` in lower case if it is 64 hex digits; else :exc:`SourceRejected` ``bad_hash``."""
    value = sha256.lower() if isinstance(sha256, str) else ""
    if not _SHA256_RE.fullmatch(value):
        raise SourceRejected("bad_hash", f"{sha256!r} is not a sha256 (64 hex digits)")
    return value


class AudioCache:
    """Downloaded audio files, one per sha256, in ``directory`` (created 0700 if missing).

    Thread-safe: the scheduler may fetch one file while another plays. Two fetches of the same hash
    download it once.
    """

    def __init__(self, directory: Path, settings: SourcesConfig) -> None:
        self.directory = Path(directory)
        self.settings = settings
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._pins: Counter[str] = Counter()
        self._fetching: dict[str, threading.Lock] = {}
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=2,
            retries=False,  # the scheduler decides when to try again; a retry here would hide the reason
            timeout=self.timeout(),
            ssl_context=self.ssl_context(),
            headers={"Accept-Encoding": "identity", "User-Agent": "commune-edge"},
        )
        self._remove_leftovers()

    # -- policy ------------------------------------------------------------------------------------

    def check_url(self, url: str) -> None:
        """Raise :exc:`SourceRejected` (``bad_url`` or ``host_not_allowed``) unless ``url`` may be fetched.

        No I/O: no name is resolved, nothing is dialled.
        """
        if not isinstance(url, str) or not url or len(url) > 2048:
            raise SourceRejected("bad_url", "a URL must be a string of 1 to 2048 characters")
        if any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in url):
            raise SourceRejected("bad_url", f"{url!r} contains spaces, control characters or backslashes")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise SourceRejected("bad_url", f"{url!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http"):
            raise SourceRejected("bad_url", f"{url!r}: only https:// and http:// URLs are fetched")
        if "@" in parts.netloc:
            raise SourceRejected("bad_url", f"{url!r}: a user name or password in the URL is not allowed")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise SourceRejected("bad_url", f"{url!r} names no host")
        if ":" in host:  # urlsplit drops the brackets of an IPv6 address
            try:
                host = f"[{ipaddress.IPv6Address(host)}]"
            except ValueError:
                raise SourceRejected("bad_url", f"{url!r}: {host!r} is not an IPv6 address") from None
        try:
            dialled = (parse_url(url).host or "").rstrip(".").lower()
        except LocationParseError:
            dialled = ""
        if dialled.strip("[]") != host.strip("[]") and f"[{dialled}]" != host:
            # The URL reads differently to the checker and to the client that would dial it: refuse
            # rather than guess which one an attacker wrote it for.
            raise SourceRejected("bad_url", f"{url!r}: the host is ambiguous")
        port = port or (443 if scheme == "https" else 80)
        allowed = self.settings.allow_hosts if scheme == "https" else self.settings.allow_http_hosts
        if host not in allowed and f"{host}:{port}" not in allowed:
            which = "allow_hosts" if scheme == "https" else "allow_http_hosts"
            raise SourceRejected("host_not_allowed", f"{host}:{port} is not in broadcast.sources.{which}")

    def timeout(self, read_s: float | None = None) -> urllib3.Timeout:
        """The connect and read timeouts of the settings (``read_s`` overrides the read timeout)."""
        return urllib3.Timeout(
            connect=self.settings.connect_timeout_s,
            read=self.settings.read_timeout_s if read_s is None else read_s,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: certificates and host names verified, system store plus ``ca_file``."""
        ctx = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
        ctx.check_hostname = True
        ctx.load_default_certs()
        if self.settings.ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.settings.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    [("broadcast.sources.ca_file", f"{self.settings.ca_file}: not a readable PEM certificate ({exc})")]
                ) from None
        return ctx

    @property
    def pool(self) -> urllib3.PoolManager:
        """The connection pool (shared with the live relay, so both use the same TLS rules)."""
        return self._pool

    # -- files -------------------------------------------------------------------------------------

    def path_for(self, sha256: str) -> Path:
        """Where the file with this hash is (or would be) kept."""
        return self.directory / check_sha256(sha256)

    def get(self, sha256: str, *, verify: bool = False) -> Path | None:
        """The cached file with this hash, or None. Counts as a use for the LRU order.

        With ``verify``, the file is hashed again first, and deleted (None returned) if it no longer
        matches: what a careful caller does before reporting a sha256 as played.
        """
        path = self.path_for(sha256)
        try:
            if not path.is_file():
                return None
            if verify and _file_sha256(path) != path.name:
                log.warning("cached file %s no longer matches its hash; deleted", path)
                path.unlink(missing_ok=True)
                return None
            os.utime(path)
        except FileNotFoundError:  # pruned by another thread meanwhile
            return None
        return path

    def fetch(self, url: str, sha256: str, size: int) -> Path:
        """Return the cached file for ``sha256``, downloading it from ``url`` first if needed. Blocking.

        The URL is checked even when the file is cached: a command naming a host that is not allowed
        is refused whatever the cache holds. Raises :exc:`SourceRejected`.
        """
        self.check_url(url)
        sha = check_sha256(sha256)
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise SourceRejected("bad_size", f"size must be a positive number of bytes, got {size!r}")
        if size > self.settings.max_file_bytes:
            raise SourceRejected(
                "too_large",
                f"{size} bytes announced; broadcast.sources.max_file_bytes is {self.settings.max_file_bytes}",
            )
        with self._lock:
            one_at_a_time = self._fetching.setdefault(sha, threading.Lock())
        with one_at_a_time:
            cached = self.get(sha)
            if cached is not None and cached.stat().st_size == size:
                return cached
            return self._download(url, sha, size)

    def pin(self, sha256: str) -> None:
        """Keep the file with this hash through :meth:`prune` (counted: pin twice, unpin twice)."""
        sha = check_sha256(sha256)
        with self._lock:
            self._pins[sha] += 1

    def unpin(self, sha256: str) -> None:
        """Undo one :meth:`pin`; harmless for a hash that is not pinned."""
        sha = check_sha256(sha256)
        with self._lock:
            if self._pins[sha] > 1:
                self._pins[sha] -= 1
            else:
                self._pins.pop(sha, None)

    def pinned(self) -> set[str]:
        """The hashes pinned now."""
        with self._lock:
            return set(self._pins)

    def files(self) -> dict[str, int]:
        """Every cached file: sha256 → size in bytes."""
        out: dict[str, int] = {}
        for path in self.directory.iterdir():
            if _SHA256_RE.fullmatch(path.name):
                with contextlib.suppress(FileNotFoundError):
                    out[path.name] = path.stat().st_size
        return out

    def prune(self) -> list[str]:
        """Delete least recently used unpinned files while the cache is over ``cache_max_bytes``.

        Returns the hashes deleted. Pinned files stay even if they alone are over the cap.
        """
        with self._lock:
            pinned = set(self._pins)
            entries: list[tuple[float, str, int]] = []
            for path in self.directory.iterdir():
                if not _SHA256_RE.fullmatch(path.name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    entries.append((st.st_mtime, path.name, st.st_size))
            total = sum(size for _, _, size in entries)
            removed: list[str] = []
            for _, sha, size in sorted(entries):
                if total <= self.settings.cache_max_bytes:
                    break
                if sha in pinned:
                    continue
                (self.directory / sha).unlink(missing_ok=True)
                total -= size
                removed.append(sha)
        if removed:
            log.info("cache pruned %s files; %s bytes kept", len(removed), total)
        return removed

    def close(self) -> None:
        """Close the pooled connections. Idempotent."""
        self._pool.clear()

    # -- internals ---------------------------------------------------------------------------------

    def _download(self, url: str, sha: str, size: int) -> Path:
        cap = min(size, self.settings.max_file_bytes)
        deadline = time.monotonic() + self.settings.fetch_deadline_s
        resp = self._open(url)
        complete = False  # the whole body was read: the connection can be reused
        fd, tmp_name = tempfile.mkstemp(prefix=_PART_PREFIX, dir=self.directory)  # created 0600
        tmp = Path(tmp_name)
        try:
            announced = resp.headers.get("Content-Length")
            if announced is not None and announced.isdigit() and int(announced) > cap:
                raise SourceRejected("too_large", f"{url}: the server announces {announced} bytes, {cap} at most")
            received = 0
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                fd = -1
                while True:
                    try:
                        chunk = resp.read1(CHUNK_BYTES, decode_content=False)
                    except Urllib3Error as exc:
                        raise SourceRejected("unreachable", f"{url}: lost after {received} bytes: {exc}") from None
                    if not chunk:
                        complete = True
                        break
                    received += len(chunk)
                    if received > cap:
                        raise SourceRejected(
                            "too_large", f"{url}: more than {cap} bytes sent ({size} announced in the command)"
                        )
                    if time.monotonic() > deadline:
                        raise SourceRejected(
                            "unreachable", f"{url}: not complete after {self.settings.fetch_deadline_s:g} s"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if received != size:
                raise SourceRejected("bad_hash", f"{url}: {received} bytes received, {size} announced")
            got = digest.hexdigest()
            if got != sha:
                raise SourceRejected("bad_hash", f"{url}: sha256 is {got}, the command says {sha}")
            final = self.directory / sha
            os.replace(tmp, final)
            _fsync_dir(self.directory)
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
        return final

    def _open(self, url: str) -> Any:
        """GET ``url`` and return the streaming response, following allowed redirects."""
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self._pool.request("GET", url, preload_content=False, redirect=False, decode_content=False)
            except Urllib3Error as exc:
                raise SourceRejected("unreachable", f"{url}: {network_reason(exc)}") from None
            if resp.status in _REDIRECTS:
                location = resp.headers.get("Location", "")
                resp.drain_conn()
                resp.release_conn()
                if not location:
                    raise SourceRejected("http_error", f"{url}: HTTP {resp.status} without a Location")
                target = urljoin(url, location)
                self.check_url(target)  # a redirect may not lead anywhere a command could not
                log.info("%s redirects to %s", url, target)
                url = target
                continue
            if resp.status != 200:
                reason = resp.reason or ""
                resp.drain_conn()
                resp.release_conn()
                raise SourceRejected("http_error", f"{url}: HTTP {resp.status} {reason}".rstrip())
            return resp
        raise SourceRejected("http_error", f"{url}: more than {MAX_REDIRECTS} redirects")

    def _remove_leftovers(self) -> None:
        # A download cut by a crash or power loss leaves its temporary file; nothing can resume it.
        for path in self.directory.glob(_PART_PREFIX + "*"):
            path.unlink(missing_ok=True)


def network_reason(exc: BaseException) -> str:
    """The innermost cause of a urllib3 error, in words (refused, timed out, certificate...)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return network_reason(reason)
    return str(exc) or type(exc).__name__


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()
