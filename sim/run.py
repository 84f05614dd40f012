"""One simulation run: a trace, a cost model and a configuration in; results out.

This is the library entry point the CLI (and sweeps) call. It wires the
SimPy pieces together: arrivals -> gateway (policy) -> router -> replicas ->
completion -> columnar results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import polars as pl
import simpy

from costmodel.base import CostModel
from sim.admission import Admission, AdmissionConfig
from sim.config import ConfigError, EngineConfig, GatewayConfig
from sim.engine import EngineCore
from sim.gateway import Gateway
from sim.metrics import summarize
from sim.policies import make_policy
from sim.replica import ContinuousReplica, MicroBatchWorker, urgent_timeout
from sim.request import SimRequest
from sim.results import ResultRecorder
from sim.router import ROUTERS


@dataclass
class SimResult:
    """What a run produced: one row per request, replica counters and the summary.

    ``calibration_history``: with the ``driftsched`` estimator, the bias after
    every completion (columns ``time_s``, ``key``, ``bias``; see
    :meth:`sim.calibration.DriftCalibrator.history`); None otherwise. Kept
    out of ``summary`` so that stays small and JSON-ready.
    """

    requests: pl.DataFrame
    replicas: list[dict]
    summary: dict = field(default_factory=dict)
    calibration_history: pl.DataFrame | None = None


def simulate(
    trace: pl.DataFrame,
    *,
    cost: CostModel,
    engine: EngineConfig,
    gateway: GatewayConfig | None = None,
    replicas: int = 1,
    num_blocks: int | None = None,
    horizon_s: float | None = None,
    admission: AdmissionConfig | None = None,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> SimResult:
    """Simulate ``trace`` (the request table of :mod:`traces.schema`).

    ``num_blocks`` is the KV capacity per replica in blocks (default: the
    engine config's ``num_gpu_blocks``, else the cost model's at the
    engine's block size; :mod:`sim.scenario` passes the profile's figure). The run goes
    on until every request finished, or stops at ``horizon_s`` with the rest
    reported as unfinished. ``admission`` says how output lengths are
    estimated (default: the oracle, i.e. the real lengths); ``seed`` drives
    its random parts. ``progress`` is called with the fraction of requests
    that have arrived.
    """
    if replicas < 1:
        raise ConfigError(f"replicas: expected at least 1, got {replicas}")
    gateway = gateway or GatewayConfig()
    if num_blocks is None:
        num_blocks = engine.num_gpu_blocks or cost.kv_capacity_blocks(engine.block_size)
    env = simpy.Environment()
    n = trace.height
    rec = ResultRecorder(n)
    adm = Admission(admission or AdmissionConfig(), trace, seed=seed)
    in_engine = gateway.placement == "engine"
    if in_engine and engine.mode == "microbatch":
        raise ConfigError("gateway.placement 'engine' needs engine.mode 'continuous'; the micro-batch worker orders at the gateway")
    gw = Gateway(
        env,
        make_policy("fifo" if in_engine else gateway.policy, **({} if in_engine else gateway.policy_params)),
        router=ROUTERS[gateway.router](),
        max_outstanding=gateway.max_outstanding,
    )

    def on_finish(req: SimRequest, t: float, replica: int) -> None:
        rec.finish(req, t, replica)
        adm.complete(req, t)
        gw.finished(req, t)

    cores = [
        EngineCore(
            config=engine,
            cost=cost,
            num_blocks=num_blocks,
            policy=make_policy(gateway.policy, **gateway.policy_params) if in_engine else None,
        )
        for _ in range(replicas)
    ]
    clock = _ArrivalClock()
    if engine.mode == "continuous":
        gw.replicas = [ContinuousReplica(env, core, i, on_finish, clock.next) for i, core in enumerate(cores)]
        workers = gw.replicas
    else:
        workers = [MicroBatchWorker(env, core, i, gw, on_finish) for i, core in enumerate(cores)]

    env.process(_arrivals(env, trace, engine, cores[0], gw, rec, adm, progress, clock))
    env.run(until=horizon_s)
    rec.mark_unfinished()
    replica_stats = [
        {"replica": i, "busy_s": c.busy_s, "steps": c.steps, "preemptions": c.preemptions, "kv_blocks": c.total_blocks}
        for i, c in enumerate(cores)
    ]
    if engine.mode == "microbatch":
        for stats, w in zip(replica_stats, workers):
            stats["batches"] = w.batches
    requests = rec.to_frame(trace).with_columns(**adm.columns())
    summary = summarize(requests, replica_stats)
    summary["estimation"] = adm.summary(requests)
    return SimResult(requests=requests, replicas=replica_stats, summary=summary, calibration_history=adm.history())


class _ArrivalClock:
    """The next arrival time, which replicas use to end fast-forwarded runs without interrupts."""

    def __init__(self) -> None:
        self.next_s = float("inf")

    def next(self) -> float:
        return self.next_s


def _arrivals(env, trace, engine, core, gw, rec, adm, progress, clock):
    """Release each request at its arrival time; refuse the ones no engine could serve."""
    arrival = trace["arrival_s"].to_numpy()
    ids = trace["request_id"].to_numpy()
    tenant_names = sorted(trace["tenant"].unique().to_list())  # one shared str per tenant, not per request
    tenant_codes = trace["tenant"].cast(pl.Enum(tenant_names)).to_physical().to_numpy()
    inp = trace["input_tokens"].to_numpy()
    out = trace["output_tokens"].to_numpy()
    max_tokens = trace["max_tokens"].fill_null(-1).to_numpy()
    prio = trace["priority"].fill_null(0).to_numpy()
    slo = trace["slo_e2e_s"].to_numpy()
    max_len = engine.max_model_len
    n = len(arrival)
    step = max(1, n // 200)
    for i in range(n):
        clock.next_s = float(arrival[i])
        delay = arrival[i] - env.now
        if delay > 0:
            yield urgent_timeout(env, delay)
        if progress is not None and i % step == 0:
            progress(i / n)
        prompt = int(inp[i])
        if prompt >= max_len:
            rec.reject(i, f"prompt of {prompt} tokens does not fit max_model_len {max_len}")
            continue
        gen = int(out[i])
        cap = max_len - prompt
        if max_tokens[i] > 0:
            cap = min(cap, int(max_tokens[i]))
        if gen > cap:
            gen = cap
            rec.length_capped[i] = True
        req = SimRequest(
            idx=i,
            request_id=int(ids[i]),
            arrival_s=float(arrival[i]),
            tenant=tenant_names[tenant_codes[i]],
            priority=int(prio[i]),
            input_tokens=prompt,
            output_tokens=gen,
            est_tokens=prompt + gen,
            slo_e2e_s=None if np.isnan(slo[i]) else float(slo[i]),
        )
        if not core.fits(req):
            rec.reject(i, f"needs {prompt + gen} tokens of KV, more than the {core.total_blocks} blocks one replica has")
            continue
        adm.admit(req)
        gw.submit(req)
    clock.next_s = float("inf")
    if progress is not None:
        progress(1.0)
