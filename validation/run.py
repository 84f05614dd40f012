"""Validation runs: replay a trace on a real engine, simulate the same trace, score.

The library behind ``driftsim validate``. One *level* is one trace: it is
replayed ``repeat`` times through :class:`driftsim.profiling.gateway.ReplayGateway`
(the real gateway running driftsim's policy objects), each replay is
simulated from its own actual send/release times with the server's real KV
capacity and limits (:mod:`driftsim.validation.replay_sim`), and each simulation is scored
against its replay; the repeats give the real engine's run-to-run spread.
A *sweep* is several levels of the same workload at increasing load, from
light to past saturation, where load 1.0 is the simulated engine's
throughput on a burst of the workload (:func:`capacity_rps`).

Before the first level: a warm-up (first requests on a fresh vLLM build
kernels and caches) and the overhead probe: 1-token requests on the idle
server, whose TTFT beyond the cost model's prefill step is the client, HTTP
and API-server overhead (:func:`driftsim.validation.replay_sim.overhead_from_probe`).

Server facts come from the server itself where it publishes them
(``/v1/models``: ``max_model_len``; ``/metrics`` ``vllm:cache_config_info``:
``num_gpu_blocks``, ``block_size``); the limits a server does not publish
(``max_num_seqs``, ``max_num_batched_tokens``, chunked prefill) are what it
was launched with, given by the caller.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import polars as pl

from driftsim.costmodel.base import CostModel
from driftsim.profiling.gateway import (MicroBatch, ReplayGateway, ReplayRequest, StreamingClient, check_endpoint,
                               prompt_ids, records_frame, run_replay)
from driftsim.profiling.http import EndpointError, OpenAIClient, cache_config
from driftsim.sim.config import EngineConfig, GatewayConfig
from driftsim.sim.policies import make_policy
from driftsim.validation.replay_sim import (AT_SERVER_SPEED, SESSION_SPEED, SPEED_VARIANTS, OffsetCost, ScaledCost, aggregate,
                            calibrate_server, calibrated, compare, engine_queue_times, level_label, overhead_from_probe,
                            replay_engine, replay_speed, sim_trace, simulate_replay)
from driftsim.traces.schema import REQUEST_SCHEMA
from driftsim.traces.synth import LengthDist, TenantLoad, generate, lengths_from_trace


# ---- what the server is ---------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ServerFacts:
    """The engine as the simulator must model it. ``source`` says where each came from."""

    url: str
    model: str
    version: str | None
    max_model_len: int
    num_gpu_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    chunked_prefill: bool = True
    async_scheduling: bool | None = None  # None = unknown (not published by the server)
    source: dict = field(default_factory=dict)


def read_server_facts(client: OpenAIClient, *, model: str | None = None, max_num_seqs: int,
                      max_num_batched_tokens: int, chunked_prefill: bool = True,
                      async_scheduling: bool | None = None, num_gpu_blocks: int | None = None,
                      block_size: int | None = None) -> ServerFacts:
    """Check the endpoint (fails fast with :class:`EndpointError`) and read what it publishes.

    ``num_gpu_blocks``/``block_size`` override the server's ``/metrics`` (for
    servers without ``vllm:cache_config_info``; without either, this fails).
    """
    name = check_endpoint(client, model)
    entry = next(m for m in client.models() if str(m.get("id")) == name)
    mml = int(entry.get("max_model_len") or 0)
    source = {"max_model_len": "/v1/models" if mml else "default 2048",
              "max_num_seqs": "as launched (given)", "max_num_batched_tokens": "as launched (given)"}
    kv = {}
    try:
        kv = cache_config(client.metrics())
        source["num_gpu_blocks"] = source["block_size"] = "/metrics vllm:cache_config_info"
    except EndpointError as exc:
        if num_gpu_blocks is None or block_size is None:
            raise EndpointError(f"{exc}; give the server's KV capacity (--num-gpu-blocks and --block-size)") from None
    if num_gpu_blocks is not None:
        kv["num_gpu_blocks"] = num_gpu_blocks
        source["num_gpu_blocks"] = "given"
    if block_size is not None:
        kv["block_size"] = block_size
        source["block_size"] = "given"
    return ServerFacts(url=client.base_url, model=name, version=client.version(), max_model_len=mml or 2048,
                       num_gpu_blocks=int(kv["num_gpu_blocks"]), block_size=int(kv["block_size"]),
                       max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                       chunked_prefill=chunked_prefill, async_scheduling=async_scheduling, source=source)


def engine_config(facts: ServerFacts, *, microbatch: MicroBatch | None = None) -> EngineConfig:
    """The simulator's engine for this server (its real KV capacity and limits)."""
    mb = {} if microbatch is None else {"mode": "microbatch", "batch_size": microbatch.batch_size,
                                         "batch_wait_s": microbatch.batch_wait_s,
                                         "batch_poll_s": microbatch.batch_poll_s}
    return EngineConfig(max_num_seqs=facts.max_num_seqs, max_num_batched_tokens=facts.max_num_batched_tokens,
                        block_size=facts.block_size, chunked_prefill=facts.chunked_prefill,
                        max_model_len=facts.max_model_len, num_gpu_blocks=facts.num_gpu_blocks, **mb)


# ---- workloads ----------------------------------------------------------------------

def fitted_calibration(fit: dict) -> dict:
    """The saved form of :func:`driftsim.validation.replay_sim.calibrate_server`'s fit (what :func:`driftsim.validation.replay_sim.calibrated` reads)."""
    return {"correction": {"knots": fit["knots"], "values_s": fit["values_s"], "prefill_step_s": fit["prefill_step_s"]},
            "async_scheduling": fit["async_scheduling"], "steps": fit["steps"], "prefill_steps": fit["prefill_steps"],
            "steps_per_knot": fit["steps_per_knot"], "step_err": fit["mean_abs_rel_err"],
            "profile_step_err": fit["profile_mean_abs_rel_err"], "ttft_err": fit["ttft_err"], "tpot_err": fit["tpot_err"],
            "steps_recovered": fit.get("steps_recovered"), "speed": fit.get("speed")}


def fit_trace(trace: pl.DataFrame, max_model_len: int) -> tuple[pl.DataFrame, list[str]]:
    """Pin each request's output length and make it fit the server.

    The output is ``output_tokens`` capped by ``max_tokens`` and by
    ``max_model_len - input_tokens`` (what the simulator would generate too);
    prompts of ``max_model_len`` tokens or more are dropped. Returns the
    trace (``max_tokens`` cleared) and notes on what changed.
    """
    notes = []
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
    """A held-out trace for :func:`run_validation`'s calibration: for each rate, ``requests`` Poisson
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


# ---- the real side ------------------------------------------------------------------

def warm_up(client: OpenAIClient, model: str, *, vocab_size: int, max_model_len: int, seed: int = 0) -> float:
    """A few concurrent requests of assorted lengths (discarded); returns the seconds it took."""
    lens = [(16, 8), (min(256, max_model_len // 4), 16), (min(512, max_model_len // 2), 4), (64, 32), (128, 8), (32, 24)]

    async def go() -> None:
        sc = StreamingClient(client, model=model, clock=time.perf_counter)
        from driftsim.profiling.gateway import RequestRecord

        async with sc.async_client(len(lens)) as ac:
            recs = [RequestRecord(idx=i, request_id=i, tenant="warm-up", input_tokens=p, output_tokens=o, intended_s=0)
                    for i, (p, o) in enumerate(lens)]
            await asyncio.gather(*(sc.stream(ac, prompt_ids(10_000 + i, p, vocab_size=vocab_size, seed=seed), o, r)
                                   for i, ((p, o), r) in enumerate(zip(lens, recs))), return_exceptions=True)

    t = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - t


def probe_overhead(client: OpenAIClient, model: str, *, vocab_size: int, prompt_lens: tuple[int, ...] = (16, 128, 384),
                   n: int = 4, seed: int = 0) -> list[tuple[int, float]]:
    """``(prompt_len, TTFT)`` of 1-token requests, one at a time on an idle server, ``n`` per prompt length.

    Several lengths, so that the overhead (what is left after the cost
    model's prefill step) does not rest on the model's error at one size.
    """
    from driftsim.profiling.gateway import RequestFailed, RequestRecord

    async def go() -> list[tuple[int, float]]:
        sc = StreamingClient(client, model=model, clock=time.perf_counter)
        out = []
        async with sc.async_client(1) as ac:
            for i in range(n):
                for j, p in enumerate(prompt_lens):
                    rec = RequestRecord(idx=0, request_id=0, tenant="probe", input_tokens=p, output_tokens=1,
                                        intended_s=0)
                    ids = prompt_ids(20_000 + i * len(prompt_lens) + j, p, vocab_size=vocab_size, seed=seed)
                    try:
                        await sc.stream(ac, ids, 1, rec)
                    except RequestFailed as exc:
                        raise EndpointError(f"the overhead probe failed: {exc}") from None
                    out.append((p, rec.first_token_s - rec.sent_s))
                    await asyncio.sleep(0.05)
        return out

    return asyncio.run(go())


def replay_requests(trace: pl.DataFrame) -> list[ReplayRequest]:
    """Gateway requests from a fitted trace (oracle estimates: est_tokens = input + output)."""
    rows = trace.select("request_id", "arrival_s", "tenant", "priority", "input_tokens", "output_tokens",
                        "slo_e2e_s").iter_rows()
    return [ReplayRequest(idx=i, request_id=rid, arrival_s=float(t), tenant=ten, priority=int(p or 0),
                          input_tokens=int(inp), output_tokens=int(out), est_tokens=int(inp + out),
                          slo_e2e_s=None if slo is None or not math.isfinite(slo) else float(slo))
            for i, (rid, t, ten, p, inp, out, slo) in enumerate(rows)]


@dataclass
class ReplayRun:
    """One real replay: per-request frame, whether it was interrupted, and its wall time."""

    frame: pl.DataFrame
    interrupted: bool
    wall_s: float


def replay(trace: pl.DataFrame, *, client: OpenAIClient, model: str, gateway: GatewayConfig,
           microbatch: MicroBatch | None = None, vocab_size: int = 4000, seed: int = 0,
           request_timeout_s: float | None = 600.0, client_config=None) -> ReplayRun:
    """Replay a fitted trace through a real gateway running ``gateway``'s policy
    (``client_config``: timeouts, retries, abandonment, :class:`driftsim.sim.client.ClientConfig`)."""
    reqs = replay_requests(trace)
    gw = ReplayGateway(reqs, policy=make_policy(gateway.policy, **gateway.policy_params),
                       client=StreamingClient(client, model=model, clock=time.perf_counter),
                       max_outstanding=gateway.max_outstanding, microbatch=microbatch, vocab_size=vocab_size,
                       seed=seed, request_timeout_s=request_timeout_s, client_config=client_config)
    t = time.perf_counter()
    records, interrupted = run_replay(gw)
    return ReplayRun(frame=records_frame(records), interrupted=interrupted, wall_s=time.perf_counter() - t)


# ---- validation ---------------------------------------------------------------------

_COUNTERS = {"steps": "vllm:iteration_tokens_total_count", "tokens": "vllm:iteration_tokens_total_sum",
             "preemptions": "vllm:num_preemptions_total", "prompt_tokens": "vllm:prompt_tokens_total",
             "generation_tokens": "vllm:generation_tokens_total",
             "queue_time_sum_s": "vllm:request_queue_time_seconds_sum",
             "queue_time_count": "vllm:request_queue_time_seconds_count"}


def engine_counters(client: OpenAIClient) -> dict:
    """The engine's own counters from ``/metrics`` (empty for servers without them)."""
    from driftsim.profiling.http import metric_total

    try:
        m = client.metrics()
    except EndpointError:
        return {}
    return {k: metric_total(m, name) for k, name in _COUNTERS.items()}


def compare_engine(before: dict, after: dict, sim) -> dict:
    """Engine-side facts of one replay, real (``/metrics`` deltas) beside simulated: steps, tokens
    computed, preemptions, mean engine queue time (both as vLLM measures it: from the engine core
    taking the request in, between steps, to its first scheduling; :func:`driftsim.validation.replay_sim.engine_queue_times`)."""
    real = {k: (after[k] - before[k]) if after.get(k) is not None and before.get(k) is not None else None
            for k in _COUNTERS}
    if real.get("queue_time_count"):
        real["queue_time_mean_s"] = real["queue_time_sum_s"] / real["queue_time_count"]
    queued = engine_queue_times(sim)
    simd = {"steps": sum(r["steps"] for r in sim.replicas), "preemptions": sum(r["preemptions"] for r in sim.replicas),
            "busy_s": sum(r["busy_s"] for r in sim.replicas),
            "queue_time_mean_s": float(queued.mean()) if queued.size else None}
    return {"real": real, "sim": simd}


class ForeignCpu:
    """CPU time the host spent on *other* processes (not this one, not the server's process
    group) while a replay ran: the contention that distorts the real side's timings.

    ``server_pgid``: the server's process group (a launched server's pid); None = look for a
    local process serving ``port`` and take its group; not found = only this process is
    excluded (then the server's own CPU counts as foreign: read the number with that in mind).
    """

    def __init__(self, *, server_pgid: int | None = None, port: int | None = None) -> None:
        import os

        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.pgid = server_pgid if server_pgid is not None else self._find_pgid(port)
        self._t = self._host = self._ours = math.nan

    @staticmethod
    def _find_pgid(port: int | None) -> int | None:
        import os
        from pathlib import Path

        if port is None:
            return None
        needle = f"--port\x00{port}".encode()
        for d in Path("/proc").glob("[0-9]*"):
            try:
                if needle in (d / "cmdline").read_bytes():
                    return os.getpgid(int(d.name))
            except (OSError, ValueError):
                continue
        return None

    def _host_cpu(self) -> tuple[float, float, float]:
        """(user + nice + system, irq + softirq, steal) of the whole host so far, s."""
        with open("/proc/stat", "rb") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        v += [0] * (8 - len(v))
        return (v[0] + v[1] + v[2]) / self._hz, (v[5] + v[6]) / self._hz, v[7] / self._hz

    def _our_cpu(self) -> float:
        import os
        from pathlib import Path

        me = os.getpid()
        total = 0.0
        for d in Path("/proc").glob("[0-9]*"):
            try:
                raw = (d / "stat").read_bytes()
                rest = raw[raw.rindex(b")") + 2:].split()
                pid, pgrp = int(d.name), int(rest[2])
                if pid == me or (self.pgid is not None and pgrp == self.pgid):
                    total += (int(rest[11]) + int(rest[12])) / self._hz
            except (OSError, ValueError, IndexError):
                continue
        return total

    def start(self) -> None:
        try:
            self._t, self._host, self._ours = time.perf_counter(), self._host_cpu(), self._our_cpu()
        except (OSError, ValueError, IndexError):
            self._t = math.nan

    def stop(self) -> dict:
        """CPU seconds others used (``foreign_cpu_s``) and that as a share of the machine
        (``foreign_share``); also the kernel's interrupt work (``irq_share``: mostly our own
        loopback traffic) and the time the hypervisor gave our CPUs to someone else
        (``steal_share``: contention from outside this machine), as shares."""
        nan = {"foreign_cpu_s": math.nan, "foreign_share": math.nan, "irq_share": math.nan,
               "steal_share": math.nan, "server_pgid": self.pgid}
        try:
            dt = time.perf_counter() - self._t
            host, irq, steal = self._host_cpu()
            foreign = max(0.0, (host - self._host[0]) - (self._our_cpu() - self._ours))
        except (OSError, ValueError, IndexError, TypeError):
            return nan
        if not dt > 0:
            return nan
        cap = dt * self._ncpu
        return {"foreign_cpu_s": foreign, "foreign_share": foreign / cap, "irq_share": (irq - self._host[1]) / cap,
                "steal_share": (steal - self._host[2]) / cap, "server_pgid": self.pgid}


#: A replay during which other processes used more than this share of the CPU is flagged.
CONTENDED_SHARE = 0.10


def wait_for_quiet(meter: "ForeignCpu", *, max_wait_s: float, window_s: float = 2.0,
                   say: Callable[[str], None] | None = None) -> float:
    """Wait (up to ``max_wait_s``) until other processes use under ``CONTENDED_SHARE / 2`` of the CPU
    for two windows in a row; return the seconds waited. On a shared machine this keeps a
    neighbour's burst out of the real side's timings."""
    t0 = time.perf_counter()
    calm = 0
    while time.perf_counter() - t0 < max_wait_s:
        meter.start()
        time.sleep(window_s)
        share = meter.stop()["foreign_share"]
        calm = calm + 1 if not share > CONTENDED_SHARE / 2 else 0
        if calm >= 2:
            break
        if say is not None and calm == 0:
            say(f"waiting for the machine to quieten (other processes use {100 * share:.0f} % of the CPU)")
    return time.perf_counter() - t0


def _port(url: str) -> int | None:
    from urllib.parse import urlparse

    try:
        return urlparse(url).port
    except ValueError:
        return None


def host_load() -> float:
    """The host's 1-minute load average (NaN where unknown). The real side's timings are only
    trustworthy on an otherwise idle machine: this goes into the results beside each replay."""
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        return math.nan


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
        self.speed.append(replay_speed(frame, cost=cost, engine=engine, overhead_s=overhead_s))
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


@dataclass
class ValidationResult:
    levels: list[LevelResult]
    facts: ServerFacts
    overhead_s: float
    overhead_samples: list[tuple[int, float]]  # (prompt tokens, TTFT s) of the 1-token probes
    capacity_rps: float | None
    config: dict
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    pooled: LevelResult | None = None  # every level together, scored per repeat (a sweep's "all levels")
    calibration: dict | None = None  # the held-out calibration replay: its trace size, rate, the step offset found
    step_offset_s: float = 0.0  # added to every simulated step (from the calibration replay; 0 without one)
    step_floor_s: float = 0.0  # no simulated step is shorter (from the calibration replay; 0 = none)
    step_per_seq_s: float = 0.0  # added per decoding sequence to every simulated step (from the calibration replay)
    calibration_frame: pl.DataFrame | None = None  # the calibration replay's per-request frame

    def to_dict(self) -> dict:
        """Everything but the per-request frames, JSON-ready."""
        return {
            "config": self.config, "server": asdict(self.facts), "overhead_s": self.overhead_s,
            "step_offset_s": self.step_offset_s, "step_floor_s": self.step_floor_s,
            "step_per_seq_s": self.step_per_seq_s, "calibration": self.calibration,
            "overhead_samples_s": self.overhead_samples, "capacity_rps": self.capacity_rps,
            "notes": self.notes, "interrupted": self.interrupted,
            "levels": [{"load": lv.load, "rate_rps": lv.rate_rps, "requests": lv.trace.height,
                        "repeats": len(lv.real), "wall_s": lv.wall_s, "interrupted": lv.interrupted,
                        "contention": lv.contention, "engine": lv.engine, "server_speed": lv.speed,
                        "aggregate": lv.aggregate, "runs": lv.scores,
                        **{name: v.to_dict() for name, v in lv.variants.items()}}
                       for lv in self.levels],
            "all_levels": None if self.pooled is None else {
                "aggregate": self.pooled.aggregate, "runs": self.pooled.scores,
                **{name: v.to_dict() for name, v in self.pooled.variants.items()}},
        }


def run_validation(
    *,
    client: OpenAIClient,
    facts: ServerFacts,
    cost: CostModel,
    gateway: GatewayConfig,
    microbatch: MicroBatch | None = None,
    traces: list[tuple[float | None, pl.DataFrame]],
    capacity: float | None = None,
    repeat: int = 1,
    vocab_size: int = 4000,
    seed: int = 0,
    overhead_s: float | None = None,
    request_timeout_s: float | None = 600.0,
    warmup: bool = True,
    progress: Callable[[str], None] | None = None,
    config: dict | None = None,
    server_pgid: int | None = None,
    calibration: pl.DataFrame | None = None,
    wait_quiet_s: float = 0.0,
    journal_dir=None,
    resume: bool = False,
    client_config=None,
) -> ValidationResult:
    """Replay each ``(load, trace)`` ``repeat`` times, simulate each replay, score it.

    ``overhead_s`` None = measure it with :func:`probe_overhead`. Ctrl-C
    stops at once and returns what was measured (``interrupted``).
    ``server_pgid``: a launched server's process group, so its CPU is not
    counted as contention (see :class:`ForeignCpu`). ``calibration``: a
    held-out trace (never one of ``traces``) replayed once first, to which
    :func:`driftsim.validation.replay_sim.calibrate_server` fits a per-decode-count step correction for this server
    (:class:`driftsim.validation.server_steps.StepCorrection`: the work it does beyond what
    the profile measured (its front-end loop, IPC between its processes,
    detokenising and streaming every token), which a profile measured
    elsewhere (e.g. the in-process engine) does not time), and which
    admission model (synchronous or async scheduling) its TTFTs follow. ``wait_quiet_s``: before
    each replay wait up to this long for other processes to stop using the
    CPU (:func:`wait_for_quiet`). ``journal_dir``: keep the level traces, the calibration
    and a journal per replay there (:mod:`driftsim.validation.resume`); with ``resume``, continue
    what a previous run there saved instead of starting over.
    """
    say = progress or (lambda _msg: None)
    meter = ForeignCpu(server_pgid=server_pgid, port=_port(facts.url))
    engine = engine_config(facts, microbatch=microbatch)
    holds = gateway.max_outstanding is not None or microbatch is not None
    notes: list[str] = []
    samples: list[tuple[int, float]] = []
    step_offset_s = step_floor_s = step_per_seq_s = 0.0
    calib: dict | None = None
    cframe: pl.DataFrame | None = None
    folder = saved = None
    if journal_dir is not None:  # nothing measured is lost: see driftsim.validation.resume
        from pathlib import Path

        from driftsim.validation.resume import load_levels, load_state, save_levels

        folder = Path(journal_dir)
        if resume and (folder / "levels.json").exists():
            traces = load_levels(folder)
        else:
            save_levels(folder, traces)
        saved = load_state(folder) if resume else None
        if saved is not None:  # calibrated before it stopped: keep the same corrections
            overhead_s = saved["overhead_s"]
            samples = [tuple(x) for x in saved.get("overhead_samples") or []]
            step_offset_s, step_floor_s = saved["step_offset_s"], saved["step_floor_s"]
            step_per_seq_s = saved["step_per_seq_s"]
            calib, calibration = saved.get("calibration"), None
            if any((step_offset_s, step_floor_s, step_per_seq_s)):
                cost = OffsetCost(cost, step_offset_s, step_floor_s, step_per_seq_s)
            cost, engine = calibrated(cost, engine, calib)
    try:
        if warmup:
            say("warming the server up")
            warm_up(client, facts.model, vocab_size=vocab_size, max_model_len=facts.max_model_len, seed=seed)
        if wait_quiet_s and (overhead_s is None or calibration is not None):
            waited = wait_for_quiet(meter, max_wait_s=wait_quiet_s, say=say)
            if waited > 5:
                notes.append(f"overhead probe and calibration: waited {waited:.0f} s for other processes to quieten")
        if overhead_s is None:
            say("measuring the client/HTTP overhead with 1-token requests")
            samples = probe_overhead(client, facts.model, vocab_size=vocab_size, seed=seed)
            overhead_s = overhead_from_probe(samples, cost)
        if calibration is not None:
            ctrace, _ = fit_trace(calibration, facts.max_model_len)
            say(f"calibration replay ({ctrace.height} requests, held out)")
            meter.start()
            crun = replay(ctrace, client=client, model=facts.model, gateway=gateway, microbatch=microbatch,
                          vocab_size=vocab_size, seed=seed + 1, request_timeout_s=request_timeout_s)
            ccontention = {**meter.stop(), "load_1min": host_load()}
            if ccontention["foreign_share"] > CONTENDED_SHARE:
                notes.append(f"calibration replay: other processes used {100 * ccontention['foreign_share']:.0f} % "
                             "of the CPU meanwhile; the correction fitted to it is distorted (rerun on an idle machine)")
            cframe = crun.frame
            if crun.interrupted:
                raise KeyboardInterrupt
            st = sim_trace(ctrace, crun.frame, gateway_holds=holds, overhead_s=overhead_s)
            say("fitting the server's step times and admission to the calibration replay")
            fit = calibrate_server(crun.frame, st, cost=cost, engine=engine, gateway=gateway, overhead_s=overhead_s)
            calib = {"requests": ctrace.height, "wall_s": crun.wall_s, **fitted_calibration(fit),
                     "real_errors": int((crun.frame["status"] != "ok").sum()), "contention": ccontention}
            cost, engine = calibrated(cost, engine, calib)
            if samples:
                overhead_s = overhead_from_probe(samples, cost)
    except KeyboardInterrupt:
        return ValidationResult(levels=[], facts=facts, overhead_s=overhead_s or 0.0, overhead_samples=samples,
                                capacity_rps=capacity, config=config or {}, notes=notes, interrupted=True,
                                calibration=calib, step_offset_s=step_offset_s, step_floor_s=step_floor_s,
                                step_per_seq_s=step_per_seq_s, calibration_frame=cframe)
    if folder is not None and saved is None:
        from driftsim.validation.resume import save_state

        save_state(folder, facts=asdict(facts), overhead_s=overhead_s, overhead_samples=samples,
                   step_offset_s=step_offset_s, step_floor_s=step_floor_s, step_per_seq_s=step_per_seq_s,
                   calibration=calib, capacity_rps=capacity, config=config or {})
    levels: list[LevelResult] = []
    for load, raw in traces:
        trace, fit_notes = fit_trace(raw, facts.max_model_len)
        notes += [f"load {load}: {n}" if load is not None else n for n in fit_notes]
        span = float(trace["arrival_s"].max() - trace["arrival_s"].min()) if trace.height > 1 else 0.0
        levels.append(LevelResult(load=load, rate_rps=(trace.height - 1) / span if span > 0 else math.nan, trace=trace))
    interrupted = False
    # The repeats go round the levels (0.3, 0.6, ..., then 0.3 again), not one level N times in a row: a
    # server whose speed drifts over minutes (measured on a shared VM: x0.97 and x1.04 of the simulated
    # step times in back-to-back replays of one trace) then shows in the spread, and each level's mean
    # is taken across the whole session.
    for r in range(repeat):
        for li, lv in enumerate(levels):
            trace, load = lv.trace, lv.load
            label = level_label(load)
            say(f"{label}: replay {r + 1} of {repeat} ({trace.height} requests, {lv.rate_rps:.2f} req/s)")
            if wait_quiet_s:
                waited = wait_for_quiet(meter, max_wait_s=wait_quiet_s, say=say)
                if waited > 5:
                    notes.append(f"{label} replay {r + 1}: waited {waited:.0f} s for other processes to quieten")
            before = engine_counters(client)
            meter.start()
            if folder is not None:
                from driftsim.validation.resume import journal_path, load_replay_meta, replay_journaled, save_replay_meta

                run = replay_journaled(trace, journal_path(folder, li, r), resume=resume, client=client,
                                       model=facts.model, gateway=gateway, microbatch=microbatch,
                                       vocab_size=vocab_size, seed=seed, request_timeout_s=request_timeout_s,
                                       client_config=client_config)
            else:
                run = replay(trace, client=client, model=facts.model, gateway=gateway, microbatch=microbatch,
                             vocab_size=vocab_size, seed=seed, request_timeout_s=request_timeout_s,
                             client_config=client_config)
            lv.wall_s.append(run.wall_s)
            lv.contention.append({**meter.stop(), "load_1min": host_load()})
            if lv.contention[-1]["foreign_share"] > CONTENDED_SHARE:
                notes.append(f"{label} replay {r + 1}: other processes used "
                             f"{100 * lv.contention[-1]['foreign_share']:.0f} % of the CPU meanwhile; "
                             "its timings are distorted (rerun on an idle machine)")
            after = engine_counters(client)
            if folder is not None:
                old = load_replay_meta(folder, li, r) if resume and run.wall_s == 0.0 else {}
                if old:  # done before: keep what was measured then
                    lv.wall_s[-1], lv.contention[-1] = old.get("wall_s", 0.0), old.get("contention") or {}
                    before, after = old.get("before") or {}, old.get("after") or {}
                save_replay_meta(folder, li, r, {"wall_s": lv.wall_s[-1], "contention": lv.contention[-1],
                                                 "before": before, "after": after, "interrupted": run.interrupted})
            lv.add_replay(run.frame, r, before=before, after=after, gateway_holds=holds, overhead_s=overhead_s,
                          cost=cost, engine=engine, gateway=gateway)
            if run.interrupted:
                lv.interrupted = interrupted = True
                break
        if interrupted:
            break
    levels = [lv for lv in levels if lv.scores]
    session_speed(levels, gateway_holds=holds, overhead_s=overhead_s, cost=cost, engine=engine, gateway=gateway)
    notes += drift_notes(levels, calib)
    return ValidationResult(levels=levels, facts=facts, overhead_s=overhead_s, overhead_samples=samples,
                            capacity_rps=capacity, config=config or {}, notes=notes, interrupted=interrupted,
                            pooled=pool_levels(levels, overhead_s=overhead_s), step_offset_s=step_offset_s,
                            step_floor_s=step_floor_s, step_per_seq_s=step_per_seq_s, calibration=calib,
                            calibration_frame=cframe)


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
