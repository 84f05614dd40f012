"""Re-scoring a saved validation without a server.

:func:`rescore` rebuilds the whole result from a session's files
(:mod:`driftsim.validation.session`): each replay's frame from its journal
(requests it lacks are kept as ``not_sent``, with the reason), simulated and
scored as a live run is. When the folder holds the held-out calibration
replay (``calibration_requests.parquet``), the calibration is fitted to it
again (:func:`driftsim.validation.calibration.calibrate_server`, then the
client overhead from the saved probes), so a changed calibration is scored
on the saved replays, still held out; otherwise the saved calibration is
used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import polars as pl

from driftsim.costmodel.base import CostModel
from driftsim.costmodel.profiles import load_profile
from driftsim.profiling.gateway import STATUS_NOT_SENT, MicroBatch
from driftsim.profiling.journal import JournalError
from driftsim.profiling.server_facts import ServerFacts, engine_config
from driftsim.profiling.trace_replay import journal_frame
from driftsim.sim.config import EngineConfig, GatewayConfig
from driftsim.traces.schema import REQUEST_SCHEMA
from driftsim.validation.calibration import (ProbeFit, calibrate_server, calibrated, fit_probe, fitted_calibration,
                                             overhead_from_probe)
from driftsim.validation.levels import LevelResult, drift_notes, pool_levels, session_speed
from driftsim.validation.replay_sim import sim_trace
from driftsim.validation.session import (STATE, ValidationResult, journal_path, load_levels, load_replay_meta,
                                         load_state, replays_dir)
from driftsim.validation.workload import fit_trace, placed_levels, placement_notes


def rescore(out: str | Path, *, cost: CostModel | None = None,
            progress: Callable[[str], None] | None = None) -> ValidationResult:
    """A :class:`driftsim.validation.session.ValidationResult` from the files a validation saved in
    ``out`` (see the module docstring); ``cost`` None = the profile named in the saved configuration."""
    say = progress or (lambda _msg: None)
    folder = replays_dir(out)
    state = load_state(folder)
    if state is None:
        raise JournalError(f"{folder / STATE} is missing: the validation stopped before calibration finished; "
                           "nothing to re-score (run it again, or --resume it)")
    scale = float(state.get("load_scale", 1.0))
    levels_in = placed_levels(load_levels(folder), scale)  # as the live run replayed them
    facts = ServerFacts(**state["facts"])
    config = state.get("config") or {}
    if cost is None:
        if not config.get("profile"):
            raise JournalError(f"{folder / STATE} names no profile: give the one it was validated with (--profile)")
        cost = load_profile(config["profile"]).cost_model
    gw = GatewayConfig(policy=config.get("policy", "fifo"), max_outstanding=config.get("max_outstanding"))
    mb = MicroBatch(**{k: v for k, v in config["microbatch"].items()}) if config.get("microbatch") else None
    engine = engine_config(facts, microbatch=mb)
    holds = gw.max_outstanding is not None or mb is not None
    overhead = float(state.get("overhead_s") or 0.0)
    samples = [tuple(x) for x in state.get("overhead_samples") or []]
    notes = list(state.get("notes") or []) + placement_notes(scale, state.get("capacity_rps"))
    calib = state.get("calibration")
    cpath = Path(out) / "calibration_requests.parquet"
    cframe = None
    if calib and calib.get("correction") and cpath.exists():  # fit the calibration again, held out as before
        say("re-fitting the calibration to the saved calibration replay")
        cframe = pl.read_parquet(cpath)
        calib = refit_calibration(calib, cframe, samples=samples, overhead_s=overhead, cost=cost, engine=engine,
                                  gateway=gw, gateway_holds=holds)
        notes.append(f"calibration fitted again to {cpath.name}")
    cost, engine = calibrated(cost, engine, calib)
    if cframe is not None and samples:
        overhead = overhead_from_probe(samples, cost)
    levels = [lv for li, (load, raw) in enumerate(levels_in)
              if (lv := _rescored_level(folder, li, load, raw, facts=facts, notes=notes, say=say, gateway_holds=holds,
                                        overhead_s=overhead, cost=cost, engine=engine, gateway=gw)).scores]
    if not levels:
        raise JournalError(f"{folder}: no replay journal to re-score")
    session_speed(levels, gateway_holds=holds, overhead_s=overhead, cost=cost, engine=engine, gateway=gw)
    notes += drift_notes(levels, calib)
    return ValidationResult(levels=levels, facts=facts, overhead_s=overhead, overhead_samples=samples,
                            capacity_rps=state.get("capacity_rps"), config=config, notes=notes,
                            interrupted=any(lv.interrupted for lv in levels),
                            pooled=pool_levels(levels, overhead_s=overhead), calibration=calib,
                            calibration_frame=cframe)


def refit_calibration(calib: dict, cframe: pl.DataFrame, *, samples: list, overhead_s: float, cost: CostModel,
                      engine: EngineConfig, gateway: GatewayConfig, gateway_holds: bool) -> dict:
    """``calib`` with its fit redone on the saved calibration replay ``cframe``, with the client
    overhead the live run had then (from the probes ``samples`` and the uncorrected profile)."""
    ctrace = cframe.select("request_id", pl.col("intended_s").alias("arrival_s"), "tenant", "input_tokens",
                           "output_tokens", *[pl.lit(None, dtype=t).alias(c) for c, t in REQUEST_SCHEMA.items()
                                              if c not in cframe.columns and c != "arrival_s"]).select(
        list(REQUEST_SCHEMA))
    probe = fit_probe(samples, cost) if samples else ProbeFit(overhead_s)
    st = sim_trace(ctrace, cframe, gateway_holds=gateway_holds, overhead_s=probe.overhead_s)
    fit = calibrate_server(cframe, st, cost=cost, engine=engine, gateway=gateway, overhead_s=probe.overhead_s,
                           prefill_factor=probe.prefill_factor)
    return {**calib, **fitted_calibration(fit)}


def _rescored_level(folder: Path, li: int, load, raw: pl.DataFrame, *, facts: ServerFacts, notes: list[str],
                    say: Callable[[str], None], gateway_holds: bool, overhead_s: float, cost: CostModel,
                    engine: EngineConfig, gateway: GatewayConfig) -> LevelResult:
    """Level ``li`` with every replay its journals hold simulated and scored again."""
    trace, _ = fit_trace(raw, facts.max_model_len)  # as the live run replayed it
    lv = LevelResult.for_trace(load, trace)
    r = 0
    while journal_path(folder, li, r).exists():
        say(f"re-scoring level {li} replay {r + 1}")
        frame = journal_frame(trace, journal_path(folder, li, r))
        meta = load_replay_meta(folder, li, r)
        missing = int((frame["status"] == STATUS_NOT_SENT).sum())
        if missing:
            notes.append(f"level {li} replay {r + 1}: {missing} request(s) not in its journal (kept as not_sent)")
        lv.add_replay(frame, r, before=meta.get("before") or {}, after=meta.get("after") or {},
                      gateway_holds=gateway_holds, overhead_s=overhead_s, cost=cost, engine=engine, gateway=gateway)
        lv.wall_s.append(float(meta.get("wall_s") or math.nan))
        lv.contention.append(meta.get("contention") or {})
        lv.interrupted |= bool(meta.get("interrupted", True)) or missing > 0
        r += 1
    return lv
