"""The in-process bus: publish/subscribe between the parts of one ``yujing serve``.

Subjects are dot-separated with NATS's wildcards (``*`` one token, ``>`` the rest), so the
same names work on NATS when the service is spread over machines. Each subscriber has its
own bounded queue and task: a slow consumer (a browser on a bad link, a busy database)
never blocks the publisher or the other subscribers. A subscriber marked ``critical``
(the alert path) gets an unbounded queue; any other drops the oldest message when full and
counts it in :attr:`MemoryBus.dropped` (per subject pattern).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)

Handler = Callable[[str, Any], Awaitable[None] | None]


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS rules: ``*`` matches one token, ``>`` one or more trailing tokens."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


@dataclass(eq=False)
class Subscription:
    pattern: str
    handler: Handler
    queue: asyncio.Queue
    critical: bool
    task: asyncio.Task | None = None


class MemoryBus:
    """Publish objects (records, bytes) to subjects; see the module docstring."""

    def __init__(self, queue_size: int = 10_000):
        self.queue_size = queue_size
        self._subs: list[Subscription] = []
        self.published = 0
        self.dropped: Counter[str] = Counter()
        self.handler_errors: Counter[str] = Counter()

    def subscribe(self, pattern: str, handler: Handler, critical: bool = False) -> Subscription:
        """Call ``handler(subject, obj)`` (sync or async) for each message on a matching
        subject, in order, from the subscriber's own task."""
        q: asyncio.Queue = asyncio.Queue(0 if critical else self.queue_size)
        sub = Subscription(pattern, handler, q, critical)
        sub.task = asyncio.get_running_loop().create_task(self._run(sub), name=f"bus:{pattern}")
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        if sub.task is not None:
            sub.task.cancel()

    def publish(self, subject: str, obj: Any) -> None:
        """Never blocks: a full non-critical queue loses its oldest message (counted)."""
        self.published += 1
        for sub in self._subs:
            if not subject_matches(sub.pattern, subject):
                continue
            q = sub.queue
            if q.full():
                q.get_nowait()
                q.task_done()  # the dropped message counts as handled, or drain() never ends
                self.dropped[sub.pattern] += 1
            q.put_nowait((subject, obj))

    async def _run(self, sub: Subscription) -> None:
        is_async = inspect.iscoroutinefunction(sub.handler)
        while True:
            subject, obj = await sub.queue.get()
            try:
                r = sub.handler(subject, obj)
                if is_async:
                    await r
            except Exception:  # a broken consumer must not stop the bus
                self.handler_errors[sub.pattern] += 1
                log.exception("bus subscriber %s failed on %s", sub.pattern, subject)
            finally:
                sub.queue.task_done()

    async def drain(self) -> None:
        """Wait until every subscriber has handled what was published so far."""
        for sub in list(self._subs):
            await sub.queue.join()

    async def close(self) -> None:
        for sub in self._subs:
            if sub.task is not None:
                sub.task.cancel()
        await asyncio.gather(*(s.task for s in self._subs if s.task is not None), return_exceptions=True)
        self._subs.clear()
