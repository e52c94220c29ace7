"""Streams a job's output to the server while terraform runs.

A sender thread posts whatever has accumulated: the first line goes out at once (the
latency users feel after Confirm), later lines batch while a post is in flight and for up
to LINGER_SECONDS after a post with text. Each post has a sequence number; the server
ignores a seq it already has, so a retried post never duplicates lines. Events (e.g. "apply
started") are posted on their own, after the text before them, so the server can tell
preparation output from apply output.

A job's last text does not get a post of its own: `rest()` stops the sender and hands it
back, and the job sends it inside its finish report (one round trip instead of one or two
more at the end of every job, see JobResult.log). Its sequence number follows the posted
ones, so the server stores it idempotently like any post.

An event may also wait (`event(..., hold=seconds)`), gathering the text written meanwhile,
and go with it in one post when the hold is over; when the job ends first, it travels inside
the finish report with that text (`rest()`). With `until_text` the hold ends at the first
text: the warm apply's start (acknowledgement, start time, path) waits for terraform's first
line (at most APPLY_START_HOLD_SECONDS) and goes with it at once, so the person who clicked
Confirm sees that line as soon as terraform writes it (a fixed 0.2 s hold cost up to ~40 ms
there, terraform needing 180-220 ms to its first line); what follows gathers as after any
text post. A plan's first text waits a fixed time (`hold()`, an empty event held): a short
plan's whole log travels inside its finish report.

Secrets are masked before text is queued (agents_app.redaction): a secret split across
two writes is still masked, because the end of a write that could be the start of a secret
waits for the next write (or an event, or close).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from agents_app.agent.client import Client, ServerError
from agents_app.protocol import LogEvents, LogPost
from agents_app.redaction import Redactor

# After a post with text, the next text waits this long for more to join it: terraform
# writes in bursts, and every post is a request (and a transaction) on the server that also
# serves terraform's state backend. The first text, the text after an event (the apply's
# first line after Confirm) and the last text (sent with the result) do not wait.
LINGER_SECONDS = 0.25

_STOP = object()
_REST = object()  # stop, and keep the text after the last post for the caller (see rest())


class LogStream:
    def __init__(self, client: Client, job_id: int, fence: int, on_lost: Callable[[], None] | None = None,
                 redactor: Redactor | None = None, start: bool = True) -> None:
        """With start=False the sender starts at start(): what is written before is queued."""
        self.client = client
        self.redactor = redactor or Redactor(())
        self._redact_lock = threading.Lock()  # the redactor's held-back tail is shared state
        self.on_lost = on_lost
        self.job_id = job_id
        self.fence = fence
        self.seq = 0
        self.lost = False  # the job moved on (409): stop sending
        self._q: queue.Queue = queue.Queue()
        self._rest: list[str] | None = None  # after rest(): the text not posted, in order
        self._rest_events = LogEvents()  # after rest(): an event still held, for the same post
        self._rest_seq = 0
        self._thread = threading.Thread(target=self._run, name=f"log-{job_id}", daemon=True)
        self._start_lock = threading.Lock()
        if start:
            self.start()

    def start(self) -> None:
        """Start the sender (once; close() and rest() start one that was not)."""
        with self._start_lock:
            if self._thread.ident is None:
                self._thread.start()

    def write(self, text: str) -> None:
        if text:
            with self._redact_lock:
                safe = self.redactor.feed(text)
                if safe:
                    self._put_text(safe)

    def _flush_redactor(self) -> None:
        with self._redact_lock:
            rest = self.redactor.flush()
            if rest:
                self._put_text(rest)

    def _put_text(self, text: str) -> None:
        if self._rest is not None:
            self._rest.append(text)  # the sender has stopped: kept for rest()
        else:
            self._q.put(("text", text))

    def event(self, events: LogEvents, hold: float = 0.0, until_text: bool = False) -> None:
        """Post `events` after the text written before them; with `hold`, `hold` seconds
        later, with the text written meanwhile (or inside the finish report, see rest()).
        With `until_text`, the hold ends as soon as text comes: the event goes with the
        first text at once, and the text after it gathers as after any text post."""
        self._flush_redactor()  # the text before the event stays before it
        self._q.put(("event", events, hold, until_text))

    def hold(self, seconds: float) -> None:
        """Gather the text written in the next `seconds` into one post (or, when the job
        ends first, into the finish report): an event with nothing to say, held."""
        self.event(LogEvents(), hold=seconds)

    def close(self, timeout: float = 30) -> None:
        self.start()
        self._flush_redactor()
        self._q.put(_STOP)
        self._thread.join(timeout)

    def rest(self, timeout: float = 30) -> LogPost | None:
        """Stop posting and return the text not posted yet as the next post, for the caller
        to send inside another message (None: nothing left, or the job moved on). Posts in
        flight finish first, so the order holds. Called again (the first message failed), it
        returns the same post with whatever was written since: the server stores a seq once."""
        if self._rest is None:
            self.start()
            self._flush_redactor()
            self._q.put(_REST)
            self._thread.join(timeout)
            if self._rest is None:  # the sender is stuck in a post: leave it to the stream
                return None
            self._rest_seq = self.seq + 1
        self._flush_redactor()
        if self.lost or not (self._rest or self._rest_events != LogEvents()):
            return None
        return LogPost(seq=self._rest_seq, text="".join(self._rest), events=self._rest_events)

    def _post(self, text: str, events: LogEvents) -> None:
        if self.lost:
            return
        self.seq += 1
        post = LogPost(seq=self.seq, text=text, events=events)
        try:
            self.client.call(
                "POST", f"/agent/v1/jobs/{self.job_id}/logs", json=post.model_dump(mode="json", exclude_defaults=True),
                fence=self.fence,
            )
        except ServerError as exc:
            if exc.status == 409:
                self.lost = True
                if self.on_lost is not None:
                    self.on_lost()
        except Exception:  # noqa: BLE001 - logs are best effort; the job result is what matters
            pass

    def _post_held(self, text: str, events: LogEvents) -> None:
        """A held event's post, unless it is an empty hold (see hold()) that gathered nothing."""
        if text or events != LogEvents():
            self._post(text, events)

    def _batch(self, last_text_post: float, held_until: float | None) -> list:
        """The next entries to send: whatever is queued; text that follows a text post by
        less than LINGER_SECONDS waits out the rest of that time for more text to join it
        (an event, rest() or close ends the wait at once). While an event is held (until
        `held_until`), whatever comes is returned as it comes: the caller gathers it."""
        if held_until is None:
            batch = [self._q.get()]
        else:
            try:
                batch = [self._q.get(timeout=max(0.0, held_until - time.monotonic()))]
            except queue.Empty:
                return []
        deadline = last_text_post + LINGER_SECONDS
        while True:
            try:
                batch.append(self._q.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0 or held_until is not None or any(e is _STOP or e is _REST or e[0] != "text" for e in batch):
                return batch  # (the text after an event goes at once, as does everything at the end)
            try:
                batch.append(self._q.get(timeout=left))
            except queue.Empty:
                return batch

    def _run(self) -> None:
        last_text_post = 0.0
        held: tuple[LogEvents, float, bool] | None = None  # an event waiting out its hold (until text?)
        text: list[str] = []  # while an event is held: the text gathered for its post
        while True:
            batch = self._batch(last_text_post, held[1] if held else None)
            if held is None:
                text = []
            stop = False
            for entry in batch:
                if entry is _STOP or entry is _REST:
                    if entry is _REST:
                        # The end: the held event (if any) and the text after it go inside
                        # the finish report.
                        with self._redact_lock:
                            self._rest, self._rest_events = text, held[0] if held else LogEvents()
                        return
                    if held is not None:
                        self._post_held("".join(text), held[0])
                        held, text = None, []
                    stop = True
                    break
                if entry[0] == "text":
                    text.append(entry[1])
                    continue
                _, events, hold, until_text = entry
                if held is not None:  # another event: the held one goes first, with its text
                    self._post_held("".join(text), held[0])
                    held, text = None, []
                elif text:
                    self._post("".join(text), LogEvents())
                    text = []
                if hold > 0:
                    held = (events, time.monotonic() + hold, until_text)
                else:
                    self._post("", events)
                last_text_post = 0.0  # the text after an event goes at once
            if held is not None and not stop:
                if time.monotonic() < held[1] and not (held[2] and text):
                    continue  # still held: keep gathering
                self._post_held("".join(text), held[0])
                last_text_post = time.monotonic() if text else 0.0
                held, text = None, []
            if text:
                self._post("".join(text), LogEvents())
                last_text_post = time.monotonic()
            if stop:
                return
