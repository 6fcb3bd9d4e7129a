"""Memory that clients cannot exhaust: the bytes of request bodies in flight on a replica have
a budget (``OCEANML_SERVE_BODY_BUDGET_BYTES``). A request holds what it declared
(``Content-Length``) or, chunked, what has arrived, until it is answered; one that would go
past the budget waits ``OCEANML_SERVE_BODY_WAIT_S`` for room, then gets 503 with
``Retry-After``. The body is read through :func:`metered`, which also cuts off a client that
stops sending (``OCEANML_SERVE_READ_TIMEOUT_S`` between chunks) or trickles
(``OCEANML_SERVE_BODY_TIMEOUT_S`` for the whole body) with a 408.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

from oceanml.serving.inputs import BadInput


class BodyBudget:
    """Bytes of request bodies in flight, against a capacity."""

    def __init__(self, capacity: int, wait_s: float, on_change: Callable[[int], None]) -> None:
        self.capacity, self.wait_s, self.used = capacity, wait_s, 0
        self.on_change = on_change
        self._freed: asyncio.Condition | None = None  # made in the server's loop
        self._waking: set[asyncio.Task] = set()

    @asynccontextmanager
    async def hold(self, declared: int) -> AsyncIterator[Held]:
        """A request's share, ``declared`` bytes from the start, given back when it ends."""
        held = Held(self)
        try:
            await self.take(declared)
            held.size = held.declared = declared
            yield held
        finally:
            self._give(held.size)

    async def take(self, n: int) -> None:
        if n > self.capacity:
            raise BadInput(413, "body_too_large",
                           f"{n} bytes > the server's body budget {self.capacity}")
        freed = self._condition()
        deadline = time.monotonic() + self.wait_s
        async with freed:
            while self.used + n > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BadInput(503, "busy", f"{self.used} bytes of request bodies in "
                                   f"flight, the budget is {self.capacity}: try again",
                                   {"Retry-After": str(max(1, round(self.wait_s)))})
                with suppress(TimeoutError):
                    await asyncio.wait_for(freed.wait(), left)
            self.used += n
        self.on_change(self.used)

    def _give(self, n: int) -> None:
        """Synchronous, so a cancelled request cannot keep its bytes; the waiters are woken
        by a task of their own (notifying needs the condition's lock)."""
        if not n:
            return
        self.used -= n
        self.on_change(self.used)
        task = asyncio.get_running_loop().create_task(self._wake())
        self._waking.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._waking.discard)

    async def _wake(self) -> None:
        freed = self._condition()
        async with freed:
            freed.notify_all()

    def _condition(self) -> asyncio.Condition:
        if self._freed is None:
            self._freed = asyncio.Condition()
        return self._freed


@dataclass
class Held:
    budget: BodyBudget
    size: int = 0
    declared: int = 0

    async def grow(self, n: int) -> None:
        """Count ``n`` more bytes; what was declared up front is already counted."""
        if self.declared >= n:
            self.declared -= n
            return
        extra, self.declared = n - self.declared, 0
        await self.budget.take(extra)
        self.size += extra


def metered(receive: Callable[[], Awaitable[dict]], held: Held, cap: int, *,
            idle_s: float, total_s: float) -> Callable[[], Awaitable[dict]]:
    """``receive`` that counts body bytes against ``held`` and the per-request ``cap`` (413),
    and cuts off a client that stalls or trickles (408)."""
    size = 0
    deadline = time.monotonic() + total_s

    async def receive_metered() -> dict[str, Any]:
        nonlocal size
        left = deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(receive(), max(0.0, min(idle_s, left)))
        except TimeoutError:
            why = (f"the body did not arrive within {total_s:g} s" if left <= idle_s
                   else f"the client sent nothing for {idle_s:g} s")
            raise BadInput(408, "request_timeout", why) from None
        if message["type"] == "http.request":
            n = len(message.get("body", b""))
            size += n
            if size > cap:
                raise BadInput(413, "body_too_large", f"more than {cap} bytes")
            await held.grow(n)
        return message

    return receive_metered
