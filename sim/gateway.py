"""The gateway: admission queue (a policy) in front of the replicas.

Continuous replicas are pushed work by a router, at arrival or, with a
per-replica cap on requests in flight, whenever a slot frees. Micro-batch
workers pull work themselves with :meth:`Gateway.take`. Either way the
gateway publishes a :class:`~driftsim.sim.events.RequestDispatched` to its
observers when its policy releases a request.
"""

from __future__ import annotations

from collections.abc import Iterable

import simpy

from driftsim.sim.events import Observer, RequestDispatched, observer_tuple, publish
from driftsim.sim.policies import Policy
from driftsim.sim.request import SimRequest


class Gateway:
    def __init__(
        self,
        env: simpy.Environment,
        policy: Policy,
        *,
        router=None,
        max_outstanding: int | None = None,
        observers: Iterable[Observer] | None = None,
    ) -> None:
        self.env = env
        self.policy = policy
        self.router = router
        self.cap = max_outstanding
        self.replicas: list = []  # continuous replicas (push); empty for micro-batch workers (pull)
        self._work: simpy.Event | None = None
        self._observers = observer_tuple(observers)
        # with no cap, a keyed policy (a plain heap) releases each arrival at once: it may skip the heap
        kind = type(policy)
        self._routes_at_arrival = max_outstanding is None and kind.push is Policy.push and kind.pop is Policy.pop
        self._pass_through = self._routes_at_arrival and not getattr(router, "uses_request", False)

    @property
    def routes_at_arrival(self) -> bool:
        """Each arrival goes to a replica at once, in arrival order, chosen by the router alone (which may
        read the request: it is the only one the policy holds); the policy changes nothing."""
        return self._routes_at_arrival

    # ---- arrivals and completions
    def submit(self, req: SimRequest) -> None:
        now = self.env.now
        if self._pass_through and self.replicas and not len(self.policy):
            replica = self.router.pick(self.replicas, None)
            if self._observers:
                publish(self._observers, RequestDispatched(req.request_id, now))
            replica.submit(req)
            return
        self.policy.push(req, now)
        if self.replicas:
            self._dispatch(now)
        elif self._work is not None:
            work, self._work = self._work, None
            work.succeed()

    def finished(self, req: SimRequest, t: float, output_tokens: int | None = None) -> None:
        """``req`` left (completed, or its client gave up with ``output_tokens`` received): free its slot."""
        self.policy.on_finish(req, t, output_tokens=req.generated if output_tokens is None else output_tokens)
        if self.replicas and self.cap is not None:
            self._dispatch(t)

    # ---- push side
    def _dispatch(self, now: float) -> None:
        policy, replicas, cap, router = self.policy, self.replicas, self.cap, self.router
        if getattr(router, "uses_request", False):
            while len(policy):
                if cap is not None and all(r.outstanding >= cap for r in replicas):
                    return
                req = self._release(now)
                router.pick(replicas, cap, req).submit(req)
            return
        while len(policy):
            replica = self.router.pick(replicas, cap)
            if replica is None:
                return
            replica.submit(self._release(now))

    # ---- pull side
    def has_waiting(self) -> bool:
        return len(self.policy) > 0

    def take(self, now: float, worker: int) -> SimRequest:
        return self._release(now)

    def _release(self, now: float) -> SimRequest:
        """The policy's next request, published as dispatched."""
        req = self.policy.pop(now)
        if self._observers and req is not None:
            publish(self._observers, RequestDispatched(req.request_id, now))
        return req

    def work_event(self) -> simpy.Event:
        """An event that fires on the next submission (shared by idle workers)."""
        if self._work is None:
            self._work = self.env.event()
        return self._work
