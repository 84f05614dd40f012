"""One run: a :class:`~driftsim.capacity.spec.RunSpec` in, a small flat :class:`RunOutcome` out.

:func:`execute` is a pure function of its spec (everything random is seeded
by the spec's scenario), so an executor may run it in any process or on any
machine and retry it safely. It returns summary rows (one per tenant plus
``overall``), the spec's SLO targets evaluated on the per-request table
(:func:`driftsim.capacity.slo.evaluate`), and, when asked, a few hundred points
of time series and latency CDFs for the report; the per-request table
itself never leaves the worker.

Bad input (an unknown policy, a missing trace, an invalid engine limit)
comes back as a failed outcome with the message, at once; any other
exception propagates, so the executor retries the run (a crash, a lost
worker) and reports it failed only after its retries.

Mixed GPU pools. :func:`driftsim.sim.run.simulate` takes one cost model for all
replicas, so a heterogeneous pool (``options["pool"] = {profile: replicas}``)
is approximated by homogeneous sub-pools: the trace is split across them in
arrival order by smooth weighted round robin, each sub-pool's weight being
its replicas x one replica's capacity (output tokens/s at saturation on the
workload, :func:`measure_capacity`); each sub-pool is simulated on its own
(with its own admission state) and the per-request results are merged
before summarising. A real router would balance on live load across the
whole pool, so the split loses some statistical multiplexing between the
sub-pools: the approximation errs on the pessimistic side.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from driftsim.admission.controller import AdmissionConfig
from driftsim.capacity.slo import evaluate
from driftsim.capacity.spec import RunSpec
from driftsim.sim.config import ConfigError, GatewayConfig
from driftsim.sim.metrics import LATENCY_METRICS, STATS, summarize
from driftsim.sim.run import simulate
from driftsim.sim.scenario import (
    INPUT_ERRORS,
    Scenario,
    build_admission,
    build_engine,
    build_gateway,
    build_profile,
    build_trace,
    run_scenario,
)

TIMESERIES_POINTS = 241
CDF_PROBS = np.linspace(0.0, 1.0, 101)
CAPACITY_REQUESTS = 2000  # requests of the workload's head used to measure one replica's capacity
OVERALL = "overall"


@dataclass
class RunOutcome:
    """What a run returns: small, picklable, independent of the per-request table.

    ``rows``: one flat dict per tenant and ``overall`` (see :func:`summary_rows`);
    ``checks``: targets evaluated per tenant; ``timeseries`` / ``cdf``: for
    the report when the spec asked; ``extra``: e.g. a measured capacity;
    ``attempts``: how many tries it took (set by the executor when known);
    ``worker``: host:pid that ran it.
    """

    index: int
    label: str
    config: str
    params: dict
    ok: bool
    error: str | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0  # CPU time of the worker process during the run: wall much above it means a busy machine
    rows: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    timeseries: dict | None = None
    cdf: dict | None = None
    extra: dict = field(default_factory=dict)
    attempts: int | None = 1
    worker: str = ""


def input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: reported at once, never retried."""
    return INPUT_ERRORS


def failed(spec: RunSpec, error: str, *, attempts: int | None = None, wall_s: float = 0.0) -> RunOutcome:
    return RunOutcome(
        index=spec.index, label=spec.label, config=spec.config, params=spec.params, ok=False,
        error=error, wall_s=wall_s, attempts=attempts, worker=_worker(),
    )  # fmt: skip


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute(spec: RunSpec) -> RunOutcome:
    """Simulate ``spec`` and return its outcome (see the module docstring for what raises)."""
    t0, c0 = time.perf_counter(), time.process_time()
    _test_hooks(spec.options)
    try:
        if spec.options.get("measure_capacity"):
            return RunOutcome(
                index=spec.index, label=spec.label, config=spec.config, params=spec.params, ok=True,
                wall_s=time.perf_counter() - t0, extra=measure_capacity(spec.scenario), worker=_worker(),
            )  # fmt: skip
        requests, replica_stats, info = simulate_spec(spec)
        summary = summarize(requests, replica_stats)
    except input_errors() as exc:
        return failed(spec, f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc), wall_s=time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    out = RunOutcome(
        index=spec.index, label=spec.label, config=spec.config, params=spec.params, ok=True, wall_s=wall,
        cpu_s=time.process_time() - c0,
        rows=summary_rows(spec, requests, summary, info, wall), checks=evaluate(requests, spec.targets),
        worker=_worker(),
    )  # fmt: skip
    if spec.options.get("timeseries"):
        out.timeseries = timeseries(requests, info["kv_tokens"])
    if spec.options.get("cdf"):
        out.cdf = cdfs(requests)
    return out


def _test_hooks(options: dict) -> None:
    """Failure injection for executor tests: fail or crash on the first attempt only (a marker file remembers)."""
    for key in ("_fail_once", "_crash_once"):
        marker = options.get(key)
        if not marker:
            continue
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            continue
        if key == "_crash_once":
            os._exit(3)  # a worker dying mid-run, as an OOM kill would
        raise RuntimeError(f"injected failure on the first attempt (test hook {key})")
    if options.get("_fail_always"):
        raise RuntimeError("injected failure on every attempt (test hook _fail_always)")


# --------------------------------------------------------------------------- simulating
def simulate_spec(spec: RunSpec) -> tuple[pl.DataFrame, list[dict], dict]:
    """Per-request results, replica counters and pool facts of one spec (homogeneous or mixed pool)."""
    raw = spec.scenario
    pool = {p: int(n) for p, n in (spec.options.get("pool") or {}).items() if int(n) > 0}
    if len(pool) > 1:
        return simulate_mixed(raw, pool, spec.options.get("capacity"))
    if pool:  # one GPU type: the ordinary homogeneous run
        (profile, n), = pool.items()
        raw = dict(raw, profile=profile, replicas=n)
    sc = Scenario(name=str(raw.get("name", "sweep")), raw=raw)
    result, ctx = run_scenario(sc)
    profile = ctx["profile"]
    n = len(result.replicas)
    info = {
        "pool": {profile["name"]: n},
        "gpus": {profile["name"]: profile["gpu"]},
        "kv_tokens": n * ctx["kv_blocks_per_replica"] * ctx["engine"]["block_size"],
    }
    return result.requests, result.replicas, info


def _subpool(raw: dict, profile: str):
    sc = Scenario(name=str(raw.get("name", "sweep")), raw=dict(raw, profile=profile))
    prof = build_profile(sc)
    eng = build_engine(sc, prof)
    blocks = eng.num_gpu_blocks or prof.kv_capacity_blocks(eng.block_size, eng.gpu_memory_utilization)
    return prof, eng, blocks


def simulate_mixed(raw: dict, pool: dict, capacity: dict | None = None) -> tuple[pl.DataFrame, list[dict], dict]:
    """A heterogeneous pool approximated by homogeneous sub-pools over a split trace (module docstring)."""
    sc = Scenario(name=str(raw.get("name", "sweep")), raw=raw)
    gateway, admission = build_gateway(sc), build_admission(sc)
    trace, _ = build_trace(sc)
    subs = [(p, int(n), *_subpool(raw, p)) for p, n in pool.items() if int(n) > 0]
    if not subs:
        raise ConfigError("a GPU pool needs at least one replica")
    capacity = dict(capacity or {})
    for p, *_ in subs:
        if p not in capacity:
            capacity[p] = measure_capacity(dict(raw, profile=p))["output_tokens_per_s"]
    assign = smooth_wrr(trace.height, [n * capacity[p] for p, n, *_ in subs])
    parts, stats, offset, kv_tokens = [], [], 0, 0
    for k, (p, n, prof, eng, blocks) in enumerate(subs):
        kv_tokens += n * blocks * eng.block_size
        sub = trace.filter(pl.Series(assign == k))
        if sub.height == 0:
            stats += [{"replica": offset + i, "busy_s": 0.0, "steps": 0, "preemptions": 0, "kv_blocks": blocks, "profile": p} for i in range(n)]
        else:
            res = simulate(
                sub, cost=prof.cost_model, engine=eng, gateway=gateway, replicas=n, num_blocks=blocks,
                horizon_s=raw.get("horizon_s"), admission=admission, seed=int(raw.get("seed", 0)),
            )  # fmt: skip
            parts.append(res.requests.with_columns(
                pl.when(pl.col("replica") >= 0).then(pl.col("replica") + offset).otherwise(-1).alias("replica"),
                pl.lit(p).alias("profile"),
            ))  # fmt: skip
            stats += [dict(r, replica=r["replica"] + offset, profile=p) for r in res.replicas]
        offset += n
    requests = pl.concat(parts, how="diagonal_relaxed").sort("arrival_s", "request_id")
    info = {"pool": {p: n for p, n, *_ in subs}, "gpus": {p: prof.gpu.name for p, _, prof, *_ in subs}, "kv_tokens": kv_tokens}
    return requests, stats, info


def smooth_wrr(n: int, weights: list[float]) -> np.ndarray:
    """Sub-pool index for each of ``n`` requests in arrival order: smooth weighted round robin (nginx's).

    Each pick adds every weight to its running credit, takes the largest
    credit and charges it the total, so shares follow the weights exactly
    and picks of one sub-pool are spread evenly in time.
    """
    w = np.asarray(weights, dtype=float)
    if w.size == 0 or not (w > 0).all():
        raise ValueError(f"weights must be positive, got {weights}")
    credit = np.zeros_like(w)
    total = w.sum()
    out = np.empty(n, dtype=np.int32)
    for i in range(n):
        credit += w
        k = int(credit.argmax())
        credit[k] -= total
        out[i] = k
    return out


def measure_capacity(raw: dict, n: int = CAPACITY_REQUESTS) -> dict:
    """One replica's throughput at saturation on this workload: its first ``n`` requests all at time 0.

    FIFO, oracle lengths, one replica of the scenario's profile; returns
    ``output_tokens_per_s`` and ``requests_per_s`` (over the run's span).
    """
    sc = Scenario(name=str(raw.get("name", "sweep")), raw=raw)
    trace, _ = build_trace(sc)
    trace = trace.head(n).with_columns(pl.lit(0.0).alias("arrival_s"))
    prof, eng, blocks = _subpool(raw, raw.get("profile", "l4-qwen1.5-1.8b-chat"))
    res = simulate(trace, cost=prof.cost_model, engine=eng, gateway=GatewayConfig(), replicas=1, num_blocks=blocks,
                   admission=AdmissionConfig(estimator="oracle"))
    s = res.summary["overall"]
    return {"profile": prof.name, "output_tokens_per_s": float(s["output_tokens_per_s"]), "requests_per_s": float(s["throughput_rps"])}


# --------------------------------------------------------------------------- records
def summary_rows(spec: RunSpec, requests: pl.DataFrame, summary: dict, info: dict, wall_s: float) -> list[dict]:
    """One flat row per tenant and ``overall``: the axis values, the pool, every summary metric.

    Latency columns are ``{metric}_{stat}`` (``ttft_s_p99``); ``*_attainment``
    are shares of requests with that SLO meeting it (refused and unfinished
    count as misses); ``offered_rps`` is the tenant's requests over the whole
    arrival span; ``output_tokens`` the tokens generated.
    """
    pool = info["pool"]
    common = {"index": spec.index, "config": spec.config, "label": spec.label}
    common.update({k: v for k, v in spec.params.items() if k not in ("seed", "profile", "replicas", "pool")})
    common.update(
        profile="+".join(f"{p}:{n}" for p, n in pool.items()) if len(pool) > 1 else next(iter(pool)),
        gpu="+".join(f"{info['gpus'][p]}:{n}" for p, n in pool.items()) if len(pool) > 1 else next(iter(info["gpus"].values())),
        replicas=sum(pool.values()),
        seed=int(spec.scenario.get("seed", 0)),
    )  # fmt: skip
    arr = requests["arrival_s"]
    arrival_span = float(arr.max() - arr.min()) if requests.height > 1 else math.nan
    extra = _per_tenant_extras(requests)
    rows = []
    for tenant in [*summary["tenants"], OVERALL]:
        g = summary["overall"] if tenant == OVERALL else summary["tenants"][tenant]
        e = extra.get(tenant, {})
        row = dict(common, tenant=tenant)
        for k in ("requests", "completed", "rejected", "unfinished", "throughput_rps", "output_tokens_per_s", "preemptions", "slo_requests"):
            row[k] = g[k]
        row["output_tokens"] = int(e.get("output_tokens", 0))
        row["offered_rps"] = g["requests"] / arrival_span if arrival_span and arrival_span > 0 else math.nan
        row["slo_attainment"] = g["slo_attainment"] if g["slo_attainment"] is not None else math.nan
        for k in ("ttft_attainment", "e2e_attainment", "slo_ttft_s", "slo_e2e_s"):
            row[k] = e.get(k, math.nan)
        for m in LATENCY_METRICS:
            for s in STATS:
                row[f"{m}_{s}"] = g[m][s]
        row["span_s"] = summary["span_s"]
        row["busy_fraction"] = summary["busy_fraction"]
        row["wall_s"] = wall_s
        rows.append(row)
    return rows


def _per_tenant_extras(requests: pl.DataFrame) -> dict[str, dict]:
    ok = pl.col("status") == "ok"
    exprs = [
        pl.col("generated_tokens").filter(ok).sum().alias("output_tokens"),
        (ok & (pl.col("ttft_s") <= pl.col("slo_ttft_s"))).filter(pl.col("slo_ttft_s").is_not_null()).mean().alias("ttft_attainment"),
        (ok & (pl.col("e2e_s") <= pl.col("slo_e2e_s"))).filter(pl.col("slo_e2e_s").is_not_null()).mean().alias("e2e_attainment"),
        pl.col("slo_ttft_s").drop_nulls().first().alias("slo_ttft_s"),
        pl.col("slo_e2e_s").drop_nulls().first().alias("slo_e2e_s"),
    ]
    lean = requests.select("tenant", "status", "generated_tokens", "ttft_s", "e2e_s", "slo_ttft_s", "slo_e2e_s").with_columns(
        pl.col("ttft_s").fill_null(math.inf), pl.col("e2e_s").fill_null(math.inf)
    )
    out = {r["tenant"]: r for r in lean.group_by("tenant").agg(exprs).to_dicts()}
    out[OVERALL] = dict(lean.select(exprs).to_dicts()[0], slo_ttft_s=None, slo_e2e_s=None)  # tenants' SLOs differ
    return {k: {kk: (math.nan if vv is None else vv) for kk, vv in v.items()} for k, v in out.items()}


def timeseries(requests: pl.DataFrame, kv_tokens: int, points: int = TIMESERIES_POINTS) -> dict:
    """Queue depth and running requests per tenant, and estimated KV use, on a time grid.

    Derived from per-request times, not sampled inside the engine:
    ``queue_depth(t) = #arrived(<= t) - #scheduled(<= t)`` (refused requests
    never queue); ``running(t) = #scheduled(<= t) - #finished(<= t)`` (in
    continuous mode, the sequences in the engines' batches, summed over
    replicas; a preempted request still counts as running); ``kv_usage(t)``
    = sum over running requests of prompt + tokens generated so far (taken
    as linear between first token and finish) over the pool's KV tokens.
    """
    live = requests.filter(pl.col("status") != "rejected")
    if live.height == 0:
        return {"t_s": [], "queue_depth": {}, "running": {}, "kv_usage": []}
    arrival = live["arrival_s"].to_numpy()
    sched = np.nan_to_num(live["scheduled_s"].to_numpy(), nan=np.inf)
    first = np.nan_to_num(live["first_token_s"].to_numpy(), nan=np.inf)
    finish = np.nan_to_num(live["finish_s"].to_numpy(), nan=np.inf)
    end = float(np.max(np.where(np.isfinite(finish), finish, arrival)))
    grid = np.linspace(float(arrival.min()), max(end, float(arrival.min()) + 1e-9), points)
    tenants = live["tenant"].to_numpy()
    q, r = {}, {}
    for tenant in [*sorted(set(tenants.tolist())), OVERALL]:
        m = np.ones(len(tenants), bool) if tenant == OVERALL else tenants == tenant
        cnt = lambda x: np.searchsorted(np.sort(x[m]), grid, side="right")  # noqa: E731
        q[tenant] = (cnt(arrival) - cnt(sched)).tolist()
        r[tenant] = (cnt(sched) - cnt(finish)).tolist()
    inp = live["input_tokens"].to_numpy().astype(float)
    gen = live["generated_tokens"].to_numpy().astype(float)
    kv = np.zeros(points)
    for lo in range(0, live.height, 20_000):  # bounded memory: chunks of requests x grid
        s = slice(lo, lo + 20_000)
        t = grid[None, :]
        running = (sched[s, None] <= t) & (t < finish[s, None])
        span = np.maximum(finish[s] - first[s], 1e-12)[:, None]
        frac = np.clip((t - first[s, None]) / span, 0.0, 1.0)
        produced = np.where(t >= first[s, None], 1.0 + (np.maximum(gen[s, None], 1.0) - 1.0) * frac, 0.0)
        kv += np.where(running, inp[s, None] + produced, 0.0).sum(axis=0)
    return {"t_s": grid.tolist(), "queue_depth": q, "running": r, "kv_usage": (kv / max(kv_tokens, 1)).tolist()}


def cdfs(requests: pl.DataFrame) -> dict:
    """TTFT and E2E at 101 evenly spaced probabilities, per tenant and overall (completed requests)."""
    ok = requests.filter(pl.col("status") == "ok")
    out = {}
    for tenant in [*sorted(ok["tenant"].unique().to_list()), OVERALL]:
        part = ok if tenant == OVERALL else ok.filter(pl.col("tenant") == tenant)
        out[tenant] = {m: np.quantile(part[m].to_numpy(), CDF_PROBS).tolist() for m in ("ttft_s", "e2e_s") if part.height}
    return out
