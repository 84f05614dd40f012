"""Resuming a validation after a crash, and re-scoring one from what it saved.

A validation run with an output folder keeps, under ``OUTDIR/replays/``:

- ``levels.json`` and ``level-<i>.parquet``: the traces of every load level
  (written before the first replay);
- ``state.json``: the server's facts, the client overhead and the
  calibration's step offset/floor/per-sequence cost, and the run's
  configuration (written once calibration is done);
- ``level-<i>-rep-<r>.jsonl``: the journal of each replay
  (:class:`driftsim.profiling.journal.ReplayJournal`, a line per finished request);
- ``level-<i>-rep-<r>.json``: each finished replay's wall time, CPU
  contention and engine counters.

Every file but the journals is written atomically.

:func:`replay_journaled` runs one replay through its journal; with
``resume`` it keeps the requests already finished (``ok``, ``timeout``,
``abandoned``, ``skipped``) and replays the rest (never sent, cancelled, or
failed with an error, e.g. because the server died), on a clock that starts
at the first of them and is shifted back onto the original timeline. Those
requests see less load near the resume point than they would have: the
requests finished before the crash are not in flight again.

:func:`rescore` rebuilds the whole result from these files without a
server: each replay's frame from its journal (requests it lacks are kept as
``not_sent``, with the reason), simulated and scored as a live run is. When
the folder holds the held-out calibration replay
(``calibration_requests.parquet``), the calibration is fitted to it again
(:func:`driftsim.validation.replay_sim.calibrate_server`, then the client overhead from the
saved probes), so a changed calibration is scored on the saved replays,
still held out; otherwise the saved calibration is used.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import polars as pl

from driftsim.profiling.gateway import (STATUS_NOT_SENT, ReplayGateway, ReplayRequest, RequestRecord, StreamingClient,
                               records_frame, run_replay)
from driftsim.profiling.journal import (KEEP_ON_RESUME, JournalError, ReplayJournal, atomic_write_json, atomic_write_parquet,
                               read_journal, record_from_row, trace_key)

STATE = "state.json"
LEVELS = "levels.json"


def replays_dir(out: str | Path) -> Path:
    return Path(out) / "replays"


def journal_path(folder: Path, level: int, rep: int) -> Path:
    return folder / f"level-{level}-rep-{rep}.jsonl"


# ---- level traces and state ---------------------------------------------------------------

def save_levels(folder: Path, traces: list[tuple[float | None, pl.DataFrame]]) -> None:
    for i, (_, df) in enumerate(traces):
        atomic_write_parquet(folder / f"level-{i}.parquet", df)
    atomic_write_json(folder / LEVELS, {"levels": [{"load": load, "file": f"level-{i}.parquet",
                                                   "trace": trace_key(df["request_id"]), "requests": df.height}
                                                  for i, (load, df) in enumerate(traces)]})


def load_levels(folder: Path) -> list[tuple[float | None, pl.DataFrame]]:
    path = folder / LEVELS
    try:
        meta = json.loads(path.read_text())
        out = []
        for lv in meta["levels"]:
            df = pl.read_parquet(folder / lv["file"])
            if trace_key(df["request_id"]) != lv["trace"]:
                raise JournalError(f"{folder / lv['file']}: does not match {path} (changed since it was saved)")
            out.append((lv["load"], df))
        return out
    except FileNotFoundError as exc:
        raise JournalError(f"{folder}: no saved validation here ({exc.filename} is missing)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise JournalError(f"{path}: not a driftsim levels file ({exc})") from None


def save_state(folder: Path, **state) -> None:
    atomic_write_json(folder / STATE, _clean(state))


def load_state(folder: Path) -> dict | None:
    path = folder / STATE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise JournalError(f"{path}: not valid JSON ({exc})") from None


def save_replay_meta(folder: Path, level: int, rep: int, meta: dict) -> None:
    atomic_write_json(folder / f"level-{level}-rep-{rep}.json", _clean(meta))


def load_replay_meta(folder: Path, level: int, rep: int) -> dict:
    path = folder / f"level-{level}-rep-{rep}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return obj.item()
    return obj


# ---- one replay through its journal ---------------------------------------------------------

def journaled_records(trace: pl.DataFrame, path: Path) -> tuple[dict[int, dict], int]:
    """The finished requests a journal holds for ``trace`` (``{}`` when there is no journal)."""
    if not path.exists():
        return {}, 0
    return read_journal(path, trace=trace_key(trace["request_id"]))


def replay_journaled(trace: pl.DataFrame, path: Path, *, resume: bool, client, model: str, gateway,
                     microbatch=None, vocab_size: int = 4000, seed: int = 0,
                     request_timeout_s: float | None = 600.0, client_config=None):
    """:func:`driftsim.validation.run.replay` with every finished request appended to the journal ``path``;
    with ``resume``, only the requests the journal lacks are replayed (see the module docstring)."""
    from driftsim.validation.run import ReplayRun, replay_requests
    from driftsim.sim.policies import make_policy

    rows: dict[int, dict] = {}
    if path.exists() and path.stat().st_size:
        if not resume:
            raise JournalError(f"{path} exists: pass --resume to continue that validation, or choose another --out")
        rows, _ = journaled_records(trace, path)
    kept = {i: record_from_row(r) for i, r in rows.items() if r["status"] in KEEP_ON_RESUME}
    reqs = replay_requests(trace)
    todo = [r for r in reqs if r.idx not in kept]
    key = trace_key(trace["request_id"])
    if not todo:
        return ReplayRun(frame=records_frame([kept[i] for i in range(len(reqs))]), interrupted=False, wall_s=0.0)
    shift = todo[0].arrival_s
    sub = [ReplayRequest(idx=k, request_id=r.request_id, arrival_s=r.arrival_s - shift, tenant=r.tenant,
                         priority=r.priority, input_tokens=r.input_tokens, output_tokens=r.output_tokens,
                         est_tokens=r.est_tokens, slo_e2e_s=r.slo_e2e_s) for k, r in enumerate(todo)]
    original = [r.idx for r in todo]
    with ReplayJournal(path, trace=key, requests=len(reqs), time_shift_s=shift) as journal:
        gw = ReplayGateway(sub, policy=make_policy(gateway.policy, **gateway.policy_params),
                           client=StreamingClient(client, model=model, clock=time.perf_counter),
                           max_outstanding=gateway.max_outstanding, microbatch=microbatch, vocab_size=vocab_size,
                           seed=seed, request_timeout_s=request_timeout_s, client_config=client_config,
                           on_record=lambda rec: journal.record(replace(rec, idx=original[rec.idx])))
        t = time.perf_counter()
        records, interrupted = run_replay(gw)
        wall = time.perf_counter() - t
    merged: dict[int, RequestRecord] = dict(kept)
    for rec in records:
        merged[original[rec.idx]] = _shifted(replace(rec, idx=original[rec.idx]), shift)
    frame = records_frame([merged[i] for i in range(len(reqs))])
    return ReplayRun(frame=frame, interrupted=interrupted, wall_s=wall)


def _shifted(rec: RequestRecord, dt: float) -> RequestRecord:
    if not dt:
        return rec
    return replace(rec, intended_s=rec.intended_s + dt, released_s=rec.released_s + dt, sent_s=rec.sent_s + dt,
                   first_token_s=rec.first_token_s + dt, finish_s=rec.finish_s + dt,
                   delivered_s=rec.delivered_s + dt, token_times=[t + dt for t in rec.token_times])


def journal_frame(trace: pl.DataFrame, path: Path) -> pl.DataFrame:
    """One replay's per-request frame from its journal alone; requests it lacks are ``not_sent``."""
    from driftsim.validation.run import replay_requests

    rows, dropped = journaled_records(trace, path)
    recs = []
    for r in replay_requests(trace):
        if r.idx in rows:
            recs.append(record_from_row(rows[r.idx]))
        else:
            recs.append(RequestRecord(idx=r.idx, request_id=r.request_id, tenant=r.tenant, input_tokens=r.input_tokens,
                                      output_tokens=r.output_tokens, intended_s=r.arrival_s, status=STATUS_NOT_SENT,
                                      error="not in the journal: the replay stopped before this request finished"))
    return records_frame(recs)


# ---- re-scoring without a server ------------------------------------------------------------

def rescore(out: str | Path, *, cost=None, progress=None):
    """A :class:`driftsim.validation.run.ValidationResult` from the files a validation saved in ``out``
    (see the module docstring); ``cost`` None = the profile named in the saved configuration."""
    from driftsim.costmodel.profiles import load_profile
    from driftsim.profiling.gateway import MicroBatch
    from driftsim.validation.run import (LevelResult, ServerFacts, ValidationResult, drift_notes, engine_config, fit_trace,
                                  fitted_calibration, pool_levels, session_speed)
    from driftsim.sim.config import GatewayConfig
    from driftsim.validation.replay_sim import OffsetCost, calibrate_server, calibrated, overhead_from_probe, sim_trace
    from driftsim.traces.schema import REQUEST_SCHEMA

    say = progress or (lambda _msg: None)
    folder = replays_dir(out)
    state = load_state(folder)
    if state is None:
        raise JournalError(f"{folder / STATE} is missing: the validation stopped before calibration finished; "
                           "nothing to re-score (run it again, or --resume it)")
    levels_in = load_levels(folder)
    facts = ServerFacts(**state["facts"])
    config = state.get("config") or {}
    if cost is None:
        cost = load_profile(config["profile"]).cost_model
    offs = state.get("step_offset_s") or 0.0, state.get("step_floor_s") or 0.0, state.get("step_per_seq_s") or 0.0
    if any(offs):
        cost = OffsetCost(cost, *offs)
    gw = GatewayConfig(policy=config.get("policy", "fifo"), max_outstanding=config.get("max_outstanding"))
    mb = MicroBatch(**{k: v for k, v in config["microbatch"].items()}) if config.get("microbatch") else None
    engine = engine_config(facts, microbatch=mb)
    holds = gw.max_outstanding is not None or mb is not None
    overhead = float(state.get("overhead_s") or 0.0)
    samples = [tuple(x) for x in state.get("overhead_samples") or []]
    notes = list(state.get("notes") or [])
    calib = state.get("calibration")
    cpath = Path(out) / "calibration_requests.parquet"
    cframe = None
    if calib and calib.get("correction") and cpath.exists():  # fit the calibration again, held out as before
        say("re-fitting the calibration to the saved calibration replay")
        cframe = pl.read_parquet(cpath)
        ctrace = cframe.select("request_id", pl.col("intended_s").alias("arrival_s"), "tenant", "input_tokens",
                               "output_tokens", *[pl.lit(None, dtype=t).alias(c) for c, t in REQUEST_SCHEMA.items()
                                                  if c not in cframe.columns and c != "arrival_s"]).select(
            list(REQUEST_SCHEMA))
        c_overhead = overhead_from_probe(samples, cost) if samples else overhead  # as the live run had it then
        st = sim_trace(ctrace, cframe, gateway_holds=holds, overhead_s=c_overhead)
        fit = calibrate_server(cframe, st, cost=cost, engine=engine, gateway=gw, overhead_s=c_overhead)
        calib = {**calib, **fitted_calibration(fit)}
        notes.append(f"calibration fitted again to {cpath.name}")
    cost, engine = calibrated(cost, engine, calib)
    if cframe is not None and samples:
        overhead = overhead_from_probe(samples, cost)
    levels: list[LevelResult] = []
    for li, (load, raw) in enumerate(levels_in):
        trace, _ = fit_trace(raw, facts.max_model_len)  # as the live run replayed it
        span = float(trace["arrival_s"].max() - trace["arrival_s"].min()) if trace.height > 1 else 0.0
        lv = LevelResult(load=load, rate_rps=(trace.height - 1) / span if span > 0 else math.nan, trace=trace)
        r = 0
        while journal_path(folder, li, r).exists():
            say(f"re-scoring level {li} replay {r + 1}")
            frame = journal_frame(trace, journal_path(folder, li, r))
            meta = load_replay_meta(folder, li, r)
            missing = int((frame["status"] == STATUS_NOT_SENT).sum())
            if missing:
                notes.append(f"level {li} replay {r + 1}: {missing} request(s) not in its journal (kept as not_sent)")
            lv.add_replay(frame, r, before=meta.get("before") or {}, after=meta.get("after") or {},
                          gateway_holds=holds, overhead_s=overhead, cost=cost, engine=engine, gateway=gw)
            lv.wall_s.append(float(meta.get("wall_s") or math.nan))
            lv.contention.append(meta.get("contention") or {})
            lv.interrupted |= bool(meta.get("interrupted", True)) or missing > 0
            r += 1
        if lv.scores:
            levels.append(lv)
    if not levels:
        raise JournalError(f"{folder}: no replay journal to re-score")
    session_speed(levels, gateway_holds=holds, overhead_s=overhead, cost=cost, engine=engine, gateway=gw)
    notes += drift_notes(levels, calib)
    return ValidationResult(levels=levels, facts=facts, overhead_s=overhead,
                            overhead_samples=[tuple(x) for x in state.get("overhead_samples") or []],
                            capacity_rps=state.get("capacity_rps"), config=config, notes=notes,
                            interrupted=any(lv.interrupted for lv in levels),
                            pooled=pool_levels(levels, overhead_s=overhead), step_offset_s=offs[0],
                            step_floor_s=offs[1], step_per_seq_s=offs[2], calibration=calib,
                            calibration_frame=cframe)
