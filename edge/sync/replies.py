"""Delivers the command journal's replies (``ack``, ``cfg/reported``) to the broker.

A reply leaves the journal only when the broker has acknowledged it (PUBACK), so an ack written just
before a power cut is sent after the restart. Replies go out in the order they were written, which
keeps ``accepted`` ahead of ``succeeded`` for one command.

The outcome of a publish arrives on the link's network thread; it is handed to this sender's own
thread, which does the SQLite work (deleting the delivered reply), so the network thread never waits
for a commit and keepalives and other acknowledgements go on while the SD card is slow.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future

from edge.exceptions import LinkError, MessageRefused, StoreError
from edge.store.journal import CommandJournal, Reply
from edge.supervisor import thread_alive, thread_failure
from edge.sync.link import MqttLink
from edge.topics import Topics

log = logging.getLogger(__name__)

#: A reply refused by the broker is refused again on every try (it is an ACL decision), so after
#: this many refusals it is dropped, with an error in the log and a counter.
MAX_REFUSALS = 3
#: Replies whose refusals are being counted, at most (the oldest count is forgotten first: that reply
#: then gets its few tries again, nothing worse).
REFUSALS_TRACKED = 1000
#: How long a graceful stop waits, at most, for the broker to acknowledge the replies still on their way
#: (an outcome written just before SIGTERM), so they are not sent again after the restart.
DRAIN_S = 2.0


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
        # Publish outcomes, from the network thread; at most one per reply in flight, so bounded
        # by the replies sent (one pass sends at most a page of them per connection).
        self._done: deque[tuple[Reply, BaseException | None]] = deque()
        self._refusals: OrderedDict[int, int] = OrderedDict()
        self._generation = -1
        self._last_id = 0
        self._thread: threading.Thread | None = None
        link.on_connect(self.wake)

    def wake(self) -> None:
        self._wake.set()

    def _on_done(self, reply: Reply, fut: Future[object]) -> None:
        # Network thread: hand over, nothing more.
        self._done.append((reply, fut.exception()))
        self._wake.set()

    def _record_outcomes(self) -> None:
        while self._done:
            reply, exc = self._done.popleft()
            with self._lock:
                self._inflight.discard(reply.id)
            if exc is None:
                self._refusals.pop(reply.id, None)
                self.journal.reply_sent(reply.id)
                self.sent += 1
                continue
            if isinstance(exc, MessageRefused):
                n = self._refusals.pop(reply.id, 0) + 1
                if n >= MAX_REFUSALS:
                    log.error("the broker refuses the reply on %s (%s); dropping it", reply.topic, exc)
                    self.journal.reply_sent(reply.id)
                    self.journal.outbox.bump("replies_refused")
                    continue
                self._refusals[reply.id] = n
                while len(self._refusals) > REFUSALS_TRACKED:
                    self._refusals.popitem(last=False)
            # Not delivered: send it again on the next pass (or the next connection).
            with self._lock:
                self._last_id = min(self._last_id, reply.id - 1)
            self._wake.set()

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
                self._record_outcomes()
                self._pass()
            except StoreError:
                log.exception("reading or recording replies failed")
            except Exception:
                log.exception("sending replies failed")

    def alive(self) -> bool:
        """Whether the sending thread runs (until ``stop()``)."""
        return thread_alive(self._thread)

    @property
    def failure(self) -> BaseException | None:
        """What the sending thread died of, if it did."""
        return thread_failure(self._thread)

    def start(self) -> ReplySender:
        self._thread = threading.Thread(target=self._run, name="replies", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop the sending thread; with ``drain_s``, first give the replies still pending or in flight
        that long to be acknowledged while the link is up. What is not acknowledged stays in the journal
        and goes at the next start, as after a power cut."""
        if drain_s > 0 and self.alive():
            self._drain(drain_s)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self._wake.set()
        while time.monotonic() < deadline and self.link.connected.is_set() and self.alive():
            if not self._busy():
                return
            time.sleep(0.02)
        if self._busy():
            log.info("stopping with replies not yet acknowledged by the broker; they go at the next start")

    def _busy(self) -> bool:
        with self._lock:
            if self._inflight:
                return True
        if self._done:
            return True
        try:
            return bool(self.journal.pending_replies())
        except StoreError:
            return False
