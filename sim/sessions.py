"""Multi-turn sessions: each turn is sent when the previous turn of its session has been answered.

A request table may group rows into sessions (``session_id``, ``turn``,
``think_s``; :mod:`driftsim.traces.schema`). A chat user sends turn k+1
``think_s`` after turn k's answer completes, so

    send_i = max(arrival_i, settle(previous turn of i's session) + think_i)

where ``arrival_i`` is the earliest the turn may leave (a session's first
turn: its start) and ``settle`` is when the previous turn finished (when it
was refused or given up, if it was). :class:`SessionSender` sends this way
inside the run; :func:`session_sends` is the same rule as a formula over a
finished run, which the tests hold the run to.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from driftsim.sim.replica import urgent_timeout
from driftsim.sim.run import SimResult, simulate

__all__ = ["SessionSender", "session_sends", "simulate_sessions"]


def session_sends(arrival_s: np.ndarray, session: np.ndarray, think_s: np.ndarray, settle_s: np.ndarray) -> np.ndarray:
    """Send times of the rows (table order, turns of a session in order), given when each row settled.

    ``session`` is -1 for a row outside any session (sent at its arrival); ``think_s`` NaN counts as 0.
    """
    sends = arrival_s.astype(np.float64, copy=True)
    last: dict[int, int] = {}  # session -> row of its latest turn so far
    think = np.nan_to_num(think_s, nan=0.0)
    for i, sid in enumerate(session.tolist()):
        if sid < 0:
            continue
        prev = last.get(sid)
        if prev is not None:
            sends[i] = max(sends[i], settle_s[prev] + think[i])
        last[sid] = i
    return sends


class SessionSender:
    """Sessions as a :class:`driftsim.sim.run.Sender`: a turn after the first leaves when its predecessor settles."""

    def __init__(self, trace: pl.DataFrame) -> None:
        self.open_s = trace["arrival_s"].to_numpy().astype(np.float64)
        self.think = trace["think_s"].fill_null(0.0).fill_nan(0.0).to_numpy()
        ids = trace["session_id"].to_list()
        self.next_turn = np.full(trace.height, -1, dtype=np.int64)  # row of the same session's next turn
        self._held = np.zeros(trace.height, dtype=bool)
        last: dict = {}
        for i, sid in enumerate(ids):  # turns of a session are in table order
            if sid is None:
                continue
            prev = last.get(sid)
            if prev is not None:
                self.next_turn[prev] = i
                self._held[i] = True
            last[sid] = i

    def held(self, n: int) -> np.ndarray:
        return self._held

    def compiled_sends(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """What the compiled core needs to send the turns itself: each row's next turn (-1: none), think
        times, open times, and no closed loop (:meth:`driftsim.sim.stepcore.CompiledCore.sessions`)."""
        return self.next_turn, self.think, self.open_s, 0

    def start(self, env, send) -> None:
        self.env, self.send = env, send

    def settled(self, i: int, t: float) -> None:
        j = int(self.next_turn[i])
        if j < 0:
            return
        at = max(self.open_s[j], t + self.think[j])
        urgent_timeout(self.env, max(0.0, at - self.env.now)).callbacks.append(lambda _event: self.send(j))


def simulate_sessions(trace: pl.DataFrame, **simulate_kwargs) -> SimResult:
    """Run ``trace`` with its sessions' turns sent closed-loop; rows outside sessions keep their arrivals.

    Takes :func:`driftsim.sim.run.simulate`'s keyword arguments (not the
    streaming ones: the rows are needed). The results' ``arrival_s`` hold
    each turn's send time; the summary says ``sessions`` (sessions, turns).
    """
    result = simulate(trace, sender=SessionSender(trace), **simulate_kwargs)
    in_sessions = trace["session_id"].drop_nulls()
    result.summary["sessions"] = {"sessions": in_sessions.n_unique(), "turns": in_sessions.len()}
    return result
