"""One simulation run: a trace, a cost model and a configuration in; results out.

This is the library entry point the CLI (and sweeps) call. It wires the
SimPy pieces together: arrivals -> gateway (policy) -> router -> replicas ->
completion -> columnar results.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import polars as pl
import simpy

from driftsim.costmodel.base import CostModel
from driftsim.admission.controller import Admission, AdmissionConfig
from driftsim.sim.client import ClientConfig, SimClient
from driftsim.sim.compiled_feed import compiled_core_for, run_compiled
from driftsim.sim.config import ConfigError, EngineConfig, GatewayConfig
from driftsim.sim.engine import EngineCore
from driftsim.sim.gateway import Gateway
from driftsim.sim.metrics import summarize
from driftsim.sim.events import Observer, observer_tuple
from driftsim.sim.policies import make_policy
from driftsim.sim.replica import ContinuousReplica, MicroBatchWorker, urgent_timeout
from driftsim.sim.request import SimRequest, engine_output_tokens, kv_refusal
from driftsim.sim.router import ROUTERS
from driftsim.sim.streaming import DEFAULT_CHUNK_ROWS, ChunkedResults, FrameSink, ParquetSink, SummarySink
from driftsim.traces.schema import empty_trace
from driftsim.traces.stream import TraceStream


@dataclass
class SimResult:
    """What a run produced: one row per request, replica counters and the summary.

    ``requests`` is None when the rows were not kept: written to
    ``requests_path`` as they settled, or folded into the summary only.
    ``calibration_history``: with the ``driftsched`` estimator, the bias after
    every completion (columns ``time_s``, ``key``, ``bias``; see
    :meth:`driftsim.admission.calibration.DriftCalibrator.history`); None otherwise. Kept
    out of ``summary`` so that stays small and JSON-ready.
    """

    requests: pl.DataFrame | None
    replicas: list[dict]
    summary: dict = field(default_factory=dict)
    calibration_history: pl.DataFrame | None = None
    requests_path: Path | None = None
    engine_core: str = "python"  # "compiled": the lone replica ran in the compiled core (driftsim.sim.stepcore)


def simulate(
    trace: pl.DataFrame | TraceStream,
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
    client: ClientConfig | None = None,
    results_path: str | os.PathLike | None = None,
    summary_only: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    observers: Iterable[Observer] | None = None,
    sender: Sender | None = None,
) -> SimResult:
    """Simulate ``trace`` (the request table of :mod:`driftsim.traces.schema`).

    ``num_blocks`` is the KV capacity per replica in blocks (default: the
    engine config's ``num_gpu_blocks``, else the cost model's at the
    engine's block size; :mod:`driftsim.sim.scenario` passes the profile's figure). The run goes
    on until every request finished, or stops at ``horizon_s`` with the rest
    reported as unfinished. ``admission`` says how output lengths are
    estimated (default: the oracle, i.e. the real lengths); ``seed`` drives
    its random parts. ``progress`` is called with the fraction of requests
    that have arrived. ``client``: timeouts, retries and abandonment
    (:mod:`driftsim.sim.client`).

    Week-long traces: ``trace`` may be a :class:`driftsim.traces.stream.TraceStream`
    (a file read lazily in arrival-ordered chunks of ``chunk_rows``).
    ``results_path`` writes the per-request rows to that Parquet file chunk
    by chunk as they settle instead of keeping them; ``summary_only`` keeps
    no rows at all. Either way memory follows the requests in flight, the
    rows are the ones the in-memory run gives, bit for bit, and the
    summary's percentiles come from a sketch within 0.5 % relative error
    (counts and means exact; :class:`driftsim.sim.metrics.StreamingSummary`). These
    modes need the oracle estimator (the others keep state for every
    request of the trace).

    ``observers``: callables that receive every :mod:`driftsim.sim.events` record the
    engines and the gateway publish (validation notes each dispatch and every step's end).

    ``sender``: a client whose sends depend on completions (a closed loop,
    multi-turn sessions; :class:`Sender`). The rows it holds leave when it
    says, inside the run; the results' ``arrival_s`` are the send times.
    """
    gateway = gateway or GatewayConfig()
    admission = admission or AdmissionConfig()
    streamed_input = not isinstance(trace, pl.DataFrame)
    _check_arguments(engine=engine, gateway=gateway, admission=admission, replicas=replicas,
                     streamed_input=streamed_input, streamed_output=summary_only or results_path is not None,
                     summary_only=summary_only, results_path=results_path, chunk_rows=chunk_rows,
                     sender=sender)  # fmt: skip
    if num_blocks is None:
        num_blocks = engine.num_gpu_blocks or cost.kv_capacity_blocks(engine.block_size)
    env = simpy.Environment()
    adm = Admission(admission, empty_trace() if streamed_input else trace, seed=seed)
    sink = _result_sink(summary_only=summary_only, results_path=results_path)
    add_estimates = adm.add_columns if admission.estimator == "oracle" else None  # per chunk; the others after the run
    sent = trace["arrival_s"].to_numpy().copy() if sender is not None else None  # send times, set as rows leave
    rec = ChunkedResults(sink.write, _finalizer(sent, add_estimates))
    chunks = _trace_chunks(trace, sink, chunk_rows)
    run = _build(env, cost=cost, engine=engine, gateway=gateway, replicas=replicas, num_blocks=num_blocks,
                 client=client, rec=rec, adm=adm, observers=observers)
    n = trace.rows if streamed_input else trace.height
    compiled = _start_arrivals(env, run, chunks, n, engine, rec, adm, progress, sender, sent,
                               horizon=horizon_s is not None)
    try:
        env.run(until=horizon_s)
        rec.close(chunks)  # what is in flight, and what would arrive after the horizon, is unfinished
    except BaseException:
        if isinstance(sink, ParquetSink):
            sink.abort()
        raise
    result = _collect(run, sink, adm, add_estimates, microbatch=engine.mode == "microbatch")
    result.engine_core = "compiled" if compiled else "python"
    return result


def _start_arrivals(env, run: _Run, chunks, n: int, engine: EngineConfig, rec: ChunkedResults, adm, progress,
                    sender: Sender | None, sent: np.ndarray | None, *, horizon: bool) -> bool:
    """Release the trace's rows: replicas that nothing but the arrivals (and sessions' turns) act on run
    in the compiled core where it applies (True; no ``horizon``), else a lone replica takes them in itself at its step ends
    when its runs merge (synchronous scheduling; no horizon, no gateway cap), else an arrival process
    releases each at its time."""
    lone = run.workers[0] if len(run.workers) == 1 else None
    continuous = all(isinstance(w, ContinuousReplica) for w in run.workers)
    if not horizon and continuous and run.unwatched:
        fast = compiled_core_for(engine, run.cores[0], run.gateway, oracle=adm.cfg.estimator == "oracle",
                                 replicas=len(run.cores), sender=sender)
        if fast is not None:
            capped = run.gateway.cap is not None
            env.process(run_compiled(env, fast, chunks, n, engine, run.cores, rec, progress,
                                     gateway_policy=run.gateway.policy if capped else None, sender=sender, sent=sent))
            return True
    fed = not horizon and run.gateway.cap is None
    if fed and isinstance(lone, ContinuousReplica) and lone.merge_runs and sender is None:
        lone.feed = _ArrivalFeed(chunks, n, engine, run.cores[0], run.entry, rec, adm, progress, run.clock)
    else:
        env.process(_arrivals(env, chunks, n, engine, run.cores[0], run.entry, rec, adm, progress, run.clock,
                              sender, sent))
    return False


def _check_arguments(*, engine: EngineConfig, gateway: GatewayConfig, admission: AdmissionConfig, replicas: int,
                     streamed_input: bool, streamed_output: bool, summary_only: bool,
                     results_path: str | os.PathLike | None, chunk_rows: int, sender) -> None:
    """Refuse combinations :func:`simulate` cannot run, before anything is built."""
    if sender is not None and (streamed_input or streamed_output):
        raise ConfigError("a closed-loop client or multi-turn sessions need the trace and the results in memory "
                          "(no streamed trace, summary_only or results_path)")
    if replicas < 1:
        raise ConfigError(f"replicas: expected at least 1, got {replicas}")
    if summary_only and results_path is not None:
        raise ConfigError("summary_only keeps no per-request rows; do not also give results_path")
    if admission.estimator != "oracle" and (streamed_input or streamed_output):
        raise ConfigError(
            f"admission.estimator {admission.estimator!r}: a streamed trace or streamed results need the 'oracle'"
            " estimator (the others keep state for every request of the trace); load the trace in memory instead"
        )
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows: expected at least 1, got {chunk_rows}")
    if gateway.placement == "engine" and engine.mode == "microbatch":
        raise ConfigError("gateway.placement 'engine' needs engine.mode 'continuous'; the micro-batch worker orders at the gateway")


def _finalizer(sent: np.ndarray | None, add_estimates: Callable[[pl.DataFrame], pl.DataFrame] | None):
    """How a settled chunk becomes result rows; with a sender, ``arrival_s`` are the send times (one chunk)."""

    def finalize(r, chunk: pl.DataFrame) -> pl.DataFrame:
        if sent is not None:
            chunk = chunk.with_columns(pl.Series("arrival_s", sent))
        frame = r.to_frame(chunk)
        return add_estimates(frame) if add_estimates is not None else frame

    return finalize


def _result_sink(*, summary_only: bool, results_path: str | os.PathLike | None) -> SummarySink | ParquetSink | FrameSink:
    """Where settled rows go: folded into a summary, written to Parquet, or kept as one frame."""
    if summary_only:
        return SummarySink()
    if results_path is not None:
        return ParquetSink(results_path)
    return FrameSink()


def _trace_chunks(trace: pl.DataFrame | TraceStream, sink, chunk_rows: int) -> Iterator[pl.DataFrame]:
    """The trace in arrival-ordered chunks: a stream's own, the whole table for an in-memory
    result, else slices of ``chunk_rows`` so streamed results settle as they go."""
    if not isinstance(trace, pl.DataFrame):
        return iter(trace)
    if isinstance(sink, FrameSink):
        return iter([trace])  # one chunk: the whole table, as it always was
    return (trace.slice(i, chunk_rows) for i in range(0, trace.height, chunk_rows))


@dataclass
class _Run:
    """The SimPy pieces of one run: engines, their drivers, the gateway and what arrivals enter."""

    cores: list[EngineCore]
    workers: list  # ContinuousReplica or MicroBatchWorker, one per core
    gateway: Gateway
    entry: Gateway | SimClient  # where arrivals are submitted
    clock: _ArrivalClock
    unwatched: bool  # fast-forwarded, and nothing but the arrivals looks at the engines or hands them work


def _build(env: simpy.Environment, *, cost: CostModel, engine: EngineConfig, gateway: GatewayConfig, replicas: int,
           num_blocks: int, client: ClientConfig | None, rec: ChunkedResults, adm: Admission,
           observers: Iterable[Observer] | None) -> _Run:
    """Engines, replicas or workers, the gateway and (if any) the simulated client, wired together."""
    observers = observer_tuple(observers)
    in_engine = gateway.placement == "engine"
    policy = make_policy("fifo" if in_engine else gateway.policy, **({} if in_engine else gateway.policy_params))
    gw = Gateway(env, policy, router=ROUTERS[gateway.router](), max_outstanding=gateway.max_outstanding,
                 observers=observers)
    sim_client: SimClient | None = None

    def on_finish(req: SimRequest, t: float, replica: int) -> None:
        if sim_client is not None and not sim_client.completed(req):
            return
        rec.finish(req, t, replica)
        adm.complete(req, t)
        gw.finished(req, t)

    cores = [
        EngineCore(config=engine, cost=cost, num_blocks=num_blocks, replica=i, observers=observers,
                   policy=make_policy(gateway.policy, **gateway.policy_params) if in_engine else None)
        for i in range(replicas)
    ]
    clock = _ArrivalClock()
    unwatched = engine.fast_forward and not observers and not (client is not None and client.active)
    if engine.mode == "continuous":
        # a step and the decode run after it may be planned as one wait when nothing can look at an engine
        # or hand it work in between without interrupting it (see ContinuousReplica._step_then_run)
        merge_runs = (unwatched and not engine.async_scheduling
                      and (replicas == 1 or (gateway.max_outstanding is None
                                             and not getattr(gw.router, "uses_request", False))))
        gw.replicas = [ContinuousReplica(env, core, i, on_finish, clock.next, merge_runs=merge_runs)
                       for i, core in enumerate(cores)]
        for core in cores:  # where the router picks among caches, they must read as step by step
            core.cache_read_by_router = replicas > 1 and getattr(gw.router, "uses_request", False)
        workers = gw.replicas
    else:
        workers = [MicroBatchWorker(env, core, i, gw, on_finish) for i, core in enumerate(cores)]
    if client is not None and client.active:
        if engine.mode != "continuous":
            raise ConfigError("client timeouts and abandonment need engine.mode 'continuous' "
                              "(a micro-batch worker's blocking generate() cannot drop one request)")
        sim_client = SimClient(env, client, gw, rec, gw.replicas)
    return _Run(cores=cores, workers=workers, gateway=gw, entry=gw if sim_client is None else sim_client, clock=clock,
                unwatched=unwatched)


def _collect(run: _Run, sink, adm: Admission, add_estimates: Callable | None, *, microbatch: bool) -> SimResult:
    """Replica counters, the per-request rows (if kept) and the summary."""
    replica_stats = [
        {"replica": i, "busy_s": c.busy_s, "steps": c.steps, "preemptions": c.preemptions, "kv_blocks": c.total_blocks,
         **c.prefix_stats()}
        for i, c in enumerate(run.cores)
    ]
    if microbatch:
        for stats, w in zip(replica_stats, run.workers):
            stats["batches"] = w.batches
    if not isinstance(sink, FrameSink):
        summary = sink.summary.result(replica_stats)
        summary["estimation"] = adm.summary(None)  # oracle: nothing per request
        path = sink.close() if isinstance(sink, ParquetSink) else None
        return SimResult(requests=None, replicas=replica_stats, summary=summary, requests_path=path)
    requests = sink.frame()
    if add_estimates is None:
        requests = adm.add_columns(requests)
    summary = summarize(requests, replica_stats)
    summary["estimation"] = adm.summary(requests)
    return SimResult(requests=requests, replicas=replica_stats, summary=summary, calibration_history=adm.history())


class _ArrivalClock:
    """The next arrival time, which replicas use to end fast-forwarded runs without interrupts."""

    def __init__(self) -> None:
        self.next_s = float("inf")

    def next(self) -> float:
        return self.next_s


class Sender(Protocol):
    """A client whose sends depend on completions: it holds some rows and sends them during the run.

    ``held(n)``: which of the ``n`` rows it sends itself (a boolean array);
    the rest leave at their ``arrival_s``. ``start(env, send)``: called once
    before the first arrival; ``send(i)`` releases row ``i`` now (call it
    from an urgent event, :func:`driftsim.sim.replica.urgent_timeout`, so that a
    send at the instant a step ends joins the next step in step-by-step and
    fast-forwarded runs alike). ``settled(i, t)``: row ``i`` stopped holding
    its user at ``t`` (finished, refused or given up; ``t`` is never NaN).
    """

    def held(self, n: int) -> np.ndarray: ...

    def start(self, env: simpy.Environment, send: Callable[[int], None]) -> None: ...

    def settled(self, i: int, t: float) -> None: ...


def _arrivals(env, chunks: Iterable[pl.DataFrame], n, engine, core, gw, rec: ChunkedResults, adm, progress, clock,
              sender: Sender | None = None, sent: np.ndarray | None = None):
    """Release each request at its arrival time; refuse the ones no engine could serve.

    The trace comes in arrival-ordered chunks (one, for a table in memory);
    a request's ``idx`` is its row in the whole trace. With a ``sender``
    (one chunk) the rows it holds leave when it sends them.
    """
    tenant_str: dict[str, str] = {}  # one shared str per tenant, not per request
    max_len = engine.max_model_len
    step = max(1, n // 200)
    for chunk in chunks:
        base = rec.rows
        rec.open(chunk)
        # a sender releases rows in any order (a session's later turns lag the arrivals): its one
        # in-memory chunk is read as a single block, not block by block again and again
        release = _Release(chunk, base, tenant_str, max_len, core, gw, rec, adm,
                           block=chunk.height if sender is not None else _Release.BLOCK)  # fmt: skip
        arrival = chunk["arrival_s"].to_numpy()
        held = None
        if sender is not None:
            held = sender.held(chunk.height)
            # refusals and give-ups are recorded without a time: they settle now
            rec.on_settle = lambda i, t: sender.settled(i, env.now if math.isnan(t) else t)

            def send(i: int) -> None:
                sent[i] = env.now
                release(i, env.now)

            sender.start(env, send)
        for lo in range(0, chunk.height, _Release.BLOCK):  # Python floats a block at a time (see _Release)
            times = arrival[lo:lo + _Release.BLOCK].tolist()
            skip = held[lo:lo + _Release.BLOCK].tolist() if sender is not None else None
            for k, at in enumerate(times):
                if skip is not None and skip[k]:
                    continue
                j = lo + k
                i = base + j
                clock.next_s = at
                delay = at - env.now
                if delay > 0:
                    yield urgent_timeout(env, delay)
                if progress is not None and i % step == 0:
                    progress(i / n)
                release(j, at)
        rec.arrived()
    clock.next_s = float("inf")
    if progress is not None:
        progress(1.0)


class _ArrivalFeed:
    """The trace's rows taken in by a lone replica at its decisions, instead of one SimPy event per arrival.

    Used when nothing else acts between the replica's decisions (one replica, no gateway cap, no client,
    sender, observers or horizon): a request arriving during a step joins the next one, so the replica
    releases every row due by each step's end before it hands on that step's completions (an arrival
    comes first at the same instant), and when idle it waits for the next row itself. ``wake_s`` is the
    time the arrival process would have woken at for that row (its clock adds each gap to the last
    wake: the same float), so the engine's clock after an idle gap is the same as with that process.
    """

    def __init__(self, chunks: Iterable[pl.DataFrame], n: int, engine, core, gw, rec: ChunkedResults, adm,
                 progress, clock) -> None:  # fmt: skip
        self._chunks, self.n, self._core, self._gw, self._rec, self._adm = iter(chunks), n, core, gw, rec, adm
        self._max_len, self._progress, self._clock = engine.max_model_len, progress, clock
        self._step = max(1, n // 200)
        self._tenant_str: dict[str, str] = {}
        self._now = 0.0  # the arrival process's clock
        self._times: list[float] = []  # arrival times of a block of rows of the open chunk, from row _lo
        self._lo = self._k = self._height = 0  # _k: the next row's place in _times
        self._open = False  # a chunk is open
        self._open_next()

    def _open_next(self) -> None:
        """Position on the next row (the rest of the block, the next block, the next chunk's first) and set
        the arrival clock to its time; past the last row, to infinity."""
        while self._k >= len(self._times):
            lo = self._lo + len(self._times)
            if self._open and lo < self._height:
                self._lo = lo
            else:
                if self._open:
                    self._rec.arrived()
                chunk = next(self._chunks, None)
                self._open = chunk is not None
                if chunk is None:  # the last chunk's columns are not kept while its requests finish
                    self._times, self._k, self._release, self._arrival = [], 0, None, None
                    self._clock.next_s = float("inf")
                    if self._progress is not None:
                        self._progress(1.0)
                    return
                self._base = self._rec.rows
                self._rec.open(chunk)
                self._release = _Release(chunk, self._base, self._tenant_str, self._max_len, self._core, self._gw,
                                         self._rec, self._adm)  # fmt: skip
                self._arrival, self._height, self._lo = chunk["arrival_s"].to_numpy(), chunk.height, 0
            self._times = self._arrival[self._lo:self._lo + _Release.BLOCK].tolist()
            self._k = 0
        at = self._times[self._k]
        self._clock.next_s = at
        gap = at - self._now
        self.wake_s = self._now + gap if gap > 0 else self._now

    def release_due(self, t: float, *, first: bool = False) -> None:
        """Release every row arriving at or before ``t``, in trace order; with ``first`` the next row
        whatever its time (the replica woke for it at its ``wake_s``)."""
        clock, times = self._clock, self._times
        while clock.next_s <= t or first:
            first = False
            j = self._lo + self._k
            self._now = self.wake_s
            if self._progress is not None and (self._base + j) % self._step == 0:
                self._progress((self._base + j) / self.n)
            self._release(j, times[self._k])
            self._k += 1
            self._open_next()
            times = self._times


class _Release:
    """Turns a row of one trace chunk into a request handed to the gateway (or refuses it).

    The chunk's columns are read as Python lists a block of rows at a time: indexing numpy
    arrays row by row costs more than the rest of a request's way in, and whole-chunk lists
    (or whole-chunk copies with nulls filled) would make memory follow the chunk instead of
    the requests in flight.
    """

    BLOCK = 4096  # rows converted at a time

    def __init__(self, chunk: pl.DataFrame, base: int, tenant_str: dict, max_len, core, gw, rec, adm, *,
                 block: int = BLOCK) -> None:  # fmt: skip
        self.base, self.max_len, self.core, self.gw, self.rec, self.adm = base, max_len, core, gw, rec, adm
        self.block = max(1, block)
        self.tenant_names = [tenant_str.setdefault(t, t) for t in sorted(chunk["tenant"].unique().to_list())]
        self._tenants = pl.Enum(self.tenant_names)
        self._chunk = chunk
        self._has_ids = chunk["prefix_ids"].null_count() < chunk.height
        self._block = -1
        self._rows: tuple = ()

    def _load(self, block: int) -> None:
        """Python lists of the rows of ``block``."""
        self._block = block
        c = self._chunk.slice(block * self.block, self.block)
        ids = self._has_ids
        self._rows = (
            c["request_id"].to_list(),
            c["tenant"].cast(self._tenants).to_physical().to_list(),
            c["input_tokens"].to_list(),
            c["output_tokens"].to_list(),
            c["max_tokens"].fill_null(-1).to_list(),
            c["priority"].fill_null(0).to_list(),
            c["slo_e2e_s"].fill_nan(None).to_list(),  # None: none
            c["prefix_block_tokens"].fill_null(0).to_list() if ids else None,
            c["prefix_ids"].to_list() if ids else None,
        )

    def __call__(self, j: int, at: float) -> None:
        i = self.base + j
        block, k = divmod(j, self.block)
        if block != self._block:
            self._load(block)
        ids, tenants, inp, out, max_tokens, prio, slo, prefix_tokens, prefix_ids = self._rows
        prompt = inp[k]
        gen, capped, why = engine_output_tokens(prompt, out[k], max_tokens[k], self.max_len)
        if gen is None:
            self.rec.reject(i, why)
            return
        if capped:
            self.rec.cap_length(i)
        req = SimRequest(
            idx=i,
            request_id=ids[k],
            arrival_s=at,
            tenant=self.tenant_names[tenants[k]],
            priority=prio[k],
            input_tokens=prompt,
            output_tokens=gen,
            est_tokens=prompt + gen,
            slo_e2e_s=slo[k],
        )
        if prefix_ids is not None and prefix_ids[k] is not None:
            req.prefix_ids, req.prefix_id_tokens = prefix_ids[k], prefix_tokens[k]
        if not self.core.fits(req):
            self.rec.reject(i, kv_refusal(prompt + gen, self.core.total_blocks))
            return
        self.adm.admit(req)
        self.gw.submit(req)
