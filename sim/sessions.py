"""Multi-turn sessions: each turn is sent when the previous turn of its session has been answered.

A request table may group rows into sessions (``session_id``, ``turn``,
``think_s``; :mod:`driftsim.traces.schema`). A chat user sends turn k+1
``think_s`` after turn k's answer completes, so

    send_i = max(arrival_i, settle(previous turn of i's session) + think_i)

where ``arrival_i`` is the earliest the turn may leave (a session's first
turn: its start) and ``settle`` is when the previous turn finished (its send
time if it was refused or never finished). As in :mod:`driftsim.sim.closed_loop`,
send times depend on completions and completions on send times; the
simulator is deterministic and causal, so :func:`simulate_sessions` runs
again until the send times its completions give are the ones it ran with.
Each pass fixes at least the earliest turn that was still wrong.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from driftsim.sim.config import ConfigError
from driftsim.sim.run import SimResult, simulate

__all__ = ["session_sends", "simulate_sessions"]


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


def _settle_times(requests: pl.DataFrame) -> np.ndarray:
    """When each row stopped holding up its session: its finish, or its send if it never finished."""
    return requests.select(pl.col("finish_s").fill_nan(None).fill_null(pl.col("arrival_s"))).to_series().to_numpy()


def simulate_sessions(trace: pl.DataFrame, *, max_passes: int = 200, **simulate_kwargs) -> SimResult:
    """Run ``trace`` with its sessions' turns sent closed-loop; rows outside sessions keep their arrivals.

    Takes :func:`driftsim.sim.run.simulate`'s keyword arguments (not the
    streaming ones: the rows are needed). The run's ``arrival_s`` column
    holds each turn's send time; its rows are in send order (ties: table
    order). The summary says ``sessions`` (sessions, turns, passes).
    Raises ConfigError if ``max_passes`` runs do not settle.
    """
    open_s = trace["arrival_s"].to_numpy()
    ids = trace["session_id"]
    session = np.where(ids.is_null().to_numpy(), -1, ids.rank("dense").fill_null(0).to_numpy()).astype(np.int64)
    think = trace["think_s"].fill_null(0.0).to_numpy()
    sends = open_s.astype(np.float64)
    for passes in range(1, max_passes + 1):
        order = np.argsort(sends, kind="stable")
        run = trace[order].with_columns(pl.Series("arrival_s", sends[order]))
        result = simulate(run, **simulate_kwargs)
        settle = np.empty(len(sends))
        settle[order] = _settle_times(result.requests)
        new = session_sends(open_s, session, think, settle)
        if np.array_equal(new, sends):
            in_sessions = trace["session_id"].drop_nulls()
            result.summary["sessions"] = {"sessions": in_sessions.n_unique(), "turns": in_sessions.len(),
                                          "passes": passes}  # fmt: skip
            return result
        sends = new
    raise ConfigError(f"sessions did not settle in {max_passes} runs; raise max_passes")
