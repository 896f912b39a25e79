"""Running dispatched tasks: from a decoded run request to completion frames on its stream.

Everything a task needs happens on its own thread, off the event loop: unpickling its function
and arguments, resolving the :class:`~bndl.wire.refs.RemoteRef` among them (from the local store,
or from peers through the event loop), running it inside a task context, pickling the outcome and
keeping the result. The loop only routes ready frames to the stream of the request that asked.

Lanes (:mod:`bndl.worker.lanes`): a run sent with a lane waits until one of its lane's slots is
free, so the scheduler can dispatch ahead without more runs of a job running at once than its
``concurrency``. A waiting run that is cancelled ends at once, with ``TaskCancelled``.

Cancellation: a key that is running gets ``TaskCancelled`` raised in its thread; a key that is not
running (yet) is remembered for ``cancel_memory`` seconds, so a run request that arrives after
its cancel (the race) is answered with ``TaskCancelled`` without running anything.

Orphans: when the client of a run request goes away (the driver, or the operator holding it,
restarted), its tasks are not cancelled: they keep running as orphans for ``orphan_grace``
seconds, so that a new driver can adopt them (``POST /v1/attach``). An orphan that finishes keeps
its completion frame as *undelivered* until a driver attaches to it or the grace period (counted
from when its stream went away) ends; an orphan still running then is cancelled and forgotten.
Orphans and undelivered frames live in insertion-ordered maps whose fronts expire first, so the
bookkeeping is O(1) per run; expiry is checked on each request and by a periodic sweep.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from bndl.execute.exceptions import DependenciesFailed, NotConnected, TaskCancelled
from bndl.wire import channel, frames
from bndl.wire.client import WorkerClient
from bndl.wire.errors import RunNotFound
from bndl.wire.refs import RemoteRef, find_refs, replace_refs
from bndl.wire.tasks import DONE, EncodedTask, Fetched, encode_error, encode_result, load_result
from bndl.worker import tasklogs, threads
from bndl.worker.context import WorkerInfo, running_on
from bndl.worker.lanes import Lanes
from bndl.worker.store import ResultStore
from bndl.worker.threads import Job, TaskThreads

log = logging.getLogger(__name__)

HEARTBEAT_FRAME = frames.encode(("heartbeat",))
MAX_UNACKED = 100_000
"""Completions a channel keeps until its client acknowledges them (the oldest are dropped)."""
MOVED = channel.MOVED
"""A channel frame ``("moved", key)``: run ``key`` was taken over by another driver (attach)."""

_REF_NAME = RemoteRef.__name__.encode()
"""A pickled RemoteRef names its class: a task blob without the name holds no refs."""

_CANCEL_POLL = 0.1
"""Seconds between checks for a cancel while a task thread waits for its inputs."""


class Stream:
    """The completion frames of one run (or attach) request, waiting to be written to its response.

    Frames are kept with their keys until delivered, so that the frames of a request whose client
    went away can be kept as undelivered. On a request's stream a frame counts as delivered once
    its write returned; on a channel's (``tells_moves``) only once the client acknowledged it
    (an ``ack`` frame): a completion written just as the driver went away is not lost.
    """

    __slots__ = ("chunks", "event", "jobs", "outstanding", "tells_moves", "unacked", "unconfirmed")

    def __init__(self, tells_moves: bool = False) -> None:
        self.tells_moves = tells_moves
        """A channel's stream, which lasts: a run moved away is told with a ``moved`` frame
        (a request's stream ends instead, once nothing is outstanding), and the client
        acknowledges the completions it received."""
        self.chunks: list[tuple[str, bytes]] = []  # key "": a frame that is no completion
        self.unconfirmed: list[tuple[str, bytes]] = []  # taken, but their write has not returned
        self.unacked: dict[str, bytes] = {}  # written on a channel, not acknowledged yet
        self.event = asyncio.Event()
        self.jobs: dict[str, TaskJob] = {}
        self.outstanding = 0

    def push(self, key: str, frame: bytes) -> None:
        self.chunks.append((key, frame))
        self.outstanding -= 1
        self.event.set()

    def release(self, key: str) -> None:
        """Stop waiting for ``key``: its job moved to another stream."""
        if self.jobs.pop(key, None) is not None:
            if self.tells_moves:
                self.chunks.append(("", frames.encode((MOVED, key))))
            self.outstanding -= 1
            self.event.set()

    async def wait(self, timeout: float) -> None:
        """Until a frame is ready or ``timeout`` seconds have passed."""
        try:
            async with asyncio.timeout(timeout):
                await self.event.wait()
        except TimeoutError:
            pass

    def take(self) -> bytes:
        """The frames ready to write; call :meth:`written` once their write returned."""
        self.event.clear()
        self.unconfirmed = self.chunks
        self.chunks = []
        return b"".join(frame for _, frame in self.unconfirmed)

    def written(self) -> None:
        if self.tells_moves:
            unacked = self.unacked
            for key, frame in self.unconfirmed:
                if key:
                    unacked[key] = frame
            while len(unacked) > MAX_UNACKED:  # a client that never acknowledges: bounded
                del unacked[next(iter(unacked))]
        self.unconfirmed = []

    def acked(self, keys: Iterable[str]) -> None:
        """The client received the completions of ``keys``."""
        for key in keys:
            self.unacked.pop(key, None)

    def undelivered(self) -> list[tuple[str, bytes]]:
        """The completion frames that may not have reached the client."""
        frames_ = [*self.unacked.items(), *self.unconfirmed, *self.chunks]
        return [(key, frame) for key, frame in frames_ if key]


class TaskJob(Job):
    """One dispatched task on its way through a task thread."""

    def __init__(self, runner: TaskRunner, task: EncodedTask, stream: Stream) -> None:
        self.runner = runner
        self.task = task
        self.stream: Stream | None = stream  # None while orphaned
        self.cancelled = False
        self.expired = False  # an orphan cancelled at the end of its grace period

    def __repr__(self) -> str:
        return f"TaskJob({self.task.key!r})"

    def run(self) -> Any:
        if self.cancelled:
            raise TaskCancelled(f"task {self.task.key} was cancelled")
        # ended in done(), which no interrupt reaches: a thread never keeps a stale capture
        tasklogs.begin(self.runner.logs.open(self.task.key))
        fn, args, kwargs = self.task.decode()
        if _REF_NAME in self.task.blob:  # else no RemoteRef was pickled: nothing to resolve
            args, kwargs = self.runner.resolve(args, kwargs, self)
        with running_on(self.runner.info):
            return fn(*args, **kwargs)

    def done(self, ok: bool, value: Any) -> TaskJob | None:
        key = self.task.key
        capture = tasklogs.end()
        blob = b""
        if ok:
            try:
                if self.task.reply:
                    blob = encode_result(key, value)
            except Exception as e:
                ok, value = False, e
            else:
                if self.task.keep:
                    self.runner.store.put(key, value)
        if not ok:
            output = capture.tail() if capture is not None else ""
            blob = encode_error(key, _without_own_frames(value), output)
        frame = frames.encode((DONE, key, ok, blob))
        # The run's slot goes to the next waiting run of its lane, which this thread runs now.
        following = self.runner.lanes.ended(self.task)
        self.runner.loop.call_soon_threadsafe(self.runner.finished, self, frame)
        return following


class CallJob(Job):
    """A synchronous ``/v1/call``: runs like a task, answers a future on the loop."""

    def __init__(
        self,
        runner: TaskRunner,
        call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]],
        future: asyncio.Future[tuple[bool, bytes]],
    ) -> None:
        self.runner = runner
        self.call = call
        self.future = future

    def run(self) -> Any:
        fn, args, kwargs = self.call
        with running_on(self.runner.info):
            return fn(*args, **kwargs)

    def done(self, ok: bool, value: Any) -> None:
        if ok:
            try:
                blob = encode_result("call", value)
            except Exception as e:
                ok, value = False, e
        if not ok:
            name = getattr(self.call[0], "__qualname__", "call")
            blob = encode_error(name, _without_own_frames(value))
        self.runner.loop.call_soon_threadsafe(_set_result, self.future, (ok, blob))


_OWN_FILES = frozenset({__file__, threads.__file__})


def _without_own_frames(error: BaseException) -> BaseException:
    """The error with the worker's own frames cut from the head of its traceback, so the remote
    traceback starts in the task's code."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _OWN_FILES:
        tb = tb.tb_next
    return error.with_traceback(tb)


def _set_result(future: asyncio.Future[tuple[bool, bytes]], outcome: tuple[bool, bytes]) -> None:
    if not future.done():
        future.set_result(outcome)


class TaskRunner:
    """The worker's running tasks, orphans, remembered cancels, result store and peer clients."""

    def __init__(
        self,
        info: WorkerInfo,
        loop: asyncio.AbstractEventLoop,
        peers: Callable[[str, str], WorkerClient],
        cancel_memory: float = 300.0,
        cancel_memory_size: int = 100_000,
        orphan_grace: float = 600.0,
        undelivered_size: int = 100_000,
    ) -> None:
        self.info = info
        self.loop = loop
        self.store = ResultStore()
        self.logs = tasklogs.TaskLogs()
        self.threads = TaskThreads()
        self.lanes: Lanes[TaskJob] = Lanes()
        self.running: dict[str, TaskJob] = {}
        self.runs_finished = 0  # for the metrics: runs that ended, whatever their outcome
        self._peers = peers
        self.cancel_memory = cancel_memory
        self.cancel_memory_size = cancel_memory_size
        self._cancelled: OrderedDict[str, float] = OrderedDict()
        self.orphan_grace = orphan_grace
        self.undelivered_size = undelivered_size
        self._orphans: OrderedDict[str, float] = OrderedDict()  # running orphan -> its deadline
        # finished orphan -> (deadline, its completion frame), in the order they finished
        self._undelivered: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    # --- on the event loop --------------------------------------------------------------------

    def start(self, tasks: Iterable[EncodedTask], stream: Stream | None = None) -> Stream:
        """Start the tasks of one run request (or channel message); their frames arrive on
        ``stream`` (a new one by default), which is returned."""
        self.expire()
        stream = stream if stream is not None else Stream()
        for task in tasks:
            stream.outstanding += 1
            if self._was_cancelled(task.key):
                cancelled = TaskCancelled(f"task {task.key} was cancelled before it started")
                stream.push(task.key, _failure_frame(task.key, cancelled))
            elif task.key in self.running:
                duplicate = RuntimeError(f"task {task.key} is already running on this worker")
                stream.push(task.key, _failure_frame(task.key, duplicate))
            else:
                self._undelivered.pop(task.key, None)  # run again: an earlier outcome is stale
                job = TaskJob(self, task, stream)
                self.running[task.key] = job
                stream.jobs[task.key] = job
                self.lanes.admit(task, job, self.threads.submit)
        return stream

    def attach(self, keys: Iterable[str]) -> Stream:
        """A stream for the outcomes of runs started earlier: undelivered frames at once, running
        tasks when they finish (moved from the stream they were on), ``RunNotFound`` otherwise."""
        now = self.expire()
        stream = Stream()
        for key in dict.fromkeys(keys):
            stream.outstanding += 1
            undelivered = self._undelivered.pop(key, None)
            job = self.running.get(key)
            if undelivered is not None and undelivered[0] >= now:
                stream.push(key, undelivered[1])
            elif job is not None and not job.expired:
                self._move(job, stream)
            else:
                stream.push(key, _failure_frame(key, RunNotFound(key, self.info.name)))
        return stream

    def _move(self, job: TaskJob, stream: Stream) -> None:
        key = job.task.key
        if job.stream is None:
            self._orphans.pop(key, None)
        else:
            job.stream.release(key)
        job.stream = stream
        stream.jobs[key] = job

    def orphan(self, stream: Stream) -> None:
        """The client of ``stream`` went away: its tasks run on as orphans for the grace period,
        and frames it may not have received are kept as undelivered."""
        deadline = time.monotonic() + self.orphan_grace
        for key, frame in stream.undelivered():
            self._keep_undelivered(key, deadline, frame)
        stream.chunks, stream.unconfirmed, stream.unacked = [], [], {}
        for key, job in stream.jobs.items():
            job.stream = None
            self._orphans[key] = deadline
        stream.jobs.clear()

    def finished(self, job: TaskJob, frame: bytes) -> None:
        key = job.task.key
        self.runs_finished += 1
        if self.running.get(key) is job:
            del self.running[key]
        if job.stream is not None:
            job.stream.jobs.pop(key, None)
            job.stream.push(key, frame)
            return
        deadline = self._orphans.pop(key, None)
        if deadline is not None and not job.expired:
            self._keep_undelivered(key, deadline, frame)

    def _keep_undelivered(self, key: str, deadline: float, frame: bytes) -> None:
        self._undelivered[key] = (deadline, frame)
        self._undelivered.move_to_end(key)
        while len(self._undelivered) > self.undelivered_size:
            self._undelivered.popitem(last=False)

    def expire(self) -> float:
        """Cancel the orphans and drop the undelivered frames whose grace period is over.

        Both maps are in (roughly) deadline order, so only their fronts are looked at: O(1) per
        run. An undelivered frame behind an unexpired one may outlive its deadline a little (at
        most by the grace period); lookups check the exact deadline. Returns the time used.
        """
        now = time.monotonic()
        orphans = self._orphans
        while orphans:
            key, deadline = next(iter(orphans.items()))
            if deadline >= now:
                break
            del orphans[key]
            job = self.running.get(key)
            if job is not None and job.stream is None:
                log.info("orphaned task %s outlived its grace period: cancelled", key)
                job.expired = True
                self._cancel_job(job)
        undelivered = self._undelivered
        while undelivered and next(iter(undelivered.values()))[0] < now:
            undelivered.popitem(last=False)
        return now

    async def sweep(self, interval: float) -> None:
        """Expire orphans every ``interval`` seconds, also when no request comes in."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.expire()
            except Exception:  # a bug here must not end the sweep: log it, sweep on
                log.exception("expiring orphans failed")

    def cancel(self, keys: Iterable[str]) -> tuple[list[str], list[str]]:
        """Cancel tasks: returns the keys interrupted and the keys remembered for later."""
        interrupted, remembered = [], []
        for key in keys:
            job = self.running.get(key)
            if job is None:
                self._undelivered.pop(key, None)
                self._remember_cancel(key)
                remembered.append(key)
            else:
                self._cancel_job(job)
                interrupted.append(key)
        return interrupted, remembered

    def withdraw(self, keys: Iterable[str]) -> list[str]:
        """Take back runs that wait for a slot of their lane (each ends with ``TaskCancelled``);
        runs that started, or are unknown, are left alone. Returns the keys taken back."""
        taken = []
        for key in keys:
            job = self.running.get(key)
            if job is not None and self.lanes.withdraw(job.task):
                job.cancelled = True
                error = TaskCancelled(f"task {key} was withdrawn before it started")
                self.finished(job, _failure_frame(key, error))
                taken.append(key)
        return taken

    def cancel_all(self) -> None:
        for job in list(self.running.values()):
            self._cancel_job(job)

    def held(self) -> dict[str, Any]:
        """What ``GET /v1/held`` reports: kept results, running tasks, undelivered frames, and
        which running tasks are orphans (their driver went away)."""
        now = self.expire()
        return {
            "name": self.info.name,
            "held": self.store.keys(),
            "running": [key for key, job in self.running.items() if not job.expired],
            "finished": [key for key, (due, _) in self._undelivered.items() if due >= now],
            "orphaned": [key for key in self._orphans if key in self.running],
        }

    def _cancel_job(self, job: TaskJob) -> None:
        job.cancelled = True  # seen by a job that has not started running yet
        if self.lanes.withdraw(job.task):  # it was waiting for a slot: it ends here
            key = job.task.key
            self.finished(job, _failure_frame(key, TaskCancelled(f"task {key} was cancelled")))
            return
        self.threads.interrupt(job, TaskCancelled)

    def _remember_cancel(self, key: str) -> None:
        now = time.monotonic()
        self._cancelled[key] = now + self.cancel_memory
        self._cancelled.move_to_end(key)
        while self._cancelled and (
            len(self._cancelled) > self.cancel_memory_size
            or next(iter(self._cancelled.values())) < now
        ):
            self._cancelled.popitem(last=False)

    def _was_cancelled(self, key: str) -> bool:
        expiry = self._cancelled.pop(key, None)
        return expiry is not None and expiry >= time.monotonic()

    def call(self, call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> Any:
        future: asyncio.Future[tuple[bool, bytes]] = self.loop.create_future()
        self.threads.submit(CallJob(self, call, future))
        return future

    # --- on task threads ----------------------------------------------------------------------

    def resolve(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], job: TaskJob
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Replace the refs in a task's arguments by their values, or raise DependenciesFailed."""
        refs = find_refs((args, kwargs))
        if not refs:
            return args, kwargs
        values: dict[str, Any] = {}
        remote: dict[str, RemoteRef] = {}
        lost: defaultdict[str | None, list[Hashable]] = defaultdict(list)
        for ref in refs:
            if ref.key in values or ref.key in remote:
                continue
            if ref.holder == self.info.name:
                try:
                    values[ref.key] = self.store.get(ref.key)
                except KeyError:
                    _add_lost(lost, ref)
            else:
                remote[ref.key] = ref
        if remote:
            fetched = self._wait(asyncio.run_coroutine_threadsafe(self._fetch(remote), self.loop))
            for key, ref in remote.items():
                blob = fetched.get(key)
                if blob is None:
                    _add_lost(lost, ref)
                else:
                    values[key] = load_result(blob)
        if lost:
            raise DependenciesFailed(lost)

        def value(ref: RemoteRef) -> Any:
            return values[ref.key]

        return replace_refs(args, value), replace_refs(kwargs, value)

    @staticmethod
    def _wait(future: concurrent.futures.Future[dict[str, Fetched]]) -> dict[str, Fetched]:
        # short waits, so that a cancel raised in this thread is not held up by the fetch
        while True:
            try:
                return future.result(timeout=_CANCEL_POLL)
            except concurrent.futures.TimeoutError:
                continue
            except BaseException:
                future.cancel()
                raise

    async def _fetch(self, refs: dict[str, RemoteRef]) -> dict[str, Fetched]:
        """The pickled values of remote refs, one request per holder; refs whose holder is gone
        or no longer holds them are left out."""
        by_holder: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
        for key, ref in refs.items():
            by_holder[(ref.holder, ref.holder_url)].append(key)

        async def from_holder(holder: str, url: str, keys: list[str]) -> dict[str, Fetched]:
            try:
                return await self._peers(holder, url).fetch_many(keys)
            except NotConnected as e:
                log.info("inputs %s are lost with %s: %s", keys, holder, e)
                return {}

        fetched: dict[str, Fetched] = {}
        for blobs in await asyncio.gather(
            *(from_holder(holder, url, keys) for (holder, url), keys in by_holder.items())
        ):
            fetched.update(blobs)
        return fetched


def _failure_frame(key: str, error: BaseException) -> bytes:
    return frames.encode((DONE, key, False, encode_error(key, error)))


def _add_lost(lost: defaultdict[str | None, list[Hashable]], ref: RemoteRef) -> None:
    if ref.task_id not in lost[ref.holder]:
        lost[ref.holder].append(ref.task_id)
