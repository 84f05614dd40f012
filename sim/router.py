"""Routers: which replica gets the next dispatched request.

A router answers one question, ``pick(replicas, cap)``. One that needs the
request itself (``uses_request = True``) is asked ``pick(replicas, cap, req)``
with the request the gateway's policy has just released; the gateway only
asks it when some replica is below its cap.
"""

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


class PrefixAffinity:
    """The replica whose prefix cache holds the longest leading run of the request's prompt blocks;
    ties (and requests without prefix identity) go to the fewest in flight, then the lowest index.

    As a KV-aware gateway routes (llm-d's prefix scorer, SGLang's router): sending requests that share
    a system prompt or a conversation to one replica turns their prefill into cache hits.
    """

    uses_request = True

    def pick(self, replicas: Sequence[Routable], cap: int | None, req=None) -> Routable | None:
        best, best_key = None, None
        for r in replicas:
            if cap is not None and r.outstanding >= cap:
                continue
            cached = r.core.cached_prefix_blocks(req) if req is not None else 0
            key = (-cached, r.outstanding, r.index)
            if best_key is None or key < best_key:
                best, best_key = r, key
        return best


ROUTERS = {"round_robin": RoundRobin, "least_outstanding": LeastOutstanding, "prefix_affinity": PrefixAffinity}
