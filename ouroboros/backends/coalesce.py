"""Coalescing: concurrent generate calls on one local model become one batch.

Experiment cycles ask for one reply at a time, many cycles at once. A local model (hf, vllm)
is far faster on one batch of N prompts than on N single prompts, so a threaded Generator
actor passes its calls through a `Coalescer`: the first caller to find the model idle runs
everything queued so far as one batch (up to `max_batch` requests) and hands each caller its
own completions; callers that arrive meanwhile queue up for the next batch. Under load,
batches grow by themselves; the caller that finds the model idle waits only `gather_s`
(milliseconds, against seconds of generation) for others arriving at that moment.

API backends do not go through it: their calls are already concurrent, and a batch would make
each caller wait for the slowest request in it.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable

from ouroboros.backends.base import BackendError
from ouroboros.types import Completion, Request


class _Call:
    __slots__ = ("requests", "result", "error", "done")

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests
        self.result: list[Completion] | None = None
        self.error: BaseException | None = None
        self.done = False


class Coalescer:
    def __init__(self, run: Callable[[list[Request]], list[Completion]], max_batch: int,
                 gather_s: float = 0.005) -> None:
        self._run = run
        self.max_batch = max(1, max_batch)
        self.gather_s = gather_s
        self._cv = threading.Condition()
        self._queue: list[_Call] = []
        self._busy = False
        self.batches = 0  # how many backend calls served how many requests: the batching achieved
        self.requests = 0

    def generate(self, requests: list[Request]) -> list[Completion]:
        call = _Call(requests)
        with self._cv:
            self._queue.append(call)
            while not call.done:
                if self._busy:
                    self._cv.wait()
                    continue
                self._busy = True
                if self.gather_s > 0:  # let the calls arriving right now join this batch
                    self._cv.wait(self.gather_s)
                batch = self._take()
                self._cv.release()
                try:
                    self._serve(batch)
                finally:
                    self._cv.acquire()
                    self._busy = False
                    self._cv.notify_all()
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    def _take(self) -> list[_Call]:
        """Queued calls in arrival order, whole, up to max_batch requests (at least one call)."""
        batch, size = [], 0
        while self._queue and (not batch or size + len(self._queue[0].requests) <= self.max_batch):
            call = self._queue.pop(0)
            batch.append(call)
            size += len(call.requests)
        return batch

    def _serve(self, batch: list[_Call]) -> None:
        flat = [r for call in batch for r in call.requests]
        try:
            out = self._run(flat)
            if len(out) != len(flat):
                raise BackendError(f"the backend returned {len(out)} completions for {len(flat)} requests")
        except BaseException as exc:  # every caller in the batch sees the backend's own error
            for call in batch:
                call.error, call.done = exc, True
            return
        self.batches += 1
        self.requests += len(flat)
        at = 0
        for call in batch:
            call.result, call.done = out[at: at + len(call.requests)], True
            at += len(call.requests)

    @contextmanager
    def exclusive(self):
        """Hold the model alone (a weights load): no batch runs meanwhile."""
        with self._cv:
            while self._busy:
                self._cv.wait()
            self._busy = True
        try:
            yield
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()
