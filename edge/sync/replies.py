"""Delivers the command journal's replies (``ack``, ``cfg/reported``) to the broker.

A reply leaves the journal only when the broker has acknowledged it (PUBACK), so an ack written just
before a power cut is sent after the restart. Replies go out in the order they were written, which
keeps ``accepted`` ahead of ``succeeded`` for one command.
"""

from __future__ import annotations

import functools
import logging
import threading
from concurrent.futures import Future

from edge.exceptions import LinkError, MessageRefused, StoreError
from edge.store.journal import CommandJournal, Reply
from edge.sync.link import MqttLink
from edge.topics import Topics

log = logging.getLogger(__name__)

#: A reply refused by the broker is refused again on every try (it is an ACL decision), so after
#: this many refusals it is dropped, with an error in the log and a counter.
MAX_REFUSALS = 3


class ReplySender:
    """Sends pending replies whenever the link is up; ``wake()`` after queueing one."""

    def __init__(self, journal: CommandJournal, link: MqttLink, topics: Topics) -> None:
        self.journal = journal
        self.link = link
        self.topics = topics
        self.sent = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self._refusals: dict[int, int] = {}
        self._generation = -1
        self._last_id = 0
        self._thread: threading.Thread | None = None
        link.on_connect(self.wake)

    def wake(self) -> None:
        self._wake.set()

    def _on_done(self, reply: Reply, fut: Future[object]) -> None:
        with self._lock:
            self._inflight.discard(reply.id)
        exc = fut.exception()
        try:
            if exc is None:
                self.journal.reply_sent(reply.id)
                self.sent += 1
                return
            if isinstance(exc, MessageRefused):
                n = self._refusals[reply.id] = self._refusals.get(reply.id, 0) + 1
                if n >= MAX_REFUSALS:
                    log.error("the broker refuses the reply on %s (%s); dropping it", reply.topic, exc)
                    self.journal.reply_sent(reply.id)
                    self.journal.outbox.bump("replies_refused")
                    return
            # Not delivered: send it again on the next pass (or the next connection).
            with self._lock:
                self._last_id = min(self._last_id, reply.id - 1)
            self._wake.set()
        except StoreError:
            log.exception("could not record a reply as sent")

    def _pass(self) -> None:
        if not self.link.connected.is_set():
            return
        if self.link.generation != self._generation:
            self._generation = self.link.generation
            with self._lock:
                self._last_id = 0
                self._inflight.clear()
        while not self._stop.is_set():
            with self._lock:
                after = self._last_id
            batch = self.journal.pending_replies(after)
            if not batch:
                return
            for reply in batch:
                with self._lock:
                    self._last_id = max(self._last_id, reply.id)
                    if reply.id in self._inflight:
                        continue
                    self._inflight.add(reply.id)
                fut = self.link.publish(self.topics.prefix + reply.topic, reply.payload, qos=1, retain=reply.retain)
                fut.add_done_callback(functools.partial(self._on_done, reply))
                if fut.done() and isinstance(fut.exception(), LinkError) and not self.link.connected.is_set():
                    return

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(5.0)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._pass()
            except StoreError:
                log.exception("reading replies failed")
            except Exception:
                log.exception("sending replies failed")

    def start(self) -> ReplySender:
        self._thread = threading.Thread(target=self._run, name="replies", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
