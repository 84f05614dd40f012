"""Routers: which replica gets the next dispatched request."""

from __future__ import annotations

from typing import Protocol, Sequence


class Routable(Protocol):
    index: int
    outstanding: int  # requests dispatched to it and not finished


class RoundRobin:
    """Cycle over replicas, skipping those at their cap."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, replicas: Sequence[Routable], cap: int | None) -> Routable | None:
        n = len(replicas)
        for i in range(n):
            r = replicas[(self._next + i) % n]
            if cap is None or r.outstanding < cap:
                self._next = (r.index + 1) % n
                return r
        return None


class LeastOutstanding:
    """The replica with the fewest requests in flight; ties go to the lowest index."""

    def pick(self, replicas: Sequence[Routable], cap: int | None) -> Routable | None:
        best = min(replicas, key=lambda r: (r.outstanding, r.index))
        if cap is not None and best.outstanding >= cap:
            return None
        return best


ROUTERS = {"round_robin": RoundRobin, "least_outstanding": LeastOutstanding}
