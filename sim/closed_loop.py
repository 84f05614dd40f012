"""A closed-loop client: at most N requests in flight, the next one sent when one completes (`--max-concurrency`).

``vllm bench serve --max-concurrency N`` guards its sends with a semaphore:
request ``i`` leaves at its open-loop send time (from ``--request-rate``;
all at 0 with ``inf``) or, if N requests are in flight then, as soon as one
of them completes, whichever is later; requests leave in order. With
``think_s`` a freed slot waits that long before the next send (a user
reading the answer). So

    send_i = max(open_i, send_{i-1}, the (i - N + 1)-th earliest (finish + think) among requests 0 .. i-1)

:class:`ClosedLoopSender` sends this way inside the run (a semaphore of N
slots that completions release), so one run gives the answer;
:func:`closed_loop_sends` is the same rule as a formula over a finished
run's completions, which the tests hold the run to.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from driftsim.sim.config import ConfigError
from driftsim.sim.replica import urgent_timeout
from driftsim.sim.run import SimResult, simulate

__all__ = ["ClosedLoop", "ClosedLoopSender", "closed_loop_sends", "simulate_closed_loop"]


@dataclass(frozen=True)
class ClosedLoop:
    """How many requests may be in flight, and how long a freed slot waits before the next send."""

    max_concurrency: int  # requests in flight at most (users)
    think_s: float = 0.0  # pause between a completion and the send it allows, s

    def __post_init__(self) -> None:
        if not isinstance(self.max_concurrency, int) or self.max_concurrency < 1:
            raise ConfigError(f"--max-concurrency: expected an integer >= 1, got {self.max_concurrency!r}")
        if not (self.think_s >= 0) or not math.isfinite(self.think_s):
            raise ConfigError(f"think_s: expected a finite number >= 0, got {self.think_s!r}")


def closed_loop_sends(open_s: np.ndarray, settle_s: np.ndarray, loop: ClosedLoop) -> np.ndarray:
    """Send times of requests in table order, given their open-loop send times and when each one settled.

    ``settle_s[i]``: when request i stopped holding a slot (its completion;
    its rejection time for a refused one).
    """
    sends = np.empty(len(open_s))
    freed: list[float] = []  # slot release times of requests already sent, as a heap
    last = -math.inf
    for i, t in enumerate(open_s):
        t = max(float(t), last)
        if i >= loop.max_concurrency:
            t = max(t, heapq.heappop(freed))
        sends[i] = last = t
        heapq.heappush(freed, float(settle_s[i]) + loop.think_s)
    return sends


class ClosedLoopSender:
    """The closed loop as a :class:`driftsim.sim.run.Sender`: every row waits for its open time and a free slot."""

    def __init__(self, open_s: np.ndarray, loop: ClosedLoop) -> None:
        self.open_s = np.asarray(open_s, dtype=np.float64)
        self.loop = loop
        self.free = loop.max_concurrency
        self.next = 0  # the next row to send (rows leave in order)
        self._timer = False  # a wake-up for the next row's open time is pending

    def held(self, n: int) -> np.ndarray:
        return np.ones(n, dtype=bool)

    def compiled_sends(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """What the compiled core needs to run the loop itself: no session turns, each row's pause after
        its completion, the open times and the slots (:meth:`driftsim.sim.stepcore.CompiledCore.sessions`)."""
        n = len(self.open_s)
        return np.full(n, -1, np.int64), np.full(n, float(self.loop.think_s)), self.open_s, self.loop.max_concurrency

    def start(self, env, send) -> None:
        self.env, self.send = env, send
        self._wake_at(self.open_s[0] if len(self.open_s) else math.inf)

    def settled(self, i: int, t: float) -> None:
        urgent_timeout(self.env, max(0.0, t + self.loop.think_s - self.env.now)).callbacks.append(self._release)

    def _release(self, _event) -> None:
        self.free += 1
        self._advance()

    def _wake_at(self, t: float) -> None:
        if not self._timer and math.isfinite(t):
            self._timer = True
            urgent_timeout(self.env, max(0.0, t - self.env.now)).callbacks.append(self._woken)

    def _woken(self, _event) -> None:
        self._timer = False
        self._advance()

    def _advance(self) -> None:
        while self.free > 0 and self.next < len(self.open_s):
            i = self.next
            if self.open_s[i] > self.env.now:
                self._wake_at(self.open_s[i])
                return
            self.free -= 1
            self.next += 1
            self.send(i)


def simulate_closed_loop(trace: pl.DataFrame, loop: ClosedLoop, **simulate_kwargs) -> SimResult:
    """Run ``trace`` behind a closed-loop client; its ``arrival_s`` are the open-loop send times (sorted).

    Takes :func:`driftsim.sim.run.simulate`'s keyword arguments (not the
    streaming ones: the rows are needed); the results' ``arrival_s`` are the
    send times, and the summary says ``closed_loop`` (concurrency, think time).
    """
    result = simulate(trace, sender=ClosedLoopSender(trace["arrival_s"].to_numpy(), loop), **simulate_kwargs)
    result.summary["closed_loop"] = {"max_concurrency": loop.max_concurrency, "think_s": loop.think_s}
    return result
