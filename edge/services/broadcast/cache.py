"""Audio files fetched by URL into a content-addressed cache (DESIGN.md §8, ``source.url``).

A ``broadcast.play`` names a file by URL, sha256 and size. The file is downloaded once, checked, and
kept as ``<directory>/<sha256>``; later items with the same hash play it from disk, offline. How a
file is fetched (the allowlist checked before any I/O, verified TLS, bytes counted as they arrive,
redirects checked, nothing half-written ever visible) is :mod:`edge.fetch`, with the settings of
``[broadcast.sources]``.

- **Pins**: the scheduler pins the files of the items it holds; :meth:`AudioCache.prune` deletes the
  least recently used unpinned files while the cache is over ``cache_max_bytes``. Pins live in memory:
  after a restart the scheduler pins its items again before it prunes.

Every refusal is a :exc:`SourceRejected` whose ``reason`` goes into the ``failed`` event:
``host_not_allowed``, ``bad_url``, ``bad_hash`` (also a malformed sha256), ``bad_size``,
``too_large``, ``unreachable`` (DNS, TCP, TLS, timeouts, a connection cut short), ``http_error``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import threading
from collections import Counter
from pathlib import Path

import urllib3

from edge.config.sources import SourcesConfig
from edge.fetch import (
    MAX_REDIRECTS,
    Fetcher,
    FetchPolicy,
    FetchRejected,
    check_sha256,
    file_sha256,
    network_reason,
    remove_partials,
)

log = logging.getLogger(__name__)

__all__ = ["MAX_REDIRECTS", "AudioCache", "SourceRejected", "check_sha256", "network_reason"]

#: An audio source that will not be played. ``reason`` is one word for the ``failed`` event.
SourceRejected = FetchRejected

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
        self._fetcher = Fetcher(
            FetchPolicy(
                section="broadcast.sources",
                allow_hosts=settings.allow_hosts,
                allow_http_hosts=settings.allow_http_hosts,
                ca_file=settings.ca_file,
                connect_timeout_s=settings.connect_timeout_s,
                read_timeout_s=settings.read_timeout_s,
                fetch_deadline_s=settings.fetch_deadline_s,
            )
        )
        remove_partials(self.directory)

    # -- policy ------------------------------------------------------------------------------------

    def check_url(self, url: str) -> None:
        """Raise :exc:`SourceRejected` (``bad_url`` or ``host_not_allowed``) unless ``url`` may be fetched.

        No I/O: no name is resolved, nothing is dialled.
        """
        self._fetcher.check_url(url)

    def timeout(self, read_s: float | None = None) -> urllib3.Timeout:
        """The connect and read timeouts of the settings (``read_s`` overrides the read timeout)."""
        return self._fetcher.timeout(read_s)

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: certificates and host names verified, system store plus ``ca_file``."""
        return self._fetcher.ssl_context()

    @property
    def pool(self) -> urllib3.PoolManager:
        """The connection pool (shared with the live relay, so both use the same TLS rules)."""
        return self._fetcher.pool

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
            if verify and file_sha256(path) != path.name:
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
            return self._fetcher.download(url, sha, size, self.directory / sha, cap=self.settings.max_file_bytes)

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
        self._fetcher.close()
