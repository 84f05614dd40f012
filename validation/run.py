"""Validation runs: replay a trace on a real engine, simulate the same trace, score.

The library behind ``driftsim validate``. One *level* is one trace: it is
replayed ``repeat`` times through the real gateway running driftsim's
policy objects (:mod:`driftsim.profiling.trace_replay`), each replay is
simulated from its own actual send/release times with the server's real KV
capacity and limits (:mod:`driftsim.validation.levels`), and each simulation
is scored against its replay; the repeats give the real engine's run-to-run
spread. A *sweep* is several levels of the same workload at increasing load
(:mod:`driftsim.validation.workload`).

Before the first level: a warm-up, the overhead probe (1-token requests on
the idle server, :func:`driftsim.validation.calibration.fit_probe`)
and, given a held-out trace, the calibration replay
(:func:`driftsim.validation.calibration.calibrate_server`). With an output
folder every replay goes through a journal, so that nothing measured is lost
and a stopped run can be resumed (:mod:`driftsim.validation.session`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import polars as pl

from driftsim.costmodel.base import CostModel
from driftsim.profiling.contention import CONTENDED_SHARE, ForeignCpu, host_load, url_port, wait_for_quiet
from driftsim.profiling.http import OpenAIClient
from driftsim.profiling.prompts import replay_seed
from driftsim.profiling.server_facts import ServerFacts, engine_config, engine_counters
from driftsim.profiling.trace_replay import ReplayRun, probe_overhead, replay, replay_journaled, warm_up
from driftsim.sim.config import EngineConfig
from driftsim.validation.calibration import (calibrate_server, calibrated, fit_probe, fitted_calibration,
                                             overhead_from_probe)
from driftsim.validation.levels import LevelResult, drift_notes, level_label, pool_levels, session_speed
from driftsim.validation.plan import ValidationPlan
from driftsim.validation.replay_sim import sim_trace
from driftsim.validation.session import (ValidationResult, journal_path, load_levels, load_replay_meta, load_state,
                                         save_levels, save_replay_meta, save_state)
from driftsim.validation.workload import fit_trace, placed_levels, placement_notes


@dataclass
class _LiveRun:
    """One run's live parts and what it has found so far (filled in as it goes, so that Ctrl-C keeps it)."""

    plan: ValidationPlan
    client: OpenAIClient
    facts: ServerFacts
    meter: ForeignCpu
    say: Callable[[str], None]
    cost: CostModel
    engine: EngineConfig
    overhead_s: float | None
    samples: list[tuple[int, float]] = field(default_factory=list)
    prefill_factor: float = 1.0  # the idle server's prefill over the profile's, from the probes (1: not measured)
    calibration: dict | None = None
    calibration_frame: pl.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        """Whether the gateway holds requests (a cap or the micro-batch worker): simulate from release times."""
        return self.plan.max_outstanding is not None or self.plan.microbatch is not None

    def wait_quiet(self, what: str) -> None:
        if self.plan.wait_quiet_s:
            waited = wait_for_quiet(self.meter, max_wait_s=self.plan.wait_quiet_s, say=self.say)
            if waited > 5:
                self.notes.append(f"{what}: waited {waited:.0f} s for other processes to quieten")

    def contention(self, what: str, consequence: str) -> dict:
        """The meter's reading since its start, with a note when other processes used too much CPU."""
        reading = {**self.meter.stop(), "load_1min": host_load()}
        if reading["foreign_share"] > CONTENDED_SHARE:
            self.notes.append(f"{what}: other processes used {100 * reading['foreign_share']:.0f} % of the CPU "
                              f"meanwhile; {consequence} (rerun on an idle machine)")
        return reading

    def result(self, levels: list[LevelResult], *, capacity: float | None, interrupted: bool,
               pooled: LevelResult | None = None) -> ValidationResult:
        return ValidationResult(levels=levels, facts=self.facts, overhead_s=self.overhead_s or 0.0,
                                overhead_samples=self.samples, capacity_rps=capacity,
                                config=self.plan.config_record(), notes=self.notes, interrupted=interrupted,
                                pooled=pooled, calibration=self.calibration, calibration_frame=self.calibration_frame)


def run_validation(plan: ValidationPlan, *, client: OpenAIClient, facts: ServerFacts, cost: CostModel,
                   traces: list[tuple[float | None, pl.DataFrame]], capacity: float | None = None,
                   calibration: pl.DataFrame | None = None, server_pgid: int | None = None,
                   capacity_of: Callable[[CostModel, EngineConfig], float] | None = None,
                   progress: Callable[[str], None] | None = None) -> ValidationResult:
    """Replay each ``(load, trace)`` ``plan.repeat`` times, simulate each replay, score it.

    ``plan.overhead_s`` None = measure it with :func:`driftsim.profiling.trace_replay.probe_overhead`.
    Ctrl-C stops at once and returns what was measured (``interrupted``).
    ``server_pgid``: a launched server's process group, so its CPU is not
    counted as contention (:class:`driftsim.profiling.contention.ForeignCpu`).
    ``calibration``: a held-out trace (never one of ``traces``) replayed once
    first, to which :func:`driftsim.validation.calibration.calibrate_server`
    fits this server's step correction and admission model. With
    ``plan.out`` the level traces, the calibration and a journal per replay
    are kept there; with ``plan.resume``, what a previous run there saved is
    continued instead of started over.
    ``capacity_of``: the simulated capacity of the workload under a cost model and engine. Given with a
    calibration and ``capacity`` (the profile's, which ``traces`` were placed against) and with
    ``plan.capacity_from`` "calibration", the levels' rates are rescaled to the same fractions of the
    calibrated simulator's capacity: this server's as far as its calibration replay tells, so that a
    load of 0.8 is below this server's saturation and not only below the profile's. The saved levels
    stay as placed first; the factor is kept in the saved state and applied again on resume and re-score.
    """
    run = _LiveRun(plan=plan, client=client, facts=facts, say=progress or (lambda _msg: None),
                   meter=ForeignCpu(server_pgid=server_pgid, port=url_port(facts.url)), cost=cost,
                   engine=engine_config(facts, microbatch=plan.microbatch), overhead_s=plan.overhead_s)
    folder = plan.journal_dir
    saved = None
    if folder is not None:  # nothing measured is lost: see driftsim.validation.session
        if plan.resume and (folder / "levels.json").exists():
            traces = load_levels(folder)
        else:
            save_levels(folder, traces)
        saved = load_state(folder) if plan.resume else None
    if saved is not None:  # calibrated before it stopped: keep the same corrections
        run.overhead_s = saved["overhead_s"]
        run.samples = [tuple(x) for x in saved.get("overhead_samples") or []]
        run.calibration, calibration = saved.get("calibration"), None
        run.cost, run.engine = calibrated(run.cost, run.engine, run.calibration)
    try:
        _prepare(run, calibration)
    except KeyboardInterrupt:
        return run.result([], capacity=capacity, interrupted=True)
    if saved is not None:
        scale = float(saved.get("load_scale", 1.0))
        capacity = saved.get("capacity_rps", capacity)
    else:
        scale = 1.0
        if capacity_of is not None and run.calibration and capacity and plan.capacity_from == "calibration":
            scale = capacity_of(run.cost, run.engine) / capacity
            capacity *= scale
    run.notes += placement_notes(scale, capacity)
    traces = placed_levels(traces, scale)
    if folder is not None and saved is None:
        save_state(folder, facts=asdict(facts), overhead_s=run.overhead_s, overhead_samples=run.samples,
                   calibration=run.calibration, capacity_rps=capacity, load_scale=scale, config=plan.config_record())
    levels = []
    for load, raw in traces:
        trace, fit_notes = fit_trace(raw, facts.max_model_len)
        run.notes += [f"load {load}: {n}" if load is not None else n for n in fit_notes]
        levels.append(LevelResult.for_trace(load, trace))
    interrupted = _replay_levels(run, levels)
    levels = [lv for lv in levels if lv.scores]
    session_speed(levels, gateway_holds=run.holds, overhead_s=run.overhead_s, cost=run.cost, engine=run.engine,
                  gateway=plan.gateway)
    run.notes += drift_notes(levels, run.calibration)
    return run.result(levels, capacity=capacity, interrupted=interrupted,
                      pooled=pool_levels(levels, overhead_s=run.overhead_s))


def _prepare(run: _LiveRun, calibration: pl.DataFrame | None) -> None:
    """Warm the server up, measure the client overhead and calibrate, as the plan asks."""
    plan, facts = run.plan, run.facts
    if plan.warmup:
        run.say("warming the server up")
        warm_up(run.client, facts.model, vocab_size=plan.vocab_size or 4000, max_model_len=facts.max_model_len,
                seed=plan.seed)
    if run.overhead_s is None or calibration is not None:
        run.wait_quiet("overhead probe and calibration")
    if run.overhead_s is None:
        run.say("measuring the client/HTTP overhead with 1-token requests")
        run.samples = probe_overhead(run.client, facts.model, vocab_size=plan.vocab_size or 4000, seed=plan.seed)
        probe = fit_probe(run.samples, run.cost)
        run.overhead_s, run.prefill_factor = probe.overhead_s, probe.prefill_factor
    if calibration is not None:
        _calibrate(run, calibration)


def _calibrate(run: _LiveRun, calibration: pl.DataFrame) -> None:
    """Replay the held-out ``calibration`` trace once and fit this server's step times and admission to it."""
    plan, facts = run.plan, run.facts
    ctrace, _ = fit_trace(calibration, facts.max_model_len)
    run.say(f"calibration replay ({ctrace.height} requests, held out)")
    run.meter.start()
    crun = replay(ctrace, client=run.client, model=facts.model, gateway=plan.gateway, microbatch=plan.microbatch,
                  vocab_size=plan.vocab_size or 4000, seed=plan.seed + 1, request_timeout_s=plan.timeout_s)
    contention = run.contention("calibration replay", "the correction fitted to it is distorted")
    run.calibration_frame = crun.frame
    if crun.interrupted:
        raise KeyboardInterrupt
    st = sim_trace(ctrace, crun.frame, gateway_holds=run.holds, overhead_s=run.overhead_s)
    run.say("fitting the server's step times and admission to the calibration replay")
    fit = calibrate_server(crun.frame, st, cost=run.cost, engine=run.engine, gateway=plan.gateway,
                           overhead_s=run.overhead_s, prefill_factor=run.prefill_factor)
    run.calibration = {"requests": ctrace.height, "wall_s": crun.wall_s, **fitted_calibration(fit),
                       "real_errors": int((crun.frame["status"] != "ok").sum()), "contention": contention}
    run.cost, run.engine = calibrated(run.cost, run.engine, run.calibration)
    if run.samples:
        run.overhead_s = overhead_from_probe(run.samples, run.cost)


def _replay_levels(run: _LiveRun, levels: list[LevelResult]) -> bool:
    """Every level's replays, each simulated and scored as it comes; True if Ctrl-C stopped them.

    The repeats go round the levels (0.3, 0.6, ..., then 0.3 again), not one level N times in a row: a
    server whose speed drifts over minutes (measured on a shared VM: x0.97 and x1.04 of the simulated
    step times in back-to-back replays of one trace) then shows in the spread, and each level's mean
    is taken across the whole session.
    """
    for r in range(run.plan.repeat):
        for li, lv in enumerate(levels):
            if _replay_level(run, li, lv, r):
                lv.interrupted = True
                return True
    return False


def _replay_level(run: _LiveRun, li: int, lv: LevelResult, r: int) -> bool:
    """Replay ``r`` of level ``li``: replayed, metered, simulated and scored; True if it was interrupted."""
    plan, folder = run.plan, run.plan.journal_dir
    label = level_label(lv.load)
    run.say(f"{label}: replay {r + 1} of {plan.repeat} ({lv.trace.height} requests, {lv.rate_rps:.2f} req/s)")
    run.wait_quiet(f"{label} replay {r + 1}")
    before = engine_counters(run.client)
    run.meter.start()
    done = _replay(run, lv.trace, None if folder is None else journal_path(folder, li, r), seed=replay_seed(plan.seed, li, r))
    lv.wall_s.append(done.wall_s)
    lv.contention.append(run.contention(f"{label} replay {r + 1}", "its timings are distorted"))
    after = engine_counters(run.client)
    if folder is not None:
        old = load_replay_meta(folder, li, r) if plan.resume and done.wall_s == 0.0 else {}
        if old:  # done before: keep what was measured then
            lv.wall_s[-1], lv.contention[-1] = old.get("wall_s", 0.0), old.get("contention") or {}
            before, after = old.get("before") or {}, old.get("after") or {}
        save_replay_meta(folder, li, r, {"wall_s": lv.wall_s[-1], "contention": lv.contention[-1],
                                         "before": before, "after": after, "interrupted": done.interrupted})
    lv.add_replay(done.frame, r, before=before, after=after, gateway_holds=run.holds, overhead_s=run.overhead_s,
                  cost=run.cost, engine=run.engine, gateway=plan.gateway)
    return done.interrupted


def _replay(run: _LiveRun, trace: pl.DataFrame, journal: Path | None, *, seed: int) -> ReplayRun:
    """One replay of ``trace``, through ``journal`` where the run keeps one. ``seed``: its prompts' own
    (:func:`driftsim.profiling.prompts.replay_seed`), so that no replay finds another's prompts in the
    server's prefix cache: each starts cold, as its simulation does."""
    plan = run.plan
    common = dict(client=run.client, model=run.facts.model, gateway=plan.gateway, microbatch=plan.microbatch,
                  vocab_size=plan.vocab_size or 4000, seed=seed, request_timeout_s=plan.timeout_s,
                  client_config=plan.client_config)
    if journal is None:
        return replay(trace, **common)
    return replay_journaled(trace, journal, resume=plan.resume, **common)
