"""The audio cache: files fetched by URL over real HTTP(S) on loopback into a content-addressed cache.

The server is ``sim.media_server`` (http.server with a certificate from a commune CA made here by
``edge.pki``, as ``scripts/make-ca`` does), the client is the cache's own urllib3 pool; the files are
real MP3s written by soundfile.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pydantic import ValidationError

from edge import pki
from edge.config.sources import SourcesConfig
from edge.exceptions import ConfigError
from edge.model import problems
from edge.services.broadcast.cache import AudioCache, SourceRejected
from sim.broker import free_port
from sim.media_server import MediaServer


def mp3_bytes(path: Path, seconds: float = 1.0, hz: float = 440.0) -> bytes:
    rate = 44100
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate, format="MP3")
    return path.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Site:
    """A commune media server on HTTPS (certificate from the commune CA) and one on plain HTTP."""

    ca: pki.CommuneCA
    https: MediaServer
    http: MediaServer
    audio: bytes
    workdir: Path

    def cache(self, name: str = "cache", **settings: object) -> AudioCache:
        options: dict[str, object] = {"allow_hosts": ["127.0.0.1"], "ca_file": self.ca.cert_path}
        options.update(settings)
        return AudioCache(self.workdir / name, SourcesConfig.model_validate(options))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    ca = pki.init_ca(tmp_path / "ca", commune="gia-ray")
    cert = pki.issue_broker(ca, "localhost", ips=["127.0.0.1"])  # a serverAuth certificate for the host
    audio = mp3_bytes(tmp_path / "announcement.mp3", seconds=2.0)
    with (
        MediaServer(cert_file=cert.cert_path, key_file=cert.key_path) as https,
        MediaServer() as http,
    ):
        https.add_file("/files/announcement.mp3", audio)
        http.add_file("/files/announcement.mp3", audio)
        yield Site(ca, https, http, audio, tmp_path)


def cache_entries(cache: AudioCache) -> list[str]:
    return sorted(p.name for p in cache.directory.iterdir())


# -- fetching --------------------------------------------------------------------------------------


def test_https_fetch_verifies_and_keeps_the_file_by_its_hash(site: Site) -> None:
    cache = site.cache()
    url = site.https.url("/files/announcement.mp3")

    path = cache.fetch(url, sha(site.audio), len(site.audio))

    assert path == cache.directory / sha(site.audio)
    assert path.read_bytes() == site.audio
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cache_entries(cache) == [sha(site.audio)]  # no temporary file left beside it
    assert sf.info(str(path)).format == "MP3"

    # Asked again: served from disk, the server is not asked.
    asked = len(site.https.requests)
    assert cache.fetch(url, sha(site.audio), len(site.audio)) == path
    assert len(site.https.requests) == asked

    # The cache is only files: a new cache on the same directory (after a restart) has it.
    cache.close()
    again = AudioCache(cache.directory, cache.settings)
    assert again.get(sha(site.audio)) == path
    assert again.get(sha(b"something else")) is None


def test_https_without_the_commune_ca_is_unreachable(site: Site) -> None:
    cache = site.cache(ca_file=None)  # the system store alone does not know the commune CA
    with pytest.raises(SourceRejected) as err:
        cache.fetch(site.https.url("/files/announcement.mp3"), sha(site.audio), len(site.audio))
    assert err.value.reason == "unreachable"
    assert "certificate verify failed" in str(err.value)
    assert cache_entries(cache) == []


def test_https_to_a_name_the_certificate_does_not_carry_is_unreachable(site: Site) -> None:
    # A certificate from the right CA, but for another name: it is not this server's.
    other = pki.issue_broker(site.ca, "media.gia-ray.lan")
    with MediaServer(cert_file=other.cert_path, key_file=other.key_path) as server:
        server.add_file("/files/announcement.mp3", site.audio)
        with pytest.raises(SourceRejected) as err:
            site.cache().fetch(server.url("/files/announcement.mp3"), sha(site.audio), len(site.audio))
    assert err.value.reason == "unreachable"
    assert "IP address mismatch" in str(err.value)


def test_plain_http_needs_its_own_allowlist(site: Site) -> None:
    url = site.http.url("/files/announcement.mp3")
    with pytest.raises(SourceRejected) as err:
        site.cache().fetch(url, sha(site.audio), len(site.audio))
    assert err.value.reason == "host_not_allowed"
    assert "allow_http_hosts" in str(err.value)
    assert site.http.requests == []  # refused before any I/O

    cache = site.cache("http-cache", allow_hosts=[], allow_http_hosts=["127.0.0.1"])
    assert cache.fetch(url, sha(site.audio), len(site.audio)).read_bytes() == site.audio


def test_a_wrong_hash_is_refused_and_nothing_is_kept(site: Site) -> None:
    cache = site.cache()
    with pytest.raises(SourceRejected) as err:
        cache.fetch(site.https.url("/files/announcement.mp3"), sha(b"another file"), len(site.audio))
    assert err.value.reason == "bad_hash"
    assert sha(site.audio) in str(err.value)  # the detail says what arrived
    assert cache_entries(cache) == []


def test_a_size_that_does_not_match_is_a_bad_hash(site: Site) -> None:
    site.https.add_file("/files/short.mp3", site.audio, content_length=None)
    cache = site.cache()
    with pytest.raises(SourceRejected) as err:
        cache.fetch(site.https.url("/files/short.mp3"), sha(site.audio), len(site.audio) + 10)
    assert err.value.reason == "bad_hash"
    assert f"{len(site.audio)} bytes received" in str(err.value)
    assert cache_entries(cache) == []


def test_a_file_announced_over_the_cap_is_refused_without_asking_the_server(site: Site) -> None:
    cache = site.cache(max_file_bytes=len(site.audio) - 1)
    with pytest.raises(SourceRejected) as err:
        cache.fetch(site.https.url("/files/announcement.mp3"), sha(site.audio), len(site.audio))
    assert err.value.reason == "too_large"
    assert site.https.requests == []


def test_a_server_announcing_more_than_the_command_is_refused(site: Site) -> None:
    big = site.audio * 4
    site.https.add_file("/files/big.mp3", big)  # Content-Length says four times the size
    cache = site.cache()
    with pytest.raises(SourceRejected) as err:
        cache.fetch(site.https.url("/files/big.mp3"), sha(site.audio), len(site.audio))
    assert err.value.reason == "too_large"
    assert str(len(big)) in str(err.value)
    assert cache_entries(cache) == []


def test_a_server_sending_more_than_announced_is_cut_off(site: Site) -> None:
    # No Content-Length: the body just goes on. 8 MiB are sent; the command said the MP3's size.
    flood = site.audio + os.urandom(8 * 1024 * 1024)
    site.https.add_file("/files/flood.mp3", flood, content_length=None)
    cache = site.cache()
    with pytest.raises(SourceRejected) as err:
        cache.fetch(site.https.url("/files/flood.mp3"), sha(site.audio), len(site.audio))
    assert err.value.reason == "too_large"
    assert f"more than {len(site.audio)} bytes" in str(err.value)
    assert cache_entries(cache) == []  # the temporary file is gone too


def test_the_byte_cap_holds_against_a_server_that_sends_more(site: Site) -> None:
    flood = os.urandom(256 * 1024)
    site.https.add_file("/files/flood.bin", flood, content_length=None)
    cache = site.cache(max_file_bytes=64 * 1024)
    with pytest.raises(SourceRejected) as err:
        cache.fetch(site.https.url("/files/flood.bin"), sha(flood[: 60 * 1024]), 60 * 1024)
    assert err.value.reason == "too_large"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://media.example.org/a.mp3", "host_not_allowed"),
        ("https://127.0.0.1.example.org/a.mp3", "host_not_allowed"),
        ("https://localhost/a.mp3", "host_not_allowed"),  # the same machine, but not the name allowed
        ("http://127.0.0.1/a.mp3", "host_not_allowed"),  # https only for allow_hosts
        ("https://user:secret@127.0.0.1/a.mp3", "bad_url"),
        ("https://127.0.0.1@media.example.org/a.mp3", "bad_url"),
        ("https://media.example.org\\@127.0.0.1/a.mp3", "bad_url"),  # parsers disagree on such hosts
        ("https://[::1/a.mp3", "bad_url"),
        ("ftp://127.0.0.1/a.mp3", "bad_url"),
        ("file:///etc/passwd", "bad_url"),
        ("https:///a.mp3", "bad_url"),
        ("https://127.0.0.1:99999/a.mp3", "bad_url"),
        ("https://127.0.0.1/a b.mp3", "bad_url"),
        ("", "bad_url"),
    ],
)
def test_urls_that_are_refused_before_any_io(site: Site, url: str, reason: str) -> None:
    cache = site.cache()
    with pytest.raises(SourceRejected) as err:
        cache.check_url(url)
    assert err.value.reason == reason
    with pytest.raises(SourceRejected) as err:
        cache.fetch(url, sha(site.audio), len(site.audio))
    assert err.value.reason == reason
    assert site.https.requests == [] and site.http.requests == []


def test_host_port_entries_allow_that_port_only(site: Site) -> None:
    cache = site.cache(allow_hosts=[f"127.0.0.1:{site.https.port}"])
    cache.check_url(site.https.url("/files/announcement.mp3"))
    with pytest.raises(SourceRejected) as err:
        cache.check_url(f"https://127.0.0.1:{site.https.port + 1}/files/announcement.mp3")
    assert err.value.reason == "host_not_allowed"
    # Host names match without regard to case or a final dot.
    site.cache(allow_hosts=["LocalHost."]).check_url("https://localhost/x.mp3")


def test_a_closed_port_is_unreachable(site: Site) -> None:
    cache = site.cache()
    with pytest.raises(SourceRejected) as err:
        cache.fetch(f"https://127.0.0.1:{free_port()}/a.mp3", sha(site.audio), len(site.audio))
    assert err.value.reason == "unreachable"
    assert "refused" in str(err.value).lower()


def test_http_404_is_an_http_error(site: Site) -> None:
    cache = site.cache()
    with pytest.raises(SourceRejected) as err:
        cache.fetch(site.https.url("/files/missing.mp3"), sha(site.audio), len(site.audio))
    assert err.value.reason == "http_error"
    assert "404" in str(err.value)


def test_redirects_are_followed_only_to_allowed_hosts(site: Site) -> None:
    cache = site.cache()
    moved = site.https.add_redirect("/old/announcement.mp3", "/files/announcement.mp3", status=301)
    assert cache.fetch(moved, sha(site.audio), len(site.audio)).read_bytes() == site.audio

    away = site.https.add_redirect("/away.mp3", "https://media.example.org/announcement.mp3")
    with pytest.raises(SourceRejected) as err:
        site.cache("other").fetch(away, sha(site.audio), len(site.audio))
    assert err.value.reason == "host_not_allowed"
    assert "media.example.org" in str(err.value)

    # A redirect to plain HTTP on the same host is a different scheme, and not allowed either.
    downgrade = site.https.add_redirect("/down.mp3", site.http.url("/files/announcement.mp3"))
    with pytest.raises(SourceRejected) as err:
        site.cache("third").fetch(downgrade, sha(site.audio), len(site.audio))
    assert err.value.reason == "host_not_allowed"


def test_malformed_hash_and_size_are_refused(site: Site) -> None:
    cache = site.cache()
    url = site.https.url("/files/announcement.mp3")
    for bad in ("abc", "z" * 64, sha(site.audio) + "0"):
        with pytest.raises(SourceRejected) as err:
            cache.fetch(url, bad, len(site.audio))
        assert err.value.reason == "bad_hash"
    for size in (0, -1):
        with pytest.raises(SourceRejected) as err:
            cache.fetch(url, sha(site.audio), size)
        assert err.value.reason == "bad_size"
    assert site.https.requests == []


def test_two_fetches_of_one_file_download_it_once(site: Site) -> None:
    cache = site.cache()
    url = site.https.url("/files/announcement.mp3")
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(cache.fetch(url, sha(site.audio), len(site.audio))))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(paths) == 3 and len(set(paths)) == 1
    assert site.https.requests.count("/files/announcement.mp3") == 1


# -- the files on disk -----------------------------------------------------------------------------


def test_prune_deletes_least_recently_used_and_never_pinned(site: Site) -> None:
    files = [os.urandom(3000) for _ in range(4)]
    for i, data in enumerate(files):
        site.https.add_file(f"/files/{i}.bin", data)
    cache = site.cache(max_file_bytes=4096, cache_max_bytes=7000)  # room for two of the four
    paths = [cache.fetch(site.https.url(f"/files/{i}.bin"), sha(d), len(d)) for i, d in enumerate(files)]
    for age, path in enumerate(paths):  # 0 is the oldest use, 3 the newest
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    cache.pin(sha(files[0]))  # the oldest belongs to a scheduled item
    cache.pin(sha(files[0]))  # ... and to a second one
    cache.get(sha(files[1]))  # just played: now the most recent

    removed = cache.prune()

    assert removed == [sha(files[2]), sha(files[3])]
    assert set(cache.files()) == {sha(files[0]), sha(files[1])}

    # Room for one file now. One of the two items that needed the oldest file is done with it.
    cache.unpin(sha(files[0]))
    cache.settings = cache.settings.model_copy(update={"cache_max_bytes": 4096})
    assert cache.prune() == [sha(files[1])]  # the other item still needs the oldest: it stays
    assert set(cache.files()) == {sha(files[0])}

    cache.unpin(sha(files[0]))  # no item needs it any more
    cache.fetch(site.https.url("/files/2.bin"), sha(files[2]), len(files[2]))  # a new item's file
    assert cache.prune() == [sha(files[0])]
    assert set(cache.files()) == {sha(files[2])}


def test_a_crashed_download_leaves_nothing_and_a_damaged_file_is_noticed(site: Site) -> None:
    cache = site.cache()
    path = cache.fetch(site.https.url("/files/announcement.mp3"), sha(site.audio), len(site.audio))
    (cache.directory / ".part-interrupted").write_bytes(b"half a file")
    cache.close()

    cache = AudioCache(cache.directory, cache.settings)  # the next start
    assert cache_entries(cache) == [sha(site.audio)]

    path.write_bytes(site.audio[:-1] + b"\0")  # a flipped byte on the SD card
    assert cache.get(sha(site.audio)) == path  # the cheap look-up trusts the file
    assert cache.get(sha(site.audio), verify=True) is None  # the careful one does not, and deletes it
    assert not path.exists()


# -- configuration ---------------------------------------------------------------------------------


def test_a_ca_file_that_cannot_be_read_is_a_config_error_with_its_key(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    for path in (tmp_path / "missing.pem", tmp_path / "ca.pem"):
        with pytest.raises(ConfigError) as err:
            AudioCache(tmp_path / "cache", SourcesConfig(ca_file=path))
        assert err.value.problems[0][0] == "broadcast.sources.ca_file"


def test_sources_config_normalises_hosts_and_names_bad_entries() -> None:
    settings = SourcesConfig(
        allow_hosts=["Media.Gia-Ray.gov.vn.", "10.0.0.5:8443", "[FD00::5]", "media.gia-ray.gov.vn"]
    )
    assert settings.allow_hosts == ["media.gia-ray.gov.vn", "10.0.0.5:8443", "[fd00::5]"]
    assert SourcesConfig().allow_hosts == []  # nothing is allowed until the commune says so

    for entry, words in [
        ("media gia-ray", "not a host name"),
        ("host:0", "port"),
        ("fd00::5", "brackets"),
        ("https://media.gia-ray.gov.vn", "write the host alone"),
    ]:
        with pytest.raises(ValidationError) as err:
            SourcesConfig(allow_http_hosts=["ok.lan", entry])
        [(key, message)] = problems(err.value, ("broadcast", "sources"))
        assert key == "broadcast.sources.allow_http_hosts[1]"
        assert words in message

    with pytest.raises(ValidationError) as err:
        SourcesConfig(max_file_bytes=10 * 1024 * 1024, cache_max_bytes=1024 * 1024)
    assert "cache_max_bytes" in str(err.value)
