"""A closed-loop client: at most N requests in flight, the next one sent when one completes (`--max-concurrency`).

``vllm bench serve --max-concurrency N`` guards its sends with a semaphore:
request ``i`` leaves at its open-loop send time (from ``--request-rate``;
all at 0 with ``inf``) or, if N requests are in flight then, as soon as one
of them completes, whichever is later; requests leave in order. With
``think_s`` a freed slot waits that long before the next send (a user
reading the answer). So

    send_i = max(open_i, send_{i-1}, the (i - N + 1)-th earliest (finish + think) among requests 0 .. i-1)

:func:`closed_loop_sends` computes these from a run's results. Send
times depend on completions and completions on send times; because the
simulator is deterministic and causal, :func:`simulate_closed_loop` finds
the run whose send times are those its own completions give by running
again until they no longer move: each pass fixes at least the earliest
request that was still wrong, and usually a great many at once.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from driftsim.sim.config import ConfigError
from driftsim.sim.run import SimResult, simulate

__all__ = ["ClosedLoop", "closed_loop_sends", "simulate_closed_loop"]


@dataclass(frozen=True)
class ClosedLoop:
    """How many requests may be in flight, and how long a freed slot waits before the next send."""

    max_concurrency: int  # requests in flight at most (users)
    think_s: float = 0.0  # pause between a completion and the send it allows, s
    max_passes: int = 200  # runs before giving up on reaching the fixed point

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


def _settle_times(result: SimResult) -> np.ndarray:
    req = result.requests
    return req.select(pl.col("finish_s").fill_nan(None).fill_null(pl.col("arrival_s"))).to_series().to_numpy()


def simulate_closed_loop(trace: pl.DataFrame, loop: ClosedLoop, **simulate_kwargs) -> SimResult:
    """Run ``trace`` behind a closed-loop client; its ``arrival_s`` are the open-loop send times.

    Takes :func:`driftsim.sim.run.simulate`'s keyword arguments (not the
    streaming ones: the rows are needed) and returns the result of the run
    whose send times match its own completions; its summary says
    ``closed_loop`` (concurrency, think time, passes). Raises ConfigError if
    ``loop.max_passes`` runs do not settle.
    """
    open_s = trace["arrival_s"].to_numpy()
    sends = closed_loop_sends(open_s, np.full(len(open_s), -math.inf), ClosedLoop(max_concurrency=trace.height or 1))
    for passes in range(1, loop.max_passes + 1):
        result = simulate(trace.with_columns(pl.Series("arrival_s", sends)), **simulate_kwargs)
        new = closed_loop_sends(open_s, _settle_times(result), loop)
        if np.array_equal(new, sends):
            result.summary["closed_loop"] = {"max_concurrency": loop.max_concurrency, "think_s": loop.think_s,
                                             "passes": passes}  # fmt: skip
            return result
        sends = new
    raise ConfigError(f"closed loop did not settle in {loop.max_passes} runs; raise max_passes")
