"""The traces a validation replays: fitted to the server, at load levels of its simulated capacity.

A *sweep* is several levels of the same workload at increasing load, from
light to past saturation, where load 1.0 is the simulated engine's
throughput on a burst of the workload (:func:`capacity_rps`). The held-out
calibration trace (:func:`calibration_trace`) is another draw of the same
lengths, never one of the levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from driftsim.costmodel.base import CostModel
from driftsim.sim.config import EngineConfig
from driftsim.sim.scenario import build_trace, load_scenario
from driftsim.traces.loaders import load_trace
from driftsim.traces.schema import REQUEST_SCHEMA
from driftsim.traces.synth import LengthDist, TenantLoad, generate, lengths_from_trace
from driftsim.traces.transform import assign_tenants, head, scale_rate
from driftsim.validation.replay_sim import simulate_replay

#: The synthetic workload's load levels, fractions of the simulated capacity, light to past saturation.
DEFAULT_LOADS = (0.3, 0.6, 0.9, 1.2)
#: The held-out calibration replay: these loads, light to past saturation, so that every batch size
#: the levels reach is seen (its lengths are another draw, its seed another), with this many requests
#: each. The saturated segment is the longest: full batches must be timed over many seconds, not one
#: burst (a 40-request segment timed them faster than the levels then ran them; VALIDATION.md).
CALIBRATION_LOADS = (0.3, 0.8, 1.3)
CALIBRATION_REQUESTS = (40, 80, 120)


def fit_trace(trace: pl.DataFrame, max_model_len: int) -> tuple[pl.DataFrame, list[str]]:
    """Pin each request's output length and make it fit the server.

    The output is ``output_tokens`` capped by ``max_tokens`` and by
    ``max_model_len - input_tokens`` (what the simulator would generate too);
    prompts of ``max_model_len`` tokens or more are dropped. Returns the
    trace (``max_tokens`` cleared) and notes on what changed.
    """
    notes = []
    # tables saved before an optional column existed lack it: null, as a loader would give
    trace = trace.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in REQUEST_SCHEMA.items() if c not in trace.columns)
    too_long = trace.filter(pl.col("input_tokens") >= max_model_len)
    if too_long.height:
        notes.append(f"dropped {too_long.height} request(s) whose prompt does not fit max_model_len {max_model_len}")
    df = trace.filter(pl.col("input_tokens") < max_model_len)
    cap = pl.min_horizontal(pl.col("max_tokens").fill_null(1 << 40), max_model_len - pl.col("input_tokens"))
    capped = int(df.select((pl.col("output_tokens") > cap).sum()).item())
    if capped:
        notes.append(f"capped the output of {capped} request(s) at max_tokens / max_model_len")
    df = df.with_columns(pl.min_horizontal("output_tokens", cap).alias("output_tokens"),
                         pl.lit(None, dtype=pl.Int64).alias("max_tokens"))
    # a replayed turn repeats the trace's tokens for an earlier answer, not the tokens the engine
    # generated, so no answer can be found cached: both sides keep prefix ids for the prompt only
    blocks = (pl.col("input_tokens") + pl.col("prefix_block_tokens") - 1) // pl.col("prefix_block_tokens")
    answer_ids = int(df.select((pl.col("prefix_ids").list.len() > blocks).fill_null(False).sum()).item())
    if answer_ids:
        notes.append(f"kept the prefix ids of {answer_ids} request(s) for their prompt only (a replay does not send "
                     "the engine's own answers back, so an answer is never found cached)")
        df = df.with_columns(pl.col("prefix_ids").list.head(blocks))
    return df.select(list(REQUEST_SCHEMA)), notes


@dataclass(frozen=True, kw_only=True)
class Workload:
    """A synthetic multi-tenant workload whose rate is set per load level.

    Tenants share the rate equally; each has a priority (1 most urgent) and
    an E2E SLO. Lengths are lognormal, clipped to fit the server.
    """

    tenants: tuple[str, ...] = ("premium", "standard", "batch")
    input_mean: int = 192
    input_cv: float = 0.6
    input_max: int = 640
    output_mean: int = 64
    output_cv: float = 0.6
    output_max: int = 192
    arrival: str = "poisson"
    slo_e2e_s: tuple[float, ...] = (5.0, 10.0, 30.0)
    requests: int = 60

    def trace(self, rate_per_s: float, *, seed: int) -> pl.DataFrame:
        per = rate_per_s / len(self.tenants)
        loads = [TenantLoad(name, per, input=LengthDist.lognormal(mean=self.input_mean, cv=self.input_cv, max=self.input_max),
                            output=LengthDist.lognormal(mean=self.output_mean, cv=self.output_cv, max=self.output_max),
                            arrival=self.arrival, priority=i + 1,
                            slo_e2e_s=self.slo_e2e_s[min(i, len(self.slo_e2e_s) - 1)])
                 for i, name in enumerate(self.tenants)]
        return generate(loads, num_requests=self.requests, seed=seed)


def calibration_trace(shape: pl.DataFrame, rates_per_s: tuple[float, ...], *, requests: int | tuple[int, ...] = 30,
                      seed: int) -> pl.DataFrame:
    """A held-out trace for :func:`driftsim.validation.run.run_validation`'s calibration: for each rate, ``requests`` Poisson
    arrivals at it (one count for all, or one per rate), one segment after the other (2 s apart), with
    prompt/output lengths resampled from ``shape`` (another draw, never its rows). Light and heavy
    segments let the fit see every batch size."""
    counts = (requests,) * len(rates_per_s) if isinstance(requests, int) else tuple(requests)
    if len(counts) != len(rates_per_s):
        raise ValueError(f"calibration_trace: {len(counts)} request counts for {len(rates_per_s)} rates")
    inp, out = lengths_from_trace(shape)
    parts, t0, first = [], 0.0, 0
    for i, (rate, n) in enumerate(zip(rates_per_s, counts)):
        load = TenantLoad("calibration", rate, input=LengthDist.empirical(inp), output=LengthDist.empirical(out))
        seg = generate([load], num_requests=n, seed=seed + i)
        seg = seg.with_columns(pl.col("arrival_s") + t0, pl.col("request_id") + first)
        first += n
        t0 = float(seg["arrival_s"].max()) + 2.0
        parts.append(seg)
    return pl.concat(parts)


def capacity_rps(trace: pl.DataFrame, *, cost: CostModel, engine: EngineConfig, requests: int = 400) -> float:
    """The simulated engine's saturation throughput (requests/s) on this trace's lengths.

    ``requests`` requests resampled from the trace all arrive at once; the
    throughput is how many complete per second over the second half of the
    run (the first half fills the batch). Load 1.0 of a sweep is this rate.
    """
    rng = np.random.default_rng(0)
    idx = rng.integers(0, trace.height, size=requests)
    burst = trace[idx.tolist()].with_columns(pl.Series("request_id", np.arange(requests, dtype=np.int64)),
                                            pl.lit(0.0).alias("arrival_s"))
    res = simulate_replay(burst, cost=cost, engine=engine)
    fin = np.sort(res.requests.filter(pl.col("status") == "ok")["finish_s"].to_numpy())
    if fin.size < 4:
        raise ValueError("capacity_rps: too few simulated completions to measure a throughput")
    half = fin.size // 2
    return float((fin.size - half) / (fin[-1] - fin[half - 1]))


def load_base_trace(path: Path, *, trace_format: str = "auto", tenants: dict[str, float] | None = None,
                    max_requests: int | None = None, seed: int = 0) -> pl.DataFrame:
    """A trace file as a validation replays it: split among ``tenants`` (weights) if given, its first
    ``max_requests`` requests. A scenario TOML (``.toml``) gives the trace its ``[workload]`` describes
    (e.g. synthetic tenants with shared system prompts or multi-turn sessions), drawn with its seed."""
    if Path(path).suffix == ".toml":
        base, _ = build_trace(load_scenario(path))
    else:
        base = load_trace(path, trace_format)
    if tenants:
        base = assign_tenants(base, tenants, seed=seed)
    if max_requests:
        base = head(base, max_requests)
    return base


def sweep_levels(*, base: pl.DataFrame | None, workload: Workload, loads: tuple[float, ...] | None,
                 capacity: float, seed: int) -> list[tuple[float | None, pl.DataFrame]]:
    """``(load, trace)`` per level: ``base`` rescaled to each load's rate (its own rate without
    ``loads``), or the synthetic ``workload`` drawn at it."""
    if loads is None:
        return [(None, base)]
    if base is None:
        return [(x, workload.trace(x * capacity, seed=seed)) for x in loads]
    span = float(base["arrival_s"].max() - base["arrival_s"].min())
    own = (base.height - 1) / span if span > 0 else capacity
    return [(x, scale_rate(base, x * capacity / own)) for x in loads]


def placed_levels(traces: list[tuple[float | None, pl.DataFrame]], scale: float) -> list[tuple[float | None, pl.DataFrame]]:
    """``traces`` with every load level's rate multiplied by ``scale``: the capacity the loads are to be
    fractions of over the one :func:`sweep_levels` placed them against (the calibrated simulator's over
    the profile's). A trace replayed at its own rate (load None) is left as it is."""
    if scale == 1.0:
        return list(traces)
    return [(load, df if load is None else scale_rate(df, scale)) for load, df in traces]


def placement_notes(scale: float, capacity: float | None) -> list[str]:
    """What the report says of a placement by :func:`placed_levels` (nothing where none was made)."""
    if scale == 1.0 or not capacity:
        return []
    return [f"loads are fractions of the calibrated simulator's capacity, {capacity:.2f} req/s "
            f"(the profile's alone: {capacity / scale:.2f} req/s)"]


def held_out_calibration(shape: pl.DataFrame, *, capacity: float, seed: int) -> pl.DataFrame:
    """The calibration trace for a sweep of ``shape`` (:data:`CALIBRATION_LOADS`, its own seed)."""
    return calibration_trace(shape, tuple(x * capacity for x in CALIBRATION_LOADS), requests=CALIBRATION_REQUESTS,
                             seed=seed + 1000)
