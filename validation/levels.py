"""Load levels: each level's replays simulated, scored and re-simulated at the server's speed.

A *level* is one trace replayed ``repeat`` times; :meth:`LevelResult.add_replay`
simulates one real replay from its own send or release times and scores
it, the live run and re-scoring alike. :func:`session_speed` re-simulates
every replay at the speed of the session's other replays,
:func:`pool_levels` scores all levels as one workload and
:func:`drift_notes` flags the levels whose server moved since its
calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from driftsim.profiling.server_facts import ENGINE_COUNTERS
from driftsim.validation.calibration import AT_SERVER_SPEED, SESSION_SPEED, SPEED_VARIANTS, ScaledCost, replay_speed
from driftsim.validation.replay_sim import engine_queue_times, replay_engine, sim_trace, simulate_replay
from driftsim.validation.scoring import aggregate, compare


def level_label(load: float | str | None) -> str:
    """How a level is named in output: "load 0.6", "trace" (a trace at its own rate), "all levels"."""
    return "all levels" if load == "all" else ("trace" if load is None else f"load {load:g}")


def compare_engine(before: dict, after: dict, sim) -> dict:
    """Engine-side facts of one replay, real (``/metrics`` deltas) beside simulated: steps, tokens
    computed, preemptions, mean engine queue time (both as vLLM measures it: from the engine core
    taking the request in, between steps, to its first scheduling; :func:`driftsim.validation.replay_sim.engine_queue_times`),
    and the prefix cache's token hit rate (both as vLLM counts it: prompt tokens found cached at each
    request's first admission over the prompt tokens looked up)."""
    real = {k: (after[k] - before[k]) if after.get(k) is not None and before.get(k) is not None else None
            for k in ENGINE_COUNTERS}
    if real.get("queue_time_count"):
        real["queue_time_mean_s"] = real["queue_time_sum_s"] / real["queue_time_count"]
    if real.get("prefix_queries"):
        real["prefix_token_hit_rate"] = real["prefix_hits"] / real["prefix_queries"]
    queued = engine_queue_times(sim)
    simd = {"steps": sum(r["steps"] for r in sim.replicas), "preemptions": sum(r["preemptions"] for r in sim.replicas),
            "busy_s": sum(r["busy_s"] for r in sim.replicas),
            "queue_time_mean_s": float(queued.mean()) if queued.size else None, **sim_prefix_hits(sim.requests)}
    return {"real": real, "sim": simd}


def sim_prefix_hits(requests: pl.DataFrame) -> dict:
    """The simulated prefix cache as vLLM's counters see it: prompt tokens of every admitted request
    (``prefix_queries``), those found cached at its first admission (``prefix_hits``), and their ratio."""
    admitted = requests.filter(pl.col("scheduled_s").is_not_null() & pl.col("scheduled_s").is_not_nan())
    queries = int(admitted["input_tokens"].sum())
    hits = int(admitted["cached_tokens"].sum())
    return {"prefix_queries": queries, "prefix_hits": hits,
            "prefix_token_hit_rate": hits / queries if queries else None}


def prefix_hit_rates(level: "LevelResult") -> dict[str, list[float]]:
    """The prefix cache's token hit rate of each replay of ``level``, real and simulated (replays
    whose side looked nothing up are left out)."""
    out: dict[str, list[float]] = {"real": [], "sim": []}
    for e in level.engine:
        for side in out:
            x = (e.get(side) or {}).get("prefix_token_hit_rate")
            if x is not None and math.isfinite(x):
                out[side].append(float(x))
    return out


@dataclass
class LevelResult:
    """One load level: the trace, every repeat's real and simulated frames and scores, and their aggregate."""

    load: float | str | None  # fraction of capacity_rps; None: a trace at its own rate; "all": levels pooled
    rate_rps: float
    trace: pl.DataFrame
    real: list[pl.DataFrame] = field(default_factory=list)
    sim: list[pl.DataFrame] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    aggregate: dict = field(default_factory=dict)
    interrupted: bool = False
    contention: list[dict] = field(default_factory=list)  # per replay: CPU other processes used (ForeignCpu)
    engine: list[dict] = field(default_factory=list)  # per replay: engine steps, tokens, preemptions, real vs sim
    speed: list[dict] = field(default_factory=list)  # per replay: its steps against the simulated cost model
    # the same replays simulated again at another server speed (ScaledCost), by name: see SPEED_VARIANTS
    variants: dict[str, "Resimulation"] = field(default_factory=dict)

    @classmethod
    def for_trace(cls, load: float | None, trace: pl.DataFrame) -> "LevelResult":
        """A level of a fitted trace, nothing replayed yet; its rate is the trace's mean arrival rate."""
        span = float(trace["arrival_s"].max() - trace["arrival_s"].min()) if trace.height > 1 else 0.0
        return cls(load=load, rate_rps=(trace.height - 1) / span if span > 0 else math.nan, trace=trace)

    def add_replay(self, frame: pl.DataFrame, repeat: int, *, before: dict, after: dict, gateway_holds: bool,
                   overhead_s: float, cost, engine, gateway) -> None:
        """Simulate one real replay of this level's trace (from its real send or release times) and keep
        both sides, the score and the engine counters; the live run and ``--rescore`` both come here."""
        st = sim_trace(self.trace, frame, gateway_holds=gateway_holds, overhead_s=overhead_s)
        simres = simulate_replay(st, cost=cost, engine=replay_engine(engine, frame), gateway=gateway)
        self.engine.append(compare_engine(before, after, simres))
        self.real.append(frame.with_columns(pl.lit(repeat).alias("repeat")))
        self.sim.append(simres.requests.with_columns(pl.lit(repeat).alias("repeat")))
        self.scores.append(compare(frame, simres.requests, self.trace, overhead_s=overhead_s))
        # the prompt tokens each request found cached, as the simulation found them (the server publishes only
        # totals, which the two sides match token for token): a cached prefix is not prefill work
        cached = simres.requests.select("request_id", "cached_tokens")
        self.speed.append(replay_speed(frame.join(cached, on="request_id", how="left"), cost=cost, engine=engine,
                                       overhead_s=overhead_s))
        self.aggregate = aggregate(self.scores)
        self.resimulate(AT_SERVER_SPEED, len(self.real) - 1, self.speed[-1].get("busy", math.nan),
                        gateway_holds=gateway_holds, overhead_s=overhead_s, cost=cost, engine=engine, gateway=gateway)

    def resimulate(self, variant: str, r: int, factor: float, *, gateway_holds: bool, overhead_s: float,
                   cost, engine, gateway) -> None:
        """Simulate replay ``r`` again with every step ``factor`` times as long, scored under ``variant``
        (nothing, recorded as None, where the factor is unknown)."""
        v = self.variants.setdefault(variant, Resimulation())
        while len(v.sims) <= r:
            v.sims.append(None), v.scores.append(None), v.factors.append(math.nan)
        if math.isfinite(factor) and factor > 0:
            frame = self.real[r].drop("repeat")
            st = sim_trace(self.trace, frame, gateway_holds=gateway_holds, overhead_s=overhead_s)
            sim = simulate_replay(st, cost=ScaledCost(cost, factor), engine=replay_engine(engine, frame),
                                  gateway=gateway).requests
            v.sims[r] = sim.with_columns(pl.lit(r).alias("repeat"))
            v.scores[r] = compare(frame, sim, self.trace, overhead_s=overhead_s)
            v.factors[r] = float(factor)
        v.aggregate = aggregate([x for x in v.scores if x is not None])


@dataclass
class Resimulation:
    """One named re-simulation of a level's replays: per replay its frame, score and speed factor
    (None / NaN where it was not made), and their aggregate."""

    sims: list[pl.DataFrame | None] = field(default_factory=list)
    scores: list[dict | None] = field(default_factory=list)
    factors: list[float] = field(default_factory=list)
    aggregate: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"aggregate": self.aggregate, "runs": self.scores, "speed_factors": self.factors}


def session_speed(levels: list["LevelResult"], *, gateway_holds: bool, overhead_s: float, cost, engine,
                  gateway) -> None:
    """Score every replay again at :data:`SESSION_SPEED`: the mean busy-time speed of all the session's
    other replays (the calibration fixes the shape of the step times; the rest of the session, never
    the scored replay, says how fast this server has been running)."""
    speeds = {(li, r): x.get("busy", math.nan) for li, lv in enumerate(levels) for r, x in enumerate(lv.speed)}
    for li, lv in enumerate(levels):
        for r in range(len(lv.real)):
            others = [v for k, v in speeds.items() if k != (li, r) and math.isfinite(v)]
            lv.resimulate(SESSION_SPEED, r, float(np.mean(others)) if others else math.nan,
                          gateway_holds=gateway_holds, overhead_s=overhead_s, cost=cost, engine=engine,
                          gateway=gateway)


#: A level whose real server ran its steps this much faster or slower than the calibrated model is flagged.
DRIFT_SHARE = 0.05


def drift_notes(levels: list[LevelResult], calibration: dict | None) -> list[str]:
    """A note for each level whose real server ran its decode steps more than :data:`DRIFT_SHARE`
    faster or slower, against the simulated step times, than during the calibration replay
    (medians of :func:`replay_speed` over the level's replays, over the calibration's): its errors
    then measure how far the server moved since its calibration as much as the simulator."""
    ref = ((calibration or {}).get("speed") or {}).get("decode", math.nan)
    if not math.isfinite(ref):
        return []
    out = []
    for lv in levels:
        xs = [x["decode"] for x in lv.speed if math.isfinite(x.get("decode", math.nan))]
        m = float(np.median(xs)) / ref if xs else math.nan
        if math.isfinite(m) and abs(m - 1) > DRIFT_SHARE:
            out.append(f"{level_label(lv.load)}: the server ran its decode steps x{m:.2f} as long as during its "
                       f"calibration (median over {len(xs)} replay(s)): it moved since, and this level's errors "
                       "measure that as much as the simulator (recalibrate, or rerun on a steadier machine)")
    return out


def pool_levels(levels: list[LevelResult], *, overhead_s: float) -> LevelResult | None:
    """All levels as one workload (light to past saturation), scored per repeat; None for a single level.

    Request ids are made unique per level (``level * 10**7 + id``); repeat r
    pools every level's repeat r.
    """
    if len(levels) < 2:
        return None
    n_rep = min(len(lv.real) for lv in levels)
    if n_rep == 0:
        return None

    def key(df: pl.DataFrame, i: int) -> pl.DataFrame:
        return df.with_columns((pl.col("request_id") + i * 10_000_000).alias("request_id"))

    trace = pl.concat([key(lv.trace, i) for i, lv in enumerate(levels)])
    pooled = LevelResult(load="all", rate_rps=math.nan, trace=trace)  # type: ignore[arg-type]
    for r in range(n_rep):
        real = pl.concat([key(lv.real[r], i) for i, lv in enumerate(levels)], how="diagonal_relaxed")
        sim = pl.concat([key(lv.sim[r], i) for i, lv in enumerate(levels)], how="diagonal_relaxed")
        pooled.scores.append(compare(real, sim, trace, overhead_s=overhead_s))
        for name in SPEED_VARIANTS:
            sims = [lv.variants[name].sims[r] if name in lv.variants and r < len(lv.variants[name].sims) else None
                    for lv in levels]
            v = pooled.variants.setdefault(name, Resimulation())
            if all(x is not None for x in sims):
                vsim = pl.concat([key(x, i) for i, x in enumerate(sims)], how="diagonal_relaxed")
                v.scores.append(compare(real, vsim, trace, overhead_s=overhead_s))
    pooled.aggregate = aggregate(pooled.scores)
    for v in pooled.variants.values():
        v.aggregate = aggregate([x for x in v.scores if x is not None])
    pooled.wall_s = [sum(lv.wall_s[r] for lv in levels) for r in range(n_rep)]
    return pooled
