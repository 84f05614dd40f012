"""What the engine and the gateway tell observers, and how they tell it.

Validation, streaming results and reports need to see inside a run (every
step's end, each request's dispatch and first scheduling) without
subclassing the engine. The engine (:class:`driftsim.sim.engine.EngineCore`)
and the gateway (:class:`driftsim.sim.gateway.Gateway`) publish the records
below to a tuple of observers: plain callables taking one event. With no
observer, publishing costs one truth test of an empty tuple.

Times are simulated seconds; ``replica`` is the replica's index in the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StepCommitted:
    """An engine step was committed (one event per step of a fast-forwarded run)."""

    replica: int
    end_s: float  # when the step ended, s


@dataclass(frozen=True, slots=True)
class EngineSampled:
    """The engine's own state after a commit (one per committed step, or per fast-forwarded run of steps),
    and after an abort took a request off (a running one's KV blocks freed, or a queued one gone from the
    queue, at that step boundary).

    What reports plot over time: the batch, the queue and the KV cache as
    the engine holds them, not reconstructed from request events.
    """

    replica: int
    t_s: float  # end of the last committed step, s
    running: int  # requests in the running batch
    waiting: int  # requests queued at the engine (not yet admitted)
    kv_used_blocks: int
    kv_total_blocks: int


@dataclass(frozen=True, slots=True)
class RequestScheduled:
    """The engine's waiting pass admitted a request into the running batch.

    Published at every admission: the first, and again after a preemption
    or a client's retry; an observer after the first scheduling keeps the
    earliest per request.
    """

    replica: int
    request_id: int
    t_s: float  # start of the step it was admitted to, s


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """A request's last token was produced (the engine's view: a client may have left already)."""

    replica: int
    request_id: int
    t_s: float  # end of the step that produced it, s


@dataclass(frozen=True, slots=True)
class RequestDispatched:
    """The gateway's policy released a request to a replica (pushed) or a worker (pulled)."""

    request_id: int
    t_s: float  # s


Event = StepCommitted | EngineSampled | RequestScheduled | RequestFinished | RequestDispatched
Observer = Callable[[Event], None]


def observer_tuple(observers: Iterable[Observer] | None) -> tuple[Observer, ...]:
    """The observers as a tuple: publishers test it for truth before building an event."""
    return tuple(observers) if observers else ()


def publish(observers: tuple[Observer, ...], event: Event) -> None:
    """Hand ``event`` to every observer, in order."""
    for observe in observers:
        observe(event)
