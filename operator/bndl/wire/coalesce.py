"""Coalescing of run requests: concurrent ``run`` calls to one worker share one HTTP request.

A scheduler usually dispatches task by task, often many in the same event-loop iteration (when a
frame with several completions frees several slots at once). Sending each in its own request
would cost an HTTP round trip per task; instead, the items of all ``run`` calls made to the same
worker before the loop next runs its callbacks go out as one request (up to ``max_batch`` items),
and the completions are routed back to the calls they belong to. Failures of the shared request
(``NotConnected``, refusals) are raised in every call that still waits on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from bndl.wire.tasks import Completion, TaskItem

Encoded = tuple[TaskItem, bytes]
Outcome = Completion | BaseException
Stream = Callable[[Sequence[Encoded]], AsyncIterator[Completion]]


class Coalescer:
    """Merges concurrent run calls into shared requests made with ``stream``."""

    def __init__(self, stream: Stream, max_batch: int = 1000) -> None:
        self._stream = stream
        self.max_batch = max_batch
        self._batch: list[Encoded] = []
        self._routes: dict[str, asyncio.Queue[Outcome]] = {}
        self._scheduled = False
        self._requests: set[asyncio.Task[None]] = set()

    async def run(self, encoded: Sequence[Encoded]) -> AsyncGenerator[Completion, None]:
        """The completions of ``encoded`` (keys unique among them), as they arrive."""
        outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        for item, blob in encoded:
            if item.key in self._routes or len(self._batch) >= self.max_batch:
                self._flush()  # a key may only appear once per request
            self._batch.append((item, blob))
            self._routes[item.key] = outcomes
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        remaining = {item.key for item, _ in encoded}
        while remaining:
            outcome = await outcomes.get()
            if isinstance(outcome, BaseException):
                raise outcome
            remaining.discard(outcome.key)
            yield outcome

    async def close(self) -> None:
        """Stop the requests in flight; calls still waiting on them raise ``CancelledError``."""
        requests = list(self._requests)
        for request in requests:
            request.cancel()
        await asyncio.gather(*requests, return_exceptions=True)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._batch:
            return
        batch, routes = self._batch, self._routes
        self._batch, self._routes = [], {}
        request = asyncio.ensure_future(self._send(batch, routes))
        self._requests.add(request)  # keep a reference until it is done
        request.add_done_callback(self._requests.discard)

    async def _send(self, batch: list[Encoded], routes: dict[str, asyncio.Queue[Outcome]]) -> None:
        try:
            async for completion in self._stream(batch):
                outcomes = routes.pop(completion.key, None)
                if outcomes is not None:
                    outcomes.put_nowait(completion)
        except BaseException as e:  # handed to every waiting call, which raises it
            for outcomes in {id(q): q for q in routes.values()}.values():
                outcomes.put_nowait(e)
            if not isinstance(e, Exception):
                raise
