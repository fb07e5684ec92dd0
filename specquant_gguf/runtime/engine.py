"""Continuous batching: many generation requests decoded together on one Model's Batch.

    eng = Engine(Model(path, n_seq=4))           # 4 slots
    req = eng.submit(ids, sampling, on_event)      # on_event(piece: str | None, done: bool), worker thread
    req.cancel()                                   # frees the slot at the next step

One worker thread runs steps: requests waiting for a slot take a free one (the slot whose cached
tokens share the longest prefix with the prompt: a follow-up turn evaluates only its new tokens),
then one Batch.eval runs every new prompt and one token of every running request, so the weights
are read once per step for all of them. Each request samples from its own logits with its own
sampler (seed), and its text goes through the same rules as runtime.generate (end of turn,
max_tokens, stop strings held back until they cannot match, whole UTF-8 characters, a full
context ends the answer with finish_reason "length"). Sequences' logits equal a lone Model's, so
a request's text at temperature 0 is the one Model.generate gives.
"""
from __future__ import annotations

import codecs
import threading
from collections import deque
from typing import Callable, Sequence

from ..errors import SpecQuantError
from .generate import Sampling, _held_back, _Sampler

__all__ = ["Engine", "Request"]


class Request:
    """One generation: its prompt ids, sampling, and what it has produced (info as runtime.generate's
    result dict: prompt_tokens, completion_tokens, finish_reason)."""

    def __init__(self, ids: Sequence[int] | Callable[[], Sequence[int]], s: Sampling,
                 on_event: Callable[[str | None, bool], None],
                 on_ready: Callable[[BaseException | None], None] | None = None) -> None:
        self.prepare = ids if callable(ids) else None
        self.ids = None if callable(ids) else list(ids)
        self.s = s
        self.on_event = on_event
        self.on_ready = on_ready
        self.info = {"prompt_tokens": len(self.ids or ()), "completion_tokens": 0, "finish_reason": "length"}
        self.error: BaseException | None = None
        self.cancelled = False
        self.done = False
        self.slot = -1
        self._sampler: _Sampler | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text, self._shown = "", 0
        self.prefilled = 0  # prompt tokens the slot holds (after prefix reuse)

    def cancel(self) -> None:
        self.cancelled = True

    # text rules of runtime.generate._pieces
    def _add(self, piece: bytes) -> tuple[str, bool]:
        """Appends a token's bytes; returns (text safe to show now, stopped by a stop string)."""
        self._text += self._decoder.decode(piece)
        stops = self.s.stop
        cut = min((i for i in (self._text.find(x, max(0, self._shown - len(x))) for x in stops) if i >= 0), default=-1)
        if cut >= 0:
            out = self._text[self._shown:cut] if cut > self._shown else ""
            self._shown = len(self._text)
            return out, True
        ready = len(self._text) - _held_back(self._text, stops)
        if ready > self._shown:
            out, self._shown = self._text[self._shown:ready], ready
            return out, False
        return "", False

    def _flush(self) -> str:
        self._text += self._decoder.decode(b"", final=True)
        out = self._text[self._shown:]
        self._shown = len(self._text)
        return out


class Engine:
    """Schedules Requests on model.batch (a Model made with n_seq = the number of slots)."""

    def __init__(self, model) -> None:
        if model.batch is None:
            raise SpecQuantError("Engine needs a Model made with n_seq >= 1")
        self.model = model
        self.batch = model.batch
        self.n_slots = self.batch.n_seq
        self.slots: list[Request | None] = [None] * self.n_slots
        self.queue: deque[Request] = deque()
        self._cv = threading.Condition()
        self._stop = False
        self.steps = 0
        self.steps_batched = 0  # steps that ran two or more sequences at once
        self._thread = threading.Thread(target=self._loop, name="specquant-engine", daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------------------------------
    def submit(self, ids: Sequence[int] | Callable[[], Sequence[int]], s: Sampling,
               on_event: Callable[[str | None, bool], None],
               on_ready: Callable[[BaseException | None], None] | None = None) -> Request:
        """Queues a request. ids: the prompt's token ids, or a function that makes them (called on the
        worker thread, which owns the model: tokenizing there never waits for a step). on_ready(None)
        once the prompt is made, on_ready(exc) when making it failed (the request is then dropped);
        on_event(piece, done) for the text, done=True once (req.error tells a failure)."""
        if not callable(ids) and not ids:
            raise SpecQuantError("the prompt is empty (no tokens)")
        r = Request(ids, s, on_event, on_ready)
        with self._cv:
            if self._stop:
                raise SpecQuantError("the engine is stopped")
            self.queue.append(r)
            self._cv.notify()
        return r

    def cancel(self, r: Request) -> None:
        with self._cv:
            r.cancel()
            self._cv.notify()

    @property
    def busy(self) -> int:
        return sum(r is not None for r in self.slots)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join()

    # -- the worker ----------------------------------------------------------------------------------
    def _finish(self, r: Request, error: BaseException | None = None) -> None:
        if r.done:
            return
        r.done = True
        r.error = error
        if r._sampler is not None:
            r._sampler.close()
        if r.slot >= 0 and self.slots[r.slot] is r:
            self.slots[r.slot] = None
        tail = r._flush() if error is None and not r.cancelled else ""
        try:
            r.on_event(tail or None, True)
        except Exception:  # a callback must not kill the engine
            pass

    def _place(self) -> list[Request]:
        """Waiting requests into free slots (longest shared prefix first); returns the new ones."""
        new = []
        with self._cv:
            for i, r in enumerate(self.slots):
                if r is not None and r.cancelled:
                    self._finish(r)
            live = deque()
            for r in self.queue:
                if r.cancelled:
                    self._finish(r)
                else:
                    live.append(r)
            self.queue = live
            while self.queue and self.queue[0].ids is not None and None in self.slots:
                r = self.queue.popleft()
                free = [i for i, x in enumerate(self.slots) if x is None]
                held = {i: self.batch.tokens(i) for i in free}

                def shared(i: int) -> int:
                    n, h = 0, held[i]
                    while n < len(h) and n < len(r.ids) and h[n] == r.ids[n]:
                        n += 1
                    return n
                best = max(free, key=shared)
                keep = min(shared(best), len(r.ids) - 1)  # the last prompt token runs again for its logits
                r.slot = best
                self.slots[best] = r
                self.batch.set_n_past(best, keep)
                r.prefilled = keep
                new.append(r)
        return new

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self.queue and all(r is None for r in self.slots):
                    self._cv.wait()
                if self._stop:
                    for r in list(self.queue) + [x for x in self.slots if x is not None]:
                        self._finish(r, SpecQuantError("the server is shutting down"))
                    return
            try:
                self._step()
            except BaseException as exc:  # noqa: BLE001 - every running request learns of it
                with self._cv:
                    for r in [x for x in self.slots if x is not None]:
                        self._finish(r, exc)

    def _prepare(self) -> None:
        """Makes the prompts of newly queued requests (their errors are reported at once)."""
        with self._cv:
            todo = [r for r in self.queue if r.ids is None]
        failed = []
        for r in todo:
            try:
                r.ids = list(r.prepare())
                if not r.ids:
                    raise SpecQuantError("the prompt is empty (no tokens)")
                r.info["prompt_tokens"] = len(r.ids)
                err = None
            except BaseException as exc:  # noqa: BLE001 - reported to the request
                err = exc
                failed.append(r)
            if r.on_ready is not None:
                try:
                    r.on_ready(err)
                except Exception:
                    pass
        if failed:
            with self._cv:
                for r in failed:
                    r.done = True
                    r.error = r.error or SpecQuantError("the prompt could not be made")
                self.queue = deque(r for r in self.queue if r not in failed)

    def _step(self) -> None:
        self._prepare()
        new = self._place()
        for r in new:
            try:
                r._sampler = _Sampler(r.s)
            except BaseException as exc:  # noqa: BLE001
                self._finish(r, exc)
        seqs: list[int] = []
        toks: list[int] = []
        order: list[Request] = []
        for i, r in enumerate(self.slots):
            if r is None or r.done:
                continue
            if r in new:
                feed = r.ids[r.prefilled:]
            else:
                feed = [r._last]
            seqs += [i] * len(feed)
            toks += feed
            order.append(r)
        if not order:
            return
        logits = self.batch.eval(seqs, toks)  # the last token of each sequence
        self.steps += 1
        self.steps_batched += len(order) > 1
        m = self.model
        n_ctx = m.n_ctx
        for r, lg in zip(order, logits):
            if r.cancelled:
                self._finish(r)
                continue
            try:
                t = r._sampler.sample(lg)
                if m.is_eog(t):
                    r.info["finish_reason"] = "stop"
                    self._finish(r)
                    continue
                r._sampler.accept(t)
                r.info["completion_tokens"] += 1
                piece, stopped = r._add(m.token_to_piece(t))
                if stopped:
                    r.info["finish_reason"] = "stop"
                    if piece:
                        r.on_event(piece, False)
                    r._text = r._text[:0]  # nothing more to show
                    self._finish(r)
                    continue
                if piece:
                    r.on_event(piece, False)
                if r.s.max_tokens >= 0 and r.info["completion_tokens"] >= r.s.max_tokens:
                    self._finish(r)
                    continue
                if self.batch.n_past(r.slot) >= n_ctx:
                    self._finish(r)  # context full: the answer ends here ("length")
                    continue
                r._last = t
            except BaseException as exc:  # noqa: BLE001
                self._finish(r, exc)
