"""A private ejabberd with its MQTT broker (``mod_mqtt``) for tests: a second MQTT 5 broker besides
Mosquitto, so that the contract (DESIGN.md §4) is not held up by one broker's quirks.

ejabberd is an Erlang node. Each instance runs as its own node, in its own directory, on free ports:
its node name and cookie are fresh, it uses no ``epmd`` (the node listens for Erlang distribution on
a port of its own, ``-erl_epmd_port``), so it never meets the machine's other Erlang nodes (a
RabbitMQ, the Debian ``ejabberd`` service if one runs, another test's ejabberd under ``pytest -n``).
It logs in every client with a password (``auth_method: internal``) and lets each device publish
and subscribe only under its own prefix, as the shipped Mosquitto ACL does
(``scripts/broker/acl.template``); the server identities get the commune's side.

The logins are registered by the node itself as it starts, with the call ``ejabberdctl register``
makes (``ejabberd_auth:try_register``), so a test needs no second Erlang VM per user; ``ctl()`` runs
any other ``ejabberdctl`` command over the private distribution port. The Debian ``ejabberdctl``
wrapper itself is not used: run as root it switches to the ``ejabberd`` user, which cannot read the
test's directory, and it expects ``/etc/ejabberd``.

Same shape as :class:`sim.broker.MosquittoBroker` (``url``, ``start``, ``stop``, ``kill``,
``restart``, ``pause``, ``resume``), so harness code takes either. ``kill()`` and ``start()`` keep
the port, the node and its database: registered users and retained messages survive a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sim.broker import free_port

log = logging.getLogger(__name__)

#: Where Debian's ejabberd keeps its Erlang applications (its ``ejabberdctl`` sets the same ERL_LIBS).
ERL_LIBS = "/usr/lib/x86_64-linux-gnu"


def find_ejabberd() -> str | None:
    """Path of ``erl`` when Debian's ejabberd is installed beside it (None otherwise)."""
    erl = shutil.which("erl")
    if erl is None or not any(Path(ERL_LIBS).glob("ejabberd-*/ebin/mod_mqtt.beam")):
        return None
    return erl


class TopicFilter(str):
    """A topic filter in ejabberd.yml: always written quoted, since ejabberd reads a plain (unquoted)
    YAML key as an Erlang atom, which its topic check then calls a "Malformed topic filter"."""


class _ConfigDumper(yaml.SafeDumper):
    pass


_ConfigDumper.add_representer(
    TopicFilter, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style='"')
)


#: Evaluated by the node once ejabberd has started (cwd: the work directory): register every login of
#: users.eterm with ejabberd_auth:try_register/3, which is what `ejabberdctl register` runs, then
#: write one result per user to "ready", which start() waits for.
_REGISTER_USERS = (
    '{ok, Users} = file:consult("users.eterm"),'
    " B = fun unicode:characters_to_binary/1,"
    " Results = [case ejabberd_auth:try_register(B(U), B(H), B(P)) of"
    " ok -> ok; {error, exists} -> exists; Other -> Other end || {U, H, P} <- Users],"
    ' ok = file:write_file("ready", [io_lib:format("~w~n", [R]) || R <- Results]).'
)


def _codes(text: str) -> str:
    """An Erlang string literal of ``text``: its code points, ``[104,105]``."""
    return "[" + ",".join(str(ord(c)) for c in text) + "]"


def device_acl(root: str = "vn") -> dict[str, dict[TopicFilter, str]]:
    """``mod_mqtt``'s ``access_publish`` and ``access_subscribe``: the shipped Mosquitto ACL in
    ejabberd's terms. ``%u`` is the MQTT user name (a device's id); ``server`` is an access rule that
    allows only the server identities. A topic that no filter matches is denied."""
    own = f"{root}/+/dev/%u/"
    any_device = f"{root}/+/dev/+/"
    publish = {TopicFilter(own + t): "anyone" for t in ("evt/#", "ack", "status", "cfg/reported", "media/#")}
    publish |= {TopicFilter(any_device + t): "server" for t in ("evtack", "mediaack", "cmd/#", "cfg/desired")}
    publish[TopicFilter(f"{root}/+/server/status")] = "server"
    subscribe = {TopicFilter(own + t): "anyone" for t in ("cmd/#", "cfg/desired", "evtack", "mediaack")}
    # Every device follows the collector's presence; the server identities read everything.
    subscribe[TopicFilter(f"{root}/+/server/status")] = "anyone"
    subscribe[TopicFilter("#")] = "server"
    return {"access_publish": publish, "access_subscribe": subscribe}


@dataclass
class EjabberdBroker:
    """One private ejabberd node whose only listener is ``mod_mqtt`` on ``port``."""

    workdir: Path
    #: MQTT user name -> password, registered at every start (a user already there is kept as it is).
    users: Mapping[str, str] = field(default_factory=dict)
    #: The user names that are server identities (collector, command sender): the commune's side.
    servers: Sequence[str] = ("collector",)
    port: int = field(default_factory=free_port)
    root: str = "vn"
    #: The XMPP domain; an MQTT user name without ``@domain`` is a user of this one.
    host: str = "localhost"
    #: ``mod_mqtt`` ``session_expiry``: the longest it keeps a disconnected client's session (a client
    #: asks for its own, and gets the smaller of the two). ejabberd's default is 5 minutes.
    session_expiry_s: int = 3600
    #: ``mod_mqtt`` ``max_queue``: messages queued for one session before it is dropped.
    max_queue: int = 100_000
    #: The listener's ``max_payload_size`` (None: no limit, ejabberd's default).
    max_payload_size: int | None = None
    dist_port: int = field(default_factory=free_port)
    node: str = field(default_factory=lambda: f"edge-test-{os.getpid()}-{secrets.token_hex(4)}@localhost")
    _cookie: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / "ejabberd.log"

    def config(self) -> dict[str, Any]:
        acl = device_acl(self.root)
        listener: dict[str, Any] = {"port": self.port, "ip": "127.0.0.1", "module": "mod_mqtt", "backlog": 1000}
        if self.max_payload_size is not None:
            listener["max_payload_size"] = self.max_payload_size
        return {
            "hosts": [self.host],
            "loglevel": "info",
            "log_rotate_count": 0,
            "listen": [listener],
            "auth_method": "internal",
            "auth_password_format": "scram",
            "acl": {"server": {"user": list(self.servers)}},
            "access_rules": {"server": {"allow": "server"}, "anyone": {"allow": "all"}},
            "modules": {
                "mod_mqtt": {
                    "access_publish": acl["access_publish"],
                    "access_subscribe": acl["access_subscribe"],
                    "session_expiry": self.session_expiry_s,
                    "max_queue": self.max_queue,
                }
            },
        }

    def _env(self) -> dict[str, str]:
        # HOME holds the node's cookie (never on a command line, where `ps` would show it).
        return {
            **os.environ,
            "HOME": str(self.workdir),
            "ERL_LIBS": ERL_LIBS,
            "EJABBERD_CONFIG_PATH": str(self.workdir / "ejabberd.yml"),
            "EJABBERD_LOG_PATH": str(self.log_path),
            "ERL_CRASH_DUMP_BYTES": "0",
            "ERL_CRASH_DUMP": str(self.workdir / "erl_crash.dump"),
        }

    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "spool").mkdir(exist_ok=True)
        cookie = self.workdir / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self._cookie)
            cookie.chmod(0o400)
        # The logins, as Erlang terms read by _REGISTER_USERS: strings as lists of code points, which
        # need no quoting whatever a password holds. Not on the command line, where `ps` shows it.
        users = self.workdir / "users.eterm"
        users.touch(mode=0o600)
        users.write_text("".join(f"{{{_codes(u)},{_codes(self.host)},{_codes(p)}}}.\n" for u, p in self.users.items()))
        (self.workdir / "ejabberd.yml").write_text(yaml.dump(self.config(), Dumper=_ConfigDumper, sort_keys=False))

    def _erl(self, name: str, *args: str) -> list[str]:
        erl = find_ejabberd()
        if erl is None:
            raise FileNotFoundError("ejabberd is not installed (Debian: apt-get install ejabberd)")
        return [erl, "-sname", name, "-erl_epmd_port", str(self.dist_port), "-start_epmd", "false", *args]

    def start(self, timeout: float = 60.0) -> EjabberdBroker:
        self._write_files()
        ready = self.workdir / "ready"
        ready.unlink(missing_ok=True)
        spool = self.workdir / "spool"
        command = self._erl(
            self.node,
            *("-kernel", "inet_dist_use_interface", "{127,0,0,1}", "-noinput"),
            *("-mnesia", "dir", f'"{spool}"', "-s", "ejabberd", "-eval", _REGISTER_USERS),
        )
        out = open(self.workdir / "erl.out", "ab")  # noqa: SIM115 - owned by the process
        # A session of its own, so that a signal meant for the test run (^C) reaches it only through stop().
        self._proc = subprocess.Popen(
            command, stdout=out, stderr=out, env=self._env(), cwd=self.workdir, start_new_session=True
        )
        out.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"ejabberd exited at start: {self._tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"ejabberd was not up within {timeout}s: {self._tail()}")
            time.sleep(0.1)
        # "exists": registered at an earlier start, kept in the node's database.
        refused = [r for r in ready.read_text().split() if r not in ("ok", "exists")]
        if refused:
            self.kill()
            raise RuntimeError(f"ejabberd did not register every user: {refused}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=5):
            pass  # the listener is up (it starts with the application, before the users)
        log.info("ejabberd node %s: mod_mqtt on %s", self.node, self.url)
        return self

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an ``ejabberdctl`` command against this node, e.g. ``ctl("connected_users")`` or
        ``ctl("register", user, host, password)`` for a login added while it runs."""
        name = f"ctl-{secrets.token_hex(4)}@localhost"
        # -dist_listen false: a client node that connects out and listens for nothing.
        command = self._erl(
            name, "-dist_listen", "false", "-hidden", "-noinput", "-s", "ejabberd_ctl", "-extra", self.node, *args
        )
        result = subprocess.run(command, capture_output=True, text=True, env=self._env(), timeout=60, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"ejabberdctl {args[0]} failed: {(result.stdout + result.stderr).strip()}")
        return result

    def _tail(self) -> str:
        text = ""
        for path in (self.workdir / "erl.out", self.log_path):
            if path.exists():
                text += path.read_text(errors="replace")[-2000:]
        return text

    def pause(self) -> None:
        """SIGSTOP: the broker hangs; connections stay open."""
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGCONT)

    def _reap(self) -> None:
        """Whatever is left in the node's process group goes too. (Its helper, erl_child_setup, runs
        in a session of its own and exits by itself when the node dies.)"""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL, as a power cut would: sessions are lost, the on-disk tables stay."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
        self._reap()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        """SIGTERM, which an Erlang node takes as a clean shutdown (``init:stop()``)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a paused node cannot stop
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reap()

    def __enter__(self) -> EjabberdBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
