"""SimPy processes that drive engines in simulated time.

``ContinuousReplica`` is one vLLM-like server: it yields one timeout per
plan of its :class:`~driftsim.sim.engine.EngineCore` and is interrupted when new work
arrives during a fast-forwarded run, so the step in progress finishes and the
newcomer joins the next one, exactly as in step-by-step execution.

``MicroBatchWorker`` is DriftSched's worker: it pulls a micro-batch from the
gateway in policy order and runs it as one blocking ``generate()`` call.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import simpy
from simpy.events import URGENT, Event

from driftsim.sim.engine import EngineCore
from driftsim.sim.request import SimRequest

FinishCallback = Callable[[SimRequest, float, int], None]


class UrgentTimeout(Event):
    """A timeout processed before ordinary events at the same instant.

    Arrivals use it so that a request arriving exactly when a step ends is
    seen by the next step, in step-by-step and fast-forwarded runs alike.

    NOTE: SimPy 4 has no public priority argument (``Event.succeed`` and
    ``Timeout`` always schedule at NORMAL), so this is SimPy's own ``Timeout``
    (``simpy/events.py``) with URGENT: an ``Event`` subclass that is triggered
    on creation sets its own outcome, as ``Timeout`` and ``Initialize`` do,
    and schedules itself once through the public ``Environment.schedule``.
    """

    def __init__(self, env: simpy.Environment, delay: float) -> None:
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, URGENT, delay)


def urgent_timeout(env: simpy.Environment, delay: float) -> Event:
    """An :class:`UrgentTimeout` of ``delay`` seconds."""
    return UrgentTimeout(env, delay)


class ContinuousReplica:
    """One engine replica with continuous batching."""

    def __init__(
        self,
        env: simpy.Environment,
        core: EngineCore,
        index: int,
        on_finish: FinishCallback,
        next_arrival: Callable[[], float] = lambda: float("inf"),
        *,
        merge_runs: bool = False,
    ) -> None:
        self.env = env
        self.next_arrival = next_arrival
        self.merge_runs = merge_runs
        self.core = core
        self.index = index
        self.on_finish = on_finish
        self.outstanding = 0  # dispatched and not finished
        self._aborts: list[SimRequest] = []  # clients gone: dropped at the next step boundary
        self._idle: Event | None = None
        self._run_ends: np.ndarray | list[float] | None = None  # a multi-step run in progress
        self.feed = None  # arrivals it takes in itself (driftsim.sim.run._ArrivalFeed); None: they are submitted
        self.proc = env.process(self._run())

    def submit(self, req: SimRequest) -> None:
        self.outstanding += 1
        self.core.add(req)
        if self._idle is not None:
            idle, self._idle = self._idle, None
            idle.succeed()
        elif self._run_ends is not None and self._run_ends[-2] >= self.env.now:
            # steps after the one in progress are planned: cut the run short
            self._run_ends = None
            self.proc.interrupt()

    def abort(self, req: SimRequest) -> None:
        """The client of ``req`` gave up: its slot frees now; the engine drops it and frees its KV
        when the step in progress ends (vLLM handles aborts between steps)."""
        self.outstanding -= 1
        self._aborts.append(req)
        if self._run_ends is not None and self._run_ends[-2] >= self.env.now:
            self._run_ends = None
            self.proc.interrupt()

    def _run(self):
        env, core, next_arrival, timeout = self.env, self.core, self.next_arrival, self.env.timeout
        commit, aborts = core.commit, self._aborts
        merge_runs, feed = self.merge_runs, self.feed
        inf = float("inf")
        clock = 0.0
        while True:
            if aborts:
                for req in aborts:
                    core.abort(req)
                aborts.clear()
            if not core.has_work():
                if feed is not None and next_arrival() < inf:
                    clock = feed.wake_s
                    yield timeout(max(0.0, clock - env.now))
                    feed.release_due(clock, first=True)
                    continue
                self._idle = env.event()
                yield self._idle
                clock = env.now
            ends = core.plan(clock, next_arrival())
            n = len(ends)
            if feed is not None:
                earlier, finished, clock = self._plan_up_to_arrival(ends)
                yield timeout(max(0.0, clock - env.now))
                self._deliver(earlier)  # completions before the next arrival, which came before the last step's
                feed.release_due(clock)  # arrivals during the last step, before its completions (they came first)
            elif n == 1 and merge_runs and ends[0] < next_arrival():
                finished, clock = yield from self._step_then_run(ends[0])
            else:
                if n > 1:
                    n = yield from self._wait_run(ends)
                else:
                    yield timeout(max(0.0, ends[0] - env.now))
                clock = float(ends[n - 1])
                finished = commit(n)
            self._deliver(finished)

    def _wait_run(self, ends):
        """Wait for a multi-step run to end; an interrupt (new work, an abort) cuts it after the step in
        progress (the first end >= now), which still completes. Returns how many of its steps ran."""
        env = self.env
        n = len(ends)
        self._run_ends = ends
        try:
            yield env.timeout(max(0.0, ends[-1] - env.now))
        except simpy.Interrupt:
            n = int(np.searchsorted(ends, env.now, side="left")) + 1
            yield env.timeout(max(0.0, ends[n - 1] - env.now))
        self._run_ends = None
        return n

    def _deliver(self, finished: list) -> None:
        """Hand on the requests a commit finished, but those whose client left during their last step."""
        on_finish, index, aborts = self.on_finish, self.index, self._aborts
        for req, t in finished:
            if aborts and req in aborts:  # finished in the step its client left during
                aborts.remove(req)
                continue
            self.outstanding -= 1
            on_finish(req, t, index)

    def _plan_up_to_arrival(self, ends) -> tuple[list, list, float]:
        """With a feed: commit the plan ``ends`` and the pure-decode runs after it, up to the step that
        reaches the next arrival, all now; return the completions of all but the last commit, those of
        the last, and the last end.

        Nothing but this replica acts before the next arrival (see :class:`driftsim.sim.run._ArrivalFeed`):
        no one submits or aborts, and completions only record and calibrate, so their delivery waits
        for the end of the wait, in order, and what the engine plans after each commit is what it would
        plan at that commit's end. A general step (new work admissible, a prefill) ends the chain: the
        replica plans it after delivering the completions.
        """
        core, commit, next_arrival = self.core, self.core.commit, self.next_arrival
        last = float(ends[-1])
        finished = commit(len(ends))
        earlier: list = []
        until = next_arrival()
        while last < until and core.has_work():
            run = core.plan_decode_run(last, until)
            if run is None:
                break
            earlier += finished
            last = float(run[-1])
            finished = commit(len(run))
        return earlier, finished, last

    def _step_then_run(self, end: float):
        """One planned step ending at ``end`` (before the next arrival) and the pure-decode run the engine
        would plan after it, as one timeout; returns the requests they finished and the last end committed.

        The step is committed now, not at ``end``: with ``merge_runs`` nothing reads the engine before then
        (no observers, no client asking what a request has generated, no router reading the caches, no
        async intake), and whatever would change its queues (a submission, an abort) interrupts the wait,
        so the run is dropped and planned afresh at ``end``, as step by step. A step that finishes
        requests is not merged: their completions may send or dispatch more work at ``end``.
        """
        env, core = self.env, self.core
        finished = core.commit(1)
        run = None
        if not finished and not self._aborts and core.has_work():
            run = core.plan_decode_run(end, self.next_arrival())
        if run is None:
            yield env.timeout(max(0.0, end - env.now))
            return finished, end
        ends = [end, *run] if isinstance(run, list) else np.concatenate(([end], run))
        n = yield from self._wait_run(ends)
        if n == 1:
            core.drop_decode_run()
            return finished, end
        return core.commit(n - 1), float(ends[n - 1])


class MicroBatchWorker:
    """DriftSched's worker: batch in scheduler order, then one blocking generate().

    It stops picking at ``batch_size`` requests, or when ``batch_wait_s`` has
    passed since the first pick and the queue is empty, re-checking an empty
    queue every ``batch_poll_s``. Every request of a batch completes when the
    batch does. With ``batch_intake_gap_s`` its requests reach the engine that
    far apart instead of all at once (a gateway sending them over HTTP).
    """

    def __init__(self, env: simpy.Environment, core: EngineCore, index: int, gateway, on_finish: FinishCallback) -> None:
        self.env = env
        self.core = core
        self.index = index
        self.gateway = gateway
        self.on_finish = on_finish
        self.outstanding = 0
        self.batches = 0
        self.proc = env.process(self._run())

    def _run(self):
        env, cfg, gw = self.env, self.core.cfg, self.gateway
        while True:
            while not gw.has_waiting():
                yield gw.work_event()
            first_pick = env.now
            batch = [gw.take(env.now, self.index)]
            while len(batch) < cfg.batch_size:
                if gw.has_waiting():
                    batch.append(gw.take(env.now, self.index))
                elif env.now - first_pick >= cfg.batch_wait_s:
                    break
                else:
                    yield env.timeout(cfg.batch_poll_s)
            start = env.now
            for req in batch:
                req.scheduled_s = start  # DriftSched's queue wait ends when the batch starts
            self.outstanding = len(batch)
            # gap 0: one blocking generate(), every request in the engine at the start
            gap = cfg.batch_intake_gap_s
            end, _ = self.core.run_arrivals(start, [(start + k * gap, req) for k, req in enumerate(batch)])
            self.batches += 1
            yield env.timeout(max(0.0, end - env.now))
            self.outstanding = 0
            for req in batch:
                self.on_finish(req, end, self.index)
