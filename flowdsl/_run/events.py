"""The run's event stream: one event per transition of the state machine (docs/SEMANTICS.md,
"The event stream"), in order, with the run's clock time and a sequence number.

How it costs little:

- **Nothing without a consumer.** The core holds ``events = None`` unless the run was given
  an event consumer (``run(..., observers=[f])`` with a callable ``f``); each transition then
  costs one ``is not None`` test.
- **One plain tuple per transition.** With consumers, the core appends
  ``(seq, time, kind, task, item, attempt, detail)`` to the run's one :class:`EventLog` (a
  ``collections.deque``; only the event loop appends, so sequence numbers follow the order
  of the log). No object per event per consumer: the reader thread makes each typed
  :class:`Event` once, for all consumers.
- **Consumers read off the loop.** One reader thread per run takes what the log holds, every
  :data:`POLL_INTERVAL` seconds, and hands each consumer the batch, in order, in
  subscription order. A consumer runs in that thread, never on the event loop.

What a consumer cannot do to the run:

- **Raise.** It is detached (it gets no more events) and the run goes on; once the run ends,
  an :class:`EventConsumerWarning` names it and its error.
- **Be slow.** The log holds at most :data:`MAX_PENDING` unread events; the loop never waits
  for a reader. When the reader falls further behind, the oldest unread events are dropped
  and the reader hands consumers one ``events_lost`` event in their place (its ``detail`` is
  how many were lost; the sequence numbers skip them). At the run's end, ``run()`` waits (off
  the loop) until every consumer has read every event, at most :data:`CLOSE_WAIT` seconds;
  one still busy then is detached with an :class:`EventConsumerWarning`.
"""

from __future__ import annotations

import collections
import enum
import itertools
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeGuard

import anyio.to_thread

from .._base.errors import EventConsumerWarning

if TYPE_CHECKING:
    from .._plan.planner import Plan

__all__ = ["CLOSE_WAIT", "MAX_PENDING", "POLL_INTERVAL", "Event", "EventConsumer",
           "EventConsumerWarning", "EventKind", "EventLog", "RunStart", "is_consumer"]


class EventKind(str, enum.Enum):
    """What an :class:`Event` says happened (a str enum: ``kind == "task_finished"`` works)."""

    #: The run began (detail: a :class:`RunStart`: run id, flow name, mode and the plan).
    RUN_STARTED = "run_started"
    #: The node's predecessors are final and the core took it up (S7): its trigger rule,
    #: conditions and cache are next.
    TASK_READY = "task_ready"
    #: The node asks for pools that are not free now (S8; detail: its demand).
    TASK_WAITING_FOR_POOLS = "task_waiting_for_pools"
    #: An attempt of the node starts (S9; attempt: its number on the record).
    TASK_STARTED = "task_started"
    #: An attempt failed or timed out (detail: its :class:`~flowdsl.ErrorInfo`).
    ATTEMPT_FAILED = "attempt_failed"
    #: The node waits out its backoff before the next attempt (S10; detail: the delay).
    TASK_WAITING_TO_RETRY = "task_waiting_to_retry"
    #: The node reached a final status (detail: its :class:`~flowdsl.TaskStatus`).
    TASK_FINISHED = "task_finished"
    #: A retried group's next attempt makes the node pending again (S30): it will be ready
    #: again, or stay pending if the group's attempt stops first.
    TASK_RESET = "task_reset"
    #: A rollback undid the node (S37).
    TASK_ROLLED_BACK = "task_rolled_back"
    #: A pipeline item entered the flow (item: its index).
    ITEM_STARTED = "item_started"
    #: Every stage finished a pipeline item.
    ITEM_FINISHED = "item_finished"
    #: A tool's kept log line or print (detail: the line, as on ``TaskRecord.logs``; its
    #: ``"time"`` is when it was logged). Lines are kept in the tool's thread; the loop
    #: appends them to the log just before the task's next ``task_finished``.
    LOG = "log"
    #: The reader fell behind and this many of the oldest unread events were dropped.
    EVENTS_LOST = "events_lost"
    #: The run ended (detail: its :class:`~flowdsl.RunStatus`).
    RUN_FINISHED = "run_finished"

    def __str__(self) -> str:
        return self.value


# Module globals for the core's hot path (a global look-up beats an enum attribute).
RUN_STARTED = EventKind.RUN_STARTED
TASK_READY = EventKind.TASK_READY
TASK_WAITING_FOR_POOLS = EventKind.TASK_WAITING_FOR_POOLS
TASK_STARTED = EventKind.TASK_STARTED
ATTEMPT_FAILED = EventKind.ATTEMPT_FAILED
TASK_WAITING_TO_RETRY = EventKind.TASK_WAITING_TO_RETRY
TASK_FINISHED = EventKind.TASK_FINISHED
TASK_ROLLED_BACK = EventKind.TASK_ROLLED_BACK
TASK_RESET = EventKind.TASK_RESET
ITEM_STARTED = EventKind.ITEM_STARTED
ITEM_FINISHED = EventKind.ITEM_FINISHED
LOG = EventKind.LOG
EVENTS_LOST = EventKind.EVENTS_LOST
RUN_FINISHED = EventKind.RUN_FINISHED

#: The most unread events the log holds; past it, the oldest are dropped (see above).
MAX_PENDING = 65536
#: Seconds between two reads of the log by the reader thread.
POLL_INTERVAL = 0.05
#: Seconds ``run()`` waits at the end for consumers to read the last events.
CLOSE_WAIT = 10.0


@dataclass(frozen=True, slots=True)
class Event:
    """One transition of a run (see :class:`EventKind` for what each kind carries).

    ``seq`` numbers the run's events from 0 with no gap, except where an ``events_lost``
    event stands for dropped ones; ``time`` is seconds since the run started, on the run's
    clock (the one of ``TaskRecord.started_at``). ``task`` is the node's id (a map child's is
    ``name[i]``), ``item`` the pipeline item's index, ``attempt`` the attempt's number on the
    record; each is None where it does not apply."""

    seq: int
    time: float
    kind: EventKind
    task: str | None = None
    item: int | None = None
    attempt: int | None = None
    detail: Any = None


class RunStart(NamedTuple):
    """The ``detail`` of ``run_started``: what a view needs to draw the run from the start
    (the plan is frozen, so consumers may read it from their thread)."""

    run_id: str
    flow: str | None
    mode: str
    plan: Plan


#: What ``run(..., observers=[...])`` accepts besides a ``RunObserver``: a callable that
#: takes each batch of events, in order. It runs in the run's reader thread.
EventConsumer = Callable[[Sequence[Event]], object]


class EventLog:
    """One run's log of events and the thread that reads it to the consumers."""

    __slots__ = ("_clock", "_closed", "_consumers", "_failed", "_log", "_read", "_seq",
                 "_t0", "_thread")

    def __init__(self, consumers: Sequence[EventConsumer], clock: Callable[[], float],
                 t0: float) -> None:
        self._consumers = list(consumers)
        self._log: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=MAX_PENDING)
        self._seq = itertools.count()
        self._clock = clock
        self._t0 = t0
        self._read = 0  # the next sequence number the reader expects
        self._failed: list[tuple[EventConsumer, str]] = []
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def put(self, kind: EventKind, task: str | None = None, item: int | None = None,
            attempt: int | None = None, detail: Any = None) -> None:
        """Append one event (the core's hot path: a tuple, a C-level count and append)."""
        self._log.append((next(self._seq), self._clock() - self._t0, kind, task, item,
                          attempt, detail))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._reader, name="flowdsl-events",
                                        daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Let the reader hand out the last events and wait for it (off the event loop, at
        most :data:`CLOSE_WAIT` seconds), then warn about every consumer it detached."""
        self._closed.set()
        thread = self._thread
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join, CLOSE_WAIT, abandon_on_cancel=True)
            if thread.is_alive():  # a consumer still busy: it gets nothing more
                late = self._consumers
                self._consumers = []
                self._failed += [(c, f"it was still reading {CLOSE_WAIT:g}s after the run "
                                  "ended") for c in late]
        for consumer, why in self._failed:
            warnings.warn(f"event consumer {_name(consumer)} was detached: {why}; the run "
                          "went on without it", EventConsumerWarning, stacklevel=2)
        self._failed = []

    def _take(self) -> list[Event]:
        """Everything the log holds now, as events (an ``events_lost`` where some were
        dropped)."""
        log, out = self._log, []
        pop = log.popleft
        while True:
            try:
                entry = pop()
            except IndexError:
                break
            seq = entry[0]
            if seq != self._read:  # the oldest unread events were dropped for this one
                out.append(Event(self._read, entry[1], EVENTS_LOST, detail=seq - self._read))
            self._read = seq + 1
            out.append(Event(*entry))
        return out

    def _reader(self) -> None:
        closed = self._closed
        while True:
            done = closed.wait(POLL_INTERVAL)
            batch = self._take()
            if batch:
                self._deliver(batch)
            if done and not self._log:
                return

    def _deliver(self, batch: list[Event]) -> None:
        for consumer in list(self._consumers):
            try:
                consumer(batch)
            except Exception as exc:  # a consumer never fails the run: it is detached
                if consumer in self._consumers:
                    self._consumers.remove(consumer)
                self._failed.append((consumer, f"it raised {type(exc).__name__}: {exc}"))


def _name(consumer: object) -> str:
    name = getattr(consumer, "__qualname__", None) or type(consumer).__qualname__
    return repr(name)


def is_consumer(observer: object) -> TypeGuard[EventConsumer]:
    """Whether an entry of ``observers=`` is an event consumer (a callable) rather than a
    ``RunObserver`` (an object with the hooks)."""
    return callable(observer) and not hasattr(observer, "task_finished")
