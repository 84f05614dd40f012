"""A scenario run for week-long traces: the trace file read lazily, results streamed or summarised.

:func:`driftsim.sim.scenario.run_scenario` loads the whole trace and keeps every
result row. :func:`run_scenario_streamed` runs the same scenario with flat
memory: a trace in driftsim's native Parquet or CSV is read in chunks
(:class:`driftsim.traces.stream.TraceStream`), with the workload's rate scaling,
duration, request cap and per-tenant SLOs and priorities applied chunk by
chunk; per-request rows go to a Parquet file as they settle, or with
``summary_only`` only into the summary (percentiles within 0.5 %). Other
workloads (public trace formats, generated ones) are built in memory as
usual and fed in chunks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import polars as pl

from driftsim.sim.config import ConfigError
from driftsim.sim.run import SimResult, simulate
from driftsim.sim.events import Observer
from driftsim.sim.scenario import BENCH_KEYS, Scenario, build_admission, build_trace, closed_loop, simulation_setup
from driftsim.sim.streaming import DEFAULT_CHUNK_ROWS
from driftsim.traces import transform
from driftsim.traces.loaders import LoadReport, detect_format
from driftsim.traces.stream import TraceStream


def streamed_trace(scenario: Scenario, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[TraceStream | pl.DataFrame, LoadReport | None]:
    """The scenario's workload: a lazy stream for a native trace file, else the table :func:`build_trace` makes."""
    w = scenario.raw.get("workload", {"kind": "driftsched"})
    kind = w.get("kind", "trace" if "path" in w else "driftsched")
    if kind != "trace" or "path" not in w or any(w.get(k) is not None for k in BENCH_KEYS):
        return build_trace(scenario)  # re-timing (request_rate) or num_prompts needs the whole table
    fmt = w.get("format", "auto")
    if (detect_format(w["path"]) if fmt == "auto" else fmt) != "native":
        return build_trace(scenario)  # public formats are sorted / re-based whole by their loaders
    if w.get("assign_tenants"):
        raise ConfigError(
            f"scenario {scenario.name!r} [workload]: assign_tenants splits the whole trace at once and is not"
            " available on a streamed trace; write the tenants into the file, or run without streaming"
        )
    tenants = scenario.raw.get("tenants", {})
    slos = {t: (v.get("slo_ttft_s"), v.get("slo_e2e_s")) for t, v in tenants.items()}
    prios = {t: v["priority"] for t, v in tenants.items() if "priority" in v}

    def per_tenant(df: pl.DataFrame) -> pl.DataFrame:
        present = set(df["tenant"].unique().to_list())
        chunk_slos = {t: v for t, v in slos.items() if t in present}
        chunk_prios = {t: v for t, v in prios.items() if t in present}
        if chunk_slos:
            df = transform.set_slos(df, chunk_slos)
        if chunk_prios:
            df = transform.set_priorities(df, chunk_prios)
        return df

    stream = TraceStream(
        w["path"],
        chunk_rows=chunk_rows,
        rate_scale=float(w.get("rate_scale", 1.0)),
        duration_s=None if w.get("duration_s") is None else float(w["duration_s"]),
        max_requests=None if w.get("max_requests") is None else int(w["max_requests"]),
        map_chunk=per_tenant if (slos or prios) else None,
    )
    if stream.rows == 0:
        raise ConfigError(f"scenario {scenario.name!r}: the workload has no requests")
    return stream, stream.report


def run_scenario_streamed(
    scenario: Scenario,
    *,
    results_path: str | os.PathLike | None = None,
    summary_only: bool = False,
    progress=None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    observers: Iterable[Observer] | None = None,
) -> tuple[SimResult, dict]:
    """Like :func:`driftsim.sim.scenario.run_scenario`, with memory that does not grow with the trace.

    Give ``results_path`` (per-request rows written there as they settle) or
    ``summary_only``. The summary's percentiles come from the sketch
    (``summary["percentiles"]`` says so); the oracle estimator only; no
    closed-loop client (its send times come from the completions of rows
    that a streamed run does not keep).
    """
    if not summary_only and results_path is None:
        raise ConfigError("a streamed run needs results_path, or summary_only")
    if closed_loop(scenario) is not None:
        raise ConfigError(f"scenario {scenario.name!r} [workload] max_concurrency: a closed-loop client needs the "
                          "results in memory; run without streaming or summary-only")
    run, context = simulation_setup(scenario)
    admission = build_admission(scenario)
    trace, report = streamed_trace(scenario, chunk_rows=chunk_rows)
    _refuse_sessions(trace, scenario.name)
    result = simulate(trace, admission=admission, progress=progress, results_path=results_path,
                      summary_only=summary_only, chunk_rows=chunk_rows, observers=observers, **run)
    context.update(admission=admission.__dict__,
                   trace_repairs=list(report.repairs) if report is not None else [],
                   trace_streamed=isinstance(trace, TraceStream))
    return result, context


_SESSIONS_IN_MEMORY = ("has multi-turn sessions (session_id): their turns are sent closed-loop, which needs "
                       "every row in memory; run it without --stream or --summary-only")


def _refuse_sessions(trace, name: str) -> None:
    """Sessions are not sent open-loop: a streamed run refuses them (a stream, at its first session row)."""
    if isinstance(trace, TraceStream):
        inner = trace.map_chunk

        def check(chunk: pl.DataFrame) -> pl.DataFrame:
            if chunk["session_id"].null_count() < chunk.height:
                raise ConfigError(f"scenario {name!r}: the trace {_SESSIONS_IN_MEMORY}")
            return inner(chunk) if inner is not None else chunk

        trace.map_chunk = check
    elif trace["session_id"].null_count() < trace.height:
        raise ConfigError(f"scenario {name!r}: the workload {_SESSIONS_IN_MEMORY}")
