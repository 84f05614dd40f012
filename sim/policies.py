"""Queue disciplines: which waiting request goes next.

A policy is a small plain object that owns the waiting requests of one
gateway (all tenants) and answers one question, ``pop(now)``: which request
is dispatched next. The same objects run inside the simulator and in front
of a real engine, so they only read the request attributes listed in
:class:`Queued`. Ties are always broken by ``(arrival_s, request_id)``.

Register a new policy by adding it to :data:`POLICIES`.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Protocol


class Queued(Protocol):
    """What a policy may read from a waiting request."""

    request_id: int
    arrival_s: float  # time it entered the gateway, seconds
    tenant: str
    priority: int  # tier priority, lower is more urgent
    est_tokens: int  # estimated total budget (input + estimated output), tokens


class Policy:
    """Base class: a priority queue keyed by :meth:`key`.

    Subclasses either override :meth:`key` (a static ordering, O(log n) per
    operation) or override ``push``/``pop``/``__len__`` entirely (stateful
    disciplines such as a weighted cycle).
    """

    name = "base"

    def __init__(self) -> None:
        self._heap: list[tuple[Any, float, int, Queued]] = []

    def key(self, req: Queued) -> Any:
        """Sort key; smaller goes first. Must not depend on time."""
        raise NotImplementedError

    def push(self, req: Queued, now: float) -> None:
        heapq.heappush(self._heap, (self.key(req), req.arrival_s, req.request_id, req))

    def pop(self, now: float) -> Queued | None:
        """Remove and return the next request, or None when empty."""
        if not self._heap:
            return None
        return heapq.heappop(self._heap)[-1]

    def on_finish(self, req: Queued, now: float) -> None:
        """Feedback when a dispatched request completes (for stateful policies)."""

    def __len__(self) -> int:
        return len(self._heap)


class Fifo(Policy):
    """First come, first served: the globally oldest request across tenants."""

    name = "fifo"

    def key(self, req: Queued) -> Any:
        return 0


POLICIES: dict[str, Callable[..., Policy]] = {
    "fifo": Fifo,
}


def make_policy(name: str, **params: Any) -> Policy:
    """Build a registered policy by name; unknown names list the known ones."""
    try:
        factory = POLICIES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown policy '{name}'; known: {', '.join(sorted(POLICIES))}") from None
    return factory(**params)
