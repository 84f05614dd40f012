"""Simulating a replayed trace as the real run saw it.

The real side (:mod:`driftsim.profiling.trace_replay`) gives one row per request with the
times the client saw: ``released_s`` (entered the gateway), ``sent_s``,
``first_token_s``, ``finish_s``, ``delivered_s`` and every token's arrival.
This module

1. builds the simulator's input from it (:func:`sim_trace`): the same
   requests with the same pinned lengths, arriving when the real gateway
   sent them (no cap: the request reached the engine then) or when it
   released them (a cap or the micro-batch worker: the simulated gateway then
   decides, with the same policy, when each is dispatched), plus the
   measured client/HTTP overhead;
2. simulates it (:func:`simulate_replay`) with the server's real KV capacity
   and limits, recording what the real side records: gateway dispatch time
   and every token's time (each engine step's end, for the requests it
   advanced), optionally with the profile corrected for the server
   (:mod:`driftsim.validation.calibration`, fitted on a held-out replay,
   never the scored one).

The two are paired and scored by :mod:`driftsim.validation.scoring`.

The simulation is :func:`driftsim.sim.run.simulate` itself (:func:`simulate_replay`)
with one observer subscribed to its events (:mod:`driftsim.sim.events`),
since the score needs what a plain run does not keep: the gateway's
dispatch time per request, each request's first scheduling and last token,
and the end time of every engine step. A test checks that its per-request
results are identical to an unobserved run's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl

from driftsim.costmodel.base import CostModel
from driftsim.sim.config import ConfigError, EngineConfig, GatewayConfig
from driftsim.sim.events import Event, RequestDispatched, RequestFinished, RequestScheduled, StepCommitted
from driftsim.sim.run import simulate
from driftsim.traces.schema import REQUEST_SCHEMA

# ---------------------------------------------------------------------------
# 1. the simulator's input
# ---------------------------------------------------------------------------

def sim_trace(trace: pl.DataFrame, real: pl.DataFrame, *, gateway_holds: bool, overhead_s: float = 0.0) -> pl.DataFrame:
    """The request table to simulate for one real replay of ``trace``.

    ``real`` is the replay's frame (:func:`driftsim.profiling.gateway.records_frame`).
    Only requests the real gateway released are kept (a Ctrl-C'd replay
    simulates what really ran). Arrival: ``sent_s`` when the gateway holds
    nothing (no cap: each request reached the engine when sent), else
    ``released_s`` (the simulated gateway then holds and dispatches it with
    the same policy), plus ``overhead_s``, the client/HTTP/API-server time a
    1-token request shows beyond its engine step. Output lengths are the
    pinned ones the server was asked for (``output_tokens`` of ``real``).
    """
    col = "released_s" if gateway_holds else "sent_s"
    times = real.select("request_id", pl.col(col).alias("_t"), pl.col("output_tokens").alias("_out"))
    df = (
        trace.join(times, on="request_id", how="inner")
        .filter(pl.col("_t").is_not_null() & pl.col("_t").is_not_nan())
        .with_columns((pl.col("_t") + overhead_s).alias("arrival_s"), pl.col("_out").alias("output_tokens"),
                      pl.lit(None, dtype=pl.Int64).alias("max_tokens"))
        .sort("arrival_s", "request_id")
    )
    return df.select(list(REQUEST_SCHEMA))


def replay_engine(engine: EngineConfig, real: pl.DataFrame) -> EngineConfig:
    """The engine to simulate one real replay on. In micro-batch mode the real gateway sends a batch
    as concurrent HTTP requests, which reach the server one after another: the first starts a step
    alone and the rest join the next (measured: first tokens 54 ms and 412 ms after the sends of a
    four-request batch). So each simulated batch's requests enter the engine
    ``batch_intake_gap_s`` apart: the median gap between consecutive sends of one real batch."""
    if engine.mode != "microbatch" or "batch" not in real.columns:
        return engine
    sent = real.filter(pl.col("sent_s").is_not_null() & pl.col("sent_s").is_not_nan() & pl.col("batch").is_not_null())
    gaps = (sent.sort("batch", "sent_s").group_by("batch", maintain_order=True)
            .agg(pl.col("sent_s").diff().drop_nulls().alias("gap"))["gap"].explode().drop_nulls())
    gap = float(gaps.median()) if gaps.len() else 0.0
    return replace(engine, batch_intake_gap_s=gap) if math.isfinite(gap) and gap > 0 else engine


# ---------------------------------------------------------------------------
# 2. simulating it, observed
# ---------------------------------------------------------------------------

class _ReplayTap:
    """An observer of a simulation run (:mod:`driftsim.sim.events`) noting what the score needs and a
    plain run does not keep: each request's gateway dispatch, and per replica the end of every
    committed step, each request's first scheduling by the engine (a micro-batch worker sets
    ``scheduled_s`` to its batch's start) and its last token."""

    def __init__(self, replicas: int) -> None:
        self.dispatched: dict[int, float] = {}
        self.step_ends: list[list[float]] = [[] for _ in range(replicas)]
        self.first_scheduled_s: list[dict[int, float]] = [{} for _ in range(replicas)]
        self.last_token_s: list[dict[int, float]] = [{} for _ in range(replicas)]

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepCommitted):
            self.step_ends[event.replica].append(event.end_s)
        elif isinstance(event, RequestScheduled):
            self.first_scheduled_s[event.replica].setdefault(event.request_id, event.t_s)
        elif isinstance(event, RequestFinished):
            self.last_token_s[event.replica][event.request_id] = event.t_s
        elif isinstance(event, RequestDispatched):
            self.dispatched[event.request_id] = event.t_s


@dataclass
class SimReplay:
    """What :func:`simulate_replay` produced: per-request rows and every step's end per replica."""

    requests: pl.DataFrame
    step_ends: list[np.ndarray]
    replicas: list[dict] = field(default_factory=list)


def simulate_replay(
    trace: pl.DataFrame,
    *,
    cost: CostModel,
    engine: EngineConfig,
    gateway: GatewayConfig | None = None,
    num_blocks: int | None = None,
    replicas: int = 1,
    horizon_s: float | None = None,
) -> SimReplay:
    """Simulate ``trace`` with :func:`driftsim.sim.run.simulate` (oracle length
    estimates), observed to note each request's gateway dispatch and every step's end.

    The returned ``requests`` has simulate's columns plus ``dispatch_s``,
    ``delivered_s`` (when the gateway hands the result back: simulate's
    ``finish_s``, which in micro-batch mode is the batch's end for every
    request in it) and ``token_times`` (the end of every step that gave the
    request a token; None for a request that was preempted, whose tokens are
    not all at consecutive steps), ``engine_arrival_s`` and ``engine_scheduled_s`` (when the engine
    saw the request and first scheduled it; in micro-batch mode ``scheduled_s`` is its batch's
    start); ``finish_s`` becomes the request's own last
    token, as the real gateway's streaming client records it, so that TPOT
    is the request's and not its batch's.
    """
    gateway = gateway or GatewayConfig()
    if gateway.placement != "gateway":
        raise ConfigError("validation replays the policy at the gateway; placement 'engine' has no real counterpart here")
    tap = _ReplayTap(replicas)
    res = simulate(trace, cost=cost, engine=engine, gateway=gateway, replicas=replicas, num_blocks=num_blocks,
                   horizon_s=horizon_s, observers=[tap])
    ids = res.requests["request_id"].to_list()
    last = {i: t for per_replica in tap.last_token_s for i, t in per_replica.items()}
    first = {i: t for per_replica in tap.first_scheduled_s for i, t in per_replica.items()}
    dispatch = pl.Series("dispatch_s", [tap.dispatched.get(i, math.nan) for i in ids], dtype=pl.Float64)
    df = res.requests.with_columns(
        dispatch,
        pl.Series("engine_scheduled_s", [first.get(i) for i in ids], dtype=pl.Float64),
        # when the engine sees it: its dispatch, or in micro-batch mode its batch's start (each
        # request's own intake gap, well under one step, left out)
        (pl.col("scheduled_s") if engine.mode == "microbatch" else pl.lit(dispatch)).alias("engine_arrival_s"),
        pl.col("finish_s").alias("delivered_s"),
    ).with_columns(
        pl.when(pl.col("status") == "ok")
        .then(pl.coalesce(pl.Series("last_token_s", [last.get(i) for i in ids], dtype=pl.Float64), "finish_s"))
        .otherwise(pl.col("finish_s")).alias("finish_s"),
    )
    step_ends = [np.asarray(ends) for ends in tap.step_ends]
    df = df.with_columns(pl.Series("token_times", _token_times(df, step_ends), dtype=pl.List(pl.Float64)))
    return SimReplay(requests=df, step_ends=step_ends, replicas=res.replicas)


def engine_queue_times(sim: SimReplay) -> np.ndarray:
    """Each completed request's engine queue time as vLLM's ``request_queue_time_seconds``
    measures it, s: from the engine core taking the request in to its first scheduling.

    The engine core takes new requests in between steps, so a request that
    arrives during a step is queued at that step's end (at once on an idle
    engine) and its queue time is zero unless the scheduler then had no room
    for it. The simulator's ``queue_wait_s`` counts from the arrival, the
    current step's remainder included; this is the figure to set beside the
    server's. The engine sees a request at ``engine_arrival_s`` (a capped gateway
    holds it until its dispatch, a micro-batch worker until its batch starts), and
    the first scheduling is the engine's own (``engine_scheduled_s``).
    """
    req = sim.requests.filter(pl.col("status") == "ok").select("replica", "engine_arrival_s", "engine_scheduled_s")
    out = np.empty(req.height)
    for k, (rep, arrival, scheduled) in enumerate(req.iter_rows()):
        ends = sim.step_ends[rep] if rep is not None and 0 <= rep < len(sim.step_ends) else np.empty(0)
        i = int(np.searchsorted(ends, arrival, side="left"))
        intake = min(float(ends[i]), scheduled) if i < ends.size else scheduled
        out[k] = max(0.0, scheduled - max(intake, arrival))
    return out


def _token_times(df: pl.DataFrame, step_ends: list[np.ndarray]) -> list[list[float] | None]:
    """Each request's token times: the step ends from its first token to its last on its replica.

    Every decoding sequence gets one token per step (the engine's budget is
    never below ``max_num_seqs``), so between its first and last token a
    request that was never preempted has a token at every step end.
    """
    out: list[list[float] | None] = []
    for rep, first, last, n, pre, status in df.select(
        "replica", "first_token_s", "finish_s", "generated_tokens", "preemptions", "status"
    ).iter_rows():
        if status != "ok" or pre or rep is None or rep < 0:
            out.append(None)
            continue
        ends = step_ends[rep]
        lo = int(np.searchsorted(ends, first, side="left"))
        hi = int(np.searchsorted(ends, last, side="right"))
        times = ends[lo:hi].tolist()
        out.append(times if len(times) == n else None)
    return out
