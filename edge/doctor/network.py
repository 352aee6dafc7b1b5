"""The doctor's broker checks: DNS, TCP, the TLS handshake, the MQTT login and a round trip.

The login uses the device's own identity, and a broker set up from the shipped template names every
client by its certificate, so logging in beside a running daemon would take its session over (and
with it the commands queued for it). So the doctor logs in only while the daemon is not running; when
it runs, its own link state (recorded in the store) answers for the login. The session is resumed,
never cleaned, and nothing delivered to the doctor is acknowledged, so whatever the broker queued for
the device is delivered to the daemon again when it connects.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import ssl
import threading
import time
from datetime import datetime
from typing import Any

from edge.doctor.local import CLOCK_FAR_S, Context, _duration
from edge.doctor.report import Finding
from edge.store.host import pid_alive

#: The ports an MQTT broker usually listens on, tried when the configured one does not answer.
USUAL_PORTS = (1883, 8883)


def _daemon_pid(ctx: Context) -> int | None:
    words = (ctx.notes.get("daemon") or "").split()
    if not words or not words[0].isdigit():
        return None
    pid = int(words[0])
    return pid if pid_alive(pid) else None


def check_broker(ctx: Context) -> list[Finding]:
    if ctx.config is None:
        return [Finding("broker", "skip", "not checked: the configuration cannot be read")]
    if ctx.quick:
        return [Finding("broker", "skip", "not checked (--quick: no network round trips)")]
    addr = ctx.config.mqtt.address
    where = f"{addr.host}:{addr.port}"
    found: list[Finding] = []

    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return [
            Finding(
                "broker.dns",
                "fail",
                f"cannot resolve {addr.host}: {exc.strerror}",
                "check the host name in mqtt.broker, the device's network (cable, Wi-Fi) and its DNS server "
                "(/etc/resolv.conf); an IP address works without DNS",
            )
        ]
    addresses = sorted({str(info[4][0]) for info in infos})
    found.append(Finding("broker.dns", "ok", f"{addr.host} is {', '.join(addresses)}"))

    sock, error = _connect(infos, ctx.timeout_s)
    if sock is None:
        found.append(_tcp_failure(addr.host, addr.port, error, ctx.timeout_s, addr.tls))
        return found
    sock.close()
    found.append(Finding("broker.tcp", "ok", f"{where} accepts connections"))

    if addr.tls:
        tls = _tls_handshake(ctx, infos)
        found.append(tls)
        if tls.status == "fail":
            return found

    pid = _daemon_pid(ctx)
    if pid is not None:
        link = (_store_meta(ctx, "link") or "unknown").split()
        if link[0] == "up":
            found.append(
                Finding(
                    "broker.login",
                    "ok",
                    f"the running daemon (pid {pid}) is connected since {link[1] if len(link) > 1 else '?'}; "
                    "not logging in beside it (the broker would hand its session over)",
                )
            )
        else:
            found.append(
                Finding(
                    "broker.login",
                    "warn",
                    f"the running daemon (pid {pid}) is not connected ({' '.join(link)}); the doctor does not "
                    "log in beside it",
                    "see the daemon's reason: journalctl -u commune-edge -n 50; or stop it "
                    "(systemctl stop commune-edge) and run edge doctor again for the login check",
                )
            )
        return found
    found.extend(_login_and_round_trip(ctx))
    return found


def _store_meta(ctx: Context, key: str) -> str | None:
    assert ctx.config is not None
    from edge.exceptions import StoreError
    from edge.store import Outbox

    try:
        with Outbox.open_readonly(ctx.config.db_path) as outbox:
            return outbox.get_meta(key)
    except StoreError:
        return None


def _connect(infos: list[Any], timeout: float) -> tuple[socket.socket | None, OSError | None]:
    error: OSError | None = None
    for family, kind, proto, _name, sockaddr in infos:
        s = socket.socket(family, kind, proto)
        s.settimeout(timeout)
        try:
            s.connect(sockaddr)
            return s, None
        except OSError as exc:
            s.close()
            error = exc
    return None, error


def _answers(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 2.0)):
            return True
    except OSError:
        return False


def _tcp_failure(host: str, port: int, error: OSError | None, timeout: float, tls: bool) -> Finding:
    where = f"{host}:{port}"
    others = [p for p in USUAL_PORTS if p != port and _answers(host, p, timeout)]
    if others:
        other = others[0]
        scheme = "mqtts" if other == 8883 else "mqtt"
        return Finding(
            "broker.port",
            "fail",
            f"nothing answers on port {port} of {host}, but port {other} does: the port in mqtt.broker is wrong",
            f'set mqtt.broker = "{scheme}://{host}:{other}" (1883 is plain MQTT, 8883 MQTT over TLS) if that is '
            "the commune broker, then restart the daemon",
        )
    if isinstance(error, TimeoutError) or (error is not None and error.errno == errno.ETIMEDOUT):
        return Finding(
            "broker.tcp",
            "fail",
            f"no answer from {where} within {timeout:g} s",
            "a firewall drops the connection, the address is wrong, or the server is off: check mqtt.broker, the "
            "network path to the server, and ask the server team whether the broker runs",
        )
    if error is not None and error.errno == errno.ECONNREFUSED:
        return Finding(
            "broker.tcp",
            "fail",
            f"no broker on {where}: connection refused",
            "the broker is not running there, or listens on another port: ask the server team to start it "
            f"(systemctl status mosquitto on the server), and check the port in mqtt.broker "
            f"({'8883 for mqtts://' if tls else '1883 for mqtt://'} usually)",
        )
    reason = error.strerror if error is not None and error.strerror else str(error)
    return Finding(
        "broker.tcp",
        "fail",
        f"cannot connect to {where}: {reason}",
        "check the device's network (ip addr; ping the server) and mqtt.broker",
    )


def _tls_context(ctx: Context) -> ssl.SSLContext:
    assert ctx.config is not None
    tls = ctx.config.mqtt.tls
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(str(tls.cert_file), str(ctx.secret(tls.key_file)))
    return context


def _tls_handshake(ctx: Context, infos: list[Any]) -> Finding:
    assert ctx.config is not None
    addr = ctx.config.mqtt.address
    try:
        context = _tls_context(ctx)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return Finding("broker.tls", "skip", f"cannot set up TLS with the configured files: {exc}", "see tls above")
    sock, error = _connect(infos, ctx.timeout_s)
    if sock is None:
        return Finding("broker.tls", "fail", f"the connection for the handshake failed: {error}", "see broker.tcp")
    try:
        with context.wrap_socket(sock, server_hostname=addr.host) as tls_sock:
            version = tls_sock.version()
            peer = tls_sock.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        return _verify_failure(ctx, exc)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if reason == "WRONG_VERSION_NUMBER" or "wrong version number" in str(exc):
            return Finding(
                "broker.tls",
                "fail",
                f"{addr.host}:{addr.port} does not speak TLS (it is a plain MQTT port)",
                f"use the broker's TLS port (mqtts://{addr.host}:8883 usually), or mqtt:// if the commune "
                "really runs without TLS",
            )
        return Finding(
            "broker.tls",
            "fail",
            f"TLS handshake with {addr.host}:{addr.port} failed: {reason}",
            "the broker refused this device's certificate or the TLS settings differ: check mqtt.tls.cert_file "
            "and key_file against what the commune CA issued",
        )
    except (OSError, TimeoutError) as exc:
        return Finding(
            "broker.tls",
            "fail",
            f"no TLS handshake with {addr.host}:{addr.port}: {exc}",
            "the port answers but does not complete a TLS handshake: is it the broker's TLS port?",
        )
    subject = {str(pair[0]): str(pair[1]) for rdn in peer.get("subject", ()) for pair in rdn}
    return Finding(
        "broker.tls", "ok", f"{version} with {subject.get('commonName', addr.host)}, verified by the configured CA"
    )


def _verify_failure(ctx: Context, exc: ssl.SSLCertVerificationError) -> Finding:
    assert ctx.config is not None
    addr = ctx.config.mqtt.address
    why = exc.verify_message or str(exc)
    ca = ctx.config.mqtt.tls.ca_file
    if exc.verify_code in (19, 20, 21) or "issuer" in why or "self-signed" in why or "self signed" in why:
        return Finding(
            "broker.tls",
            "fail",
            f"the broker's certificate is not signed by a CA this device trusts ({why})",
            f"put the commune CA's certificate (ca.crt from the server team) at mqtt.tls.ca_file"
            f"{f' ({ca})' if ca else ''}; if it is already there, the broker uses a certificate from another CA",
        )
    if exc.verify_code == 62 or "Hostname mismatch" in why or "IP address mismatch" in why:
        return Finding(
            "broker.tls",
            "fail",
            f"the broker's certificate is not for {addr.host} ({why})",
            "use the host name the broker's certificate is issued for in mqtt.broker, or have the commune CA "
            f"issue the broker a certificate that names {addr.host}",
        )
    if exc.verify_code in (9, 10) or "expired" in why or "not yet valid" in why:
        return Finding(
            "broker.tls",
            "fail",
            f"the broker's certificate is outside its validity by this device's clock ({why})",
            "check the clock first (a Pi without a battery clock may boot days behind); if it is right, the "
            "broker needs a new certificate",
        )
    return Finding("broker.tls", "fail", f"the broker's certificate was refused: {why}", "check mqtt.tls.ca_file")


def _login_and_round_trip(ctx: Context) -> list[Finding]:
    """Log in as the device and go through its own topics: the subscriptions it needs are granted, the
    commune server's retained presence arrives, and a non-retained ``status`` is acknowledged."""
    assert ctx.config is not None
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from edge import __version__
    from edge.daemon import link_settings
    from edge.exceptions import ConfigError
    from edge.sync.uplink import status_payload
    from edge.topics import Topics

    config = ctx.config
    try:
        settings = link_settings(config, None)
    except ConfigError as exc:
        return [Finding("broker.login", "fail", str(exc), "make the password file readable (see mqtt.password_file)")]
    topics = Topics(config.mqtt.root, config.device.commune, config.device.id)
    lock = threading.Lock()
    connected = threading.Event()
    closed = threading.Event()
    subscribed = threading.Event()
    presence = threading.Event()
    published = threading.Event()
    state: dict[str, Any] = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with lock:
            state["connack"] = reason
        connected.set()

    def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with lock:
            state.setdefault("disconnect", reason)
        closed.set()

    def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        with lock:
            state["suback"] = list(reasons)
        subscribed.set()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        if message.topic == topics.server_status:
            with lock:
                state["presence"] = bytes(message.payload)
            presence.set()

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with lock:
            state["puback"] = reason
        published.set()

    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv5
    )
    # Never acknowledge: a command queued for the device must reach the daemon, not the doctor.
    client.manual_ack_set(True)
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.address.tls:
        client.tls_set_context(_tls_context(ctx))
    client.on_connect, client.on_disconnect, client.on_subscribe = on_connect, on_disconnect, on_subscribe
    client.on_message, client.on_publish = on_message, on_publish
    props = Properties(PacketTypes.CONNECT)
    # Resume the daemon's session as it left it (same expiry), never clean it.
    props.SessionExpiryInterval = config.mqtt.session_expiry_s
    where = f"{settings.address.host}:{settings.address.port}"
    found: list[Finding] = []
    try:
        client.connect(settings.address.host, settings.address.port, 30, clean_start=False, properties=props)
    except (OSError, ssl.SSLError) as exc:
        return [Finding("broker.login", "fail", f"cannot open the MQTT connection to {where}: {exc}", "see broker.tls")]
    client.loop_start()
    try:
        deadline = time.monotonic() + ctx.timeout_s * 2
        while not connected.is_set() and not closed.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        reason = state.get("connack")
        if reason is None:
            if closed.is_set():
                return [
                    Finding(
                        "broker.login",
                        "fail",
                        f"the broker at {where} closed the connection before answering the login",
                        "with TLS: the broker does not accept this device's certificate (issued by another CA, "
                        "revoked, or for another device); without TLS: the port may expect TLS (mqtts://)",
                    )
                ]
            return [
                Finding(
                    "broker.login",
                    "fail",
                    f"{where} accepted the connection but never answered the MQTT login",
                    "it is not an MQTT broker, or it expects TLS on this port (try mqtts://); ask the server team",
                )
            ]
        if reason.is_failure:
            return [_login_refused(str(reason), config.device.id)]
        found.append(Finding("broker.login", "ok", f"logged in to {where} as {settings.username or config.device.id}"))

        wanted = [topics.cmd_filter, topics.cfg_desired, topics.evtack, topics.server_status]
        client.subscribe([(t, 1) for t in wanted])
        if not subscribed.wait(ctx.timeout_s):
            found.append(
                Finding("broker.roundtrip", "fail", "the broker did not answer the subscription", "ask the server team")
            )
            return found
        refused = [t for t, code in zip(wanted, state["suback"], strict=False) if code.is_failure]
        if refused:
            found.append(
                Finding(
                    "broker.acl",
                    "fail",
                    f"the broker does not let this device read {', '.join(refused)}",
                    "the broker's ACL must be the commune-edge template (scripts/broker/acl.template) with this "
                    "commune and root; ask the server team",
                )
            )
        pid = None
        boot = _boot(config.store.state_dir)
        payload = status_payload(
            False,
            boot,
            __version__,
            list(config.device.roles),
            datetime.now().astimezone().isoformat(timespec="milliseconds"),
        )
        info = client.publish(topics.status, payload, qos=1, retain=False)
        if not published.wait(ctx.timeout_s):
            found.append(
                Finding(
                    "broker.roundtrip",
                    "fail",
                    f"no acknowledgement for a publish to {topics.status}",
                    "ask the server team",
                )
            )
        else:
            code = state.get("puback")
            if code is not None and getattr(code, "is_failure", False):
                found.append(
                    Finding(
                        "broker.acl",
                        "fail",
                        f"the broker refused this device's publish to {topics.status}: {code}",
                        "the ACL must let the device write under its own prefix (scripts/broker/acl.template)",
                    )
                )
        del pid, info
        presence.wait(min(ctx.timeout_s, 3.0))
        raw = state.get("presence")
        if raw is None:
            found.append(
                Finding(
                    "broker.server",
                    "warn",
                    f"no retained {topics.server_status}: the commune server has never announced itself on this broker",
                    "ask the server team whether edge collect (or their server) runs; events wait on the device "
                    "until it does",
                )
            )
        else:
            found.extend(_presence(raw, ctx))
        if not any(f.status == "fail" for f in found):
            found.append(
                Finding(
                    "broker.roundtrip",
                    "ok",
                    f"subscriptions granted, {'the server presence received, ' if raw is not None else ''}"
                    f"a status publish acknowledged",
                )
            )
        return found
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        client.loop_stop()


def _boot(state_dir: Any) -> int:
    try:
        return int((state_dir / "boot").read_text().strip())
    except (OSError, ValueError):
        return 0


def _login_refused(reason: str, device: str) -> Finding:
    lowered = reason.lower()
    if "not authorized" in lowered or "bad user name or password" in lowered:
        return Finding(
            "broker.login",
            "fail",
            f"the broker refused the login: {reason}",
            f"the broker does not know this device as {device!r}: with certificates, install the one the commune "
            "CA issued for this device; with passwords, check mqtt.username and the password file",
        )
    return Finding(
        "broker.login", "fail", f"the broker refused the login: {reason}", "ask the server team what the broker logged"
    )


def _presence(raw: bytes, ctx: Context) -> list[Finding]:
    try:
        data = json.loads(raw)
        online = bool(data["online"])
        ts = datetime.fromisoformat(str(data["ts"])).timestamp()
    except (ValueError, KeyError, TypeError):
        return [
            Finding(
                "broker.server",
                "warn",
                "the server's retained presence is not the contract's JSON",
                "ask the server team",
            )
        ]
    found = [
        Finding(
            "broker.server",
            "ok" if online else "warn",
            f"the commune server says it is {'online' if online else 'offline'} (since {data['ts']})",
            "" if online else "events wait on the device until the server is back; ask the server team",
        )
    ]
    now = time.time()
    if ts > now + CLOCK_FAR_S:
        found.append(
            Finding(
                "clock.offset",
                "fail",
                f"the clock is at least {_duration(ts - now)} behind the commune server's "
                f"(its presence is stamped {data['ts']})",
                "set the time right (timedatectl set-ntp true and let NTP answer, or date -s by hand), "
                "then restart the daemon",
            )
        )
    return found
