"""The engine behind an asyncio server: one stepping thread, one queue per request.

An HTTP server answers many connections on one asyncio event loop, but ``engine.step()`` is a
blocking model call. ``AsyncEngine`` joins the two as vLLM's AsyncLLM does (vLLM puts the engine in a
separate process; a thread is enough to show the idea):

* one background thread runs ``engine.step()`` while any request is unfinished, and sleeps otherwise;
* one lock makes the event loop's ``add_request`` and the thread's ``step`` take turns on the engine;
* every request has an ``asyncio.Queue``; the thread hands it each update with
  ``loop.call_soon_threadsafe`` (asyncio objects may only be touched from their loop's thread);
* a client that goes away aborts its request (its KV blocks go back to the pool at once), and a
  finished request is released from the engine, so a long-running server does not grow.

    async for update in async_engine.generate(prompt_ids, SamplingParams(max_tokens=32)):
        print(update.text)        # the whole output text so far
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from .engine import Engine
from .sampling import RequestError, SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Update:
    """A request's state after one engine step (taken under the lock, so the server reads no live object)."""

    request_id: str
    text: str                      # the output text so far that is safe to send (Request.text[:Request.sent])
    num_prompt_tokens: int
    num_output_tokens: int
    finished: bool
    finish_reason: str | None = None
    error: str | None = None       # the engine itself failed during this step: not the request's fault


class AsyncEngine:
    """Owns an Engine and steps it in one background thread; see the module docstring."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()          # held for every call into the engine
        self._wake = threading.Event()         # set when there may be work
        self._closing = False
        self._thread: threading.Thread | None = None
        # request id -> (its loop, its queue). Written by the event loop, read by the thread: single dict
        # operations are atomic in CPython, which is all that is needed here.
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Update]]] = {}
        self._to_abort: queue.SimpleQueue[str] = queue.SimpleQueue()   # thread-safe; drained by the thread
        self.num_aborted = 0
        self.num_errors = 0

    # ---- the event loop's side ---------------------------------------------------------------
    def start(self) -> None:
        """Start the stepping thread (generate() does it on first use)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="engine-step", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and abort what is still in flight. The engine stays usable."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the engine thread did not stop within %.0f s", timeout)
            self._thread = None
        with self._lock:
            self._drain_aborts()
            for rid in list(self._queues):
                self._abort_locked(rid)
                self._deliver(Update(rid, "", 0, 0, True, "abort", "The server is shutting down."))

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[Update]:
        """Add a request and yield an Update after every step that gave it a token, the last one finished.

        A request the engine can never serve raises RequestError at the first ``anext()``, before any
        update. Leaving the loop early (a client disconnected, the task was cancelled) aborts the request.
        """
        rid = request_id or f"req-{uuid.uuid4().hex}"
        if rid in self._queues:
            raise RequestError(f"A request with id {rid!r} is still running; use another id.")
        updates: asyncio.Queue[Update] = asyncio.Queue()
        self._queues[rid] = (asyncio.get_running_loop(), updates)
        added = done = False
        try:
            self.start()
            # add_request waits for the lock, which a step may hold: wait in a worker thread, not in the loop.
            # (Cancelled during this wait, the request may still be added: the thread aborts it at its first
            # token, when it finds no queue for it.)
            await asyncio.to_thread(self._add, list(prompt_ids), params, rid)
            added = True
            while not done:
                update = await updates.get()
                done = update.finished
                yield update
        finally:
            self._queues.pop(rid, None)
            if added and not done:
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        """Ask the thread to abort a request (it does so before its next step); never blocks."""
        self._to_abort.put(request_id)
        self._wake.set()

    def _add(self, prompt_ids: list[int], params: SamplingParams, rid: str) -> None:
        with self._lock:
            self.engine.add_request(prompt_ids, params, request_id=rid)   # RequestError goes to the caller
            self._wake.set()

    # ---- the thread's side ---------------------------------------------------------------------
    def _run(self) -> None:
        """Step while there is work; sleep on the event otherwise. Nothing a request does stops this loop."""
        while True:
            self._wake.wait()
            if self._closing:
                return
            with self._lock:
                self._drain_aborts()
                if not self.engine.has_unfinished():
                    self._wake.clear()     # a later add_request (under this lock) sets it again
                    continue
                try:
                    updates = [self._update(out.request_id, out.finished, out.finish_reason)
                               for out in self.engine.step()]
                except Exception as exc:   # a bug in the engine or the model: fail the requests, keep serving
                    log.exception("engine step failed")
                    updates = self._fail_all(exc)
            for update in updates:
                self._deliver(update)

    def _update(self, rid: str, finished: bool, reason: str | None) -> Update:
        req = self.engine.requests[rid]
        # the text the engine has released: it holds back an incomplete character and a possible stop string's start
        update = Update(rid, req.text[:req.sent], len(req.prompt_ids), len(req.output_ids), finished, reason)
        if finished:
            self.engine.release(rid)
        return update

    def _deliver(self, update: Update) -> None:
        entry = self._queues.get(update.request_id)
        if entry is not None:
            loop, updates = entry
            try:
                loop.call_soon_threadsafe(updates.put_nowait, update)
                return
            except RuntimeError:           # that event loop is closed
                pass
        if not update.finished:            # nobody listens any more: stop computing for it
            self.abort(update.request_id)

    def _abort_locked(self, rid: str) -> None:
        req = self.engine.requests.get(rid)
        if req is not None and req.finish_reason is None:
            self.engine.abort(rid)
            self.num_aborted += 1
        self.engine.release(rid)

    def _drain_aborts(self) -> None:
        while True:
            try:
                rid = self._to_abort.get_nowait()
            except queue.Empty:
                return
            self._abort_locked(rid)

    def _fail_all(self, exc: Exception) -> list[Update]:
        """Finish every request in flight with an error: after a failed step its state cannot be trusted."""
        self.num_errors += 1
        failed = []
        for rid, req in list(self.engine.requests.items()):
            if req.finish_reason is None or rid in self._queues:
                self.engine.abort(rid)
                self.engine.release(rid)
                failed.append(Update(rid, req.text, len(req.prompt_ids), len(req.output_ids), True, "error",
                                     f"The engine failed: {type(exc).__name__}: {exc}"))
        return failed
