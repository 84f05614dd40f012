"""A whole run of continuous replicas in the compiled core: the trace's rows in, result columns out.

The fast twin of the arrival process (or a lone replica's :class:`driftsim.sim.run._ArrivalFeed`)
driving :class:`~driftsim.sim.replica.ContinuousReplica` s: a SimPy process hands each chunk of the
trace to the :class:`~driftsim.sim.stepcore.CompiledCore` (rows refused at their arrival marked, as
``_Release`` would refuse them), lets it simulate, records the requests it finished a buffer at a
time, and advances SimPy's clock to the core's. :func:`compiled_core_for` says when a run may take
this path; what it produces equals the Python engine's results bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl
import simpy

from driftsim.sim.config import EngineConfig
from driftsim.sim.engine import EngineCore, FcfsQueue
from driftsim.sim.gateway import Gateway
from driftsim.sim.policies import Aging, Edf, Fifo, Las, Policy, Priority, Sjf, Srpt
from driftsim.sim.request import engine_output_tokens, kv_refusal
from driftsim.sim.results import ResultRecorder
from driftsim.sim.router import LeastOutstanding, PrefixAffinity, RoundRobin
from driftsim.sim.stepcore import (
    POLICY_FCFS, POLICY_LAS, POLICY_SRPT, POLICY_STATIC, RC_DONE, RC_NEED_ROWS, RC_STALL, CompiledCore, formula_of,
    library,
)
from driftsim.sim.streaming import ChunkedResults

BLOCK = 65_536  # rows handed to the core at a time
_ROUTER_NAMES = {RoundRobin: "round_robin", LeastOutstanding: "least_outstanding", PrefixAffinity: "prefix_affinity"}


def compiled_core_for(engine: EngineConfig, core: EngineCore, gateway: Gateway, *, oracle: bool,
                      replicas: int = 1, sender=None) -> CompiledCore | None:
    """The compiled core for ``replicas`` replicas like ``core`` behind ``gateway``, when the run stays
    inside what it models: FCFS or a keyed policy in the engine (:func:`_policy_mode`), a gateway that
    routes each arrival at once (no cap, a plain keyed policy) or, with a cap of requests in flight per
    replica, queues the rest in the order of a policy with static keys (fifo, priority, sjf, aging,
    edf); the round-robin, least-outstanding or prefix-affinity router; the oracle estimator and a
    cost model with a :class:`~driftsim.costmodel.base.StepFormula`; with or without prefix caching and
    prefix ids; multi-turn sessions or a closed loop (a ``sender`` with ``compiled_sends``:
    :class:`driftsim.sim.sessions.SessionSender`, :class:`driftsim.sim.closed_loop.ClosedLoopSender`)
    where no key reads the arrival time (a sent row's is its send time, known only in the run: not
    aging or edf). None: the Python engine runs it."""
    policy = _policy_mode(core.waiting)
    capped = gateway.cap is not None and _gateway_keyed(gateway.policy)
    if not (engine.compiled_core and (gateway.routes_at_arrival or capped) and oracle and policy is not None):
        return None
    if sender is not None and not (hasattr(sender, "compiled_sends") and _keys_ignore_arrival(core, gateway)):
        return None
    route = _ROUTER_NAMES.get(type(gateway.router)) if replicas > 1 else "least_outstanding"
    if route is None:
        return None
    lib, form = library(), formula_of(core.cost)
    if lib is None or form is None:
        return None
    return CompiledCore(lib, engine, form, core.total_blocks + 1, replicas=replicas, router=route, policy=policy,
                        prefix_caching=core.prefix_caching, gateway_cap=gateway.cap, sessions=sender is not None)


def _keys_ignore_arrival(core: EngineCore, gateway: Gateway) -> bool:
    """No policy key reads the arrival time (aging and edf do); arrival only breaks ties."""
    policies = [getattr(core.waiting, "policy", None)] + ([gateway.policy] if gateway.cap is not None else [])
    return not any(isinstance(p, (Aging, Edf)) for p in policies)


_STATIC_KEYS = (Fifo, Priority, Sjf, Aging, Edf)  # keys fixed at arrival, computed per row by _static_keys


def _gateway_keyed(policy) -> bool:
    """A gateway policy whose queue the core keeps: a plain heap (Policy's push and pop) with static keys."""
    kind = type(policy)
    return kind in _STATIC_KEYS and kind.push is Policy.push and kind.pop is Policy.pop


def _policy_mode(waiting) -> int | None:
    """How the core orders an engine's waiting queue (``POLICY_*``), None for a policy it does not model
    (a subclass, whose key may differ, included)."""
    if isinstance(waiting, FcfsQueue):
        return POLICY_FCFS
    kind = type(waiting.policy)
    if kind in _STATIC_KEYS:
        return POLICY_STATIC
    return {Las: POLICY_LAS, Srpt: POLICY_SRPT}.get(kind)


def _static_keys(policy, chunk: pl.DataFrame, prompt: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``policy.key`` as a pair of floats (Aging's tuple; else the key and 0), from the same
    inputs and float operations as the SimRequest ``_Release`` builds (arrival ``at``, priority 0 when
    missing, ``est_tokens`` = prompt + tokens to generate, the oracle's)."""
    zero = np.zeros(chunk.height)
    kind = type(policy)
    if kind in (Priority, Aging):
        priority = chunk["priority"].fill_null(0).to_numpy().astype(np.float64)
        if kind is Priority:
            return priority, zero
        return priority + policy.rate * chunk["arrival_s"].to_numpy().astype(np.float64), priority
    if kind is Sjf:
        return (prompt + gen).astype(np.float64), zero
    if kind is Edf:
        own = chunk["slo_e2e_s"].fill_nan(None)
        default = chunk["tenant"].replace_strict(policy.default_slo_s, default=policy.fallback_slo_s,
                                                 return_dtype=pl.Float64)
        slo = own.fill_null(default).to_numpy().astype(np.float64)
        return chunk["arrival_s"].to_numpy().astype(np.float64) + slo, zero
    return zero, zero  # FCFS, Fifo; Las and Srpt key on progress the core keeps


def run_compiled(env: simpy.Environment, fast: CompiledCore, chunks: Iterable[pl.DataFrame], n: int,
                 engine: EngineConfig, cores: list[EngineCore], rec: ChunkedResults, progress,
                 gateway_policy: Policy | None = None, sender=None, sent: np.ndarray | None = None):
    """The SimPy process: each chunk's rows into ``fast``, its completions into ``rec``; at the end the
    counters reports read are copied onto the (idle) Python ``cores``. ``gateway_policy``: the policy
    of a capped gateway (None: no cap); ``sender``: sessions whose later turns the core sends itself
    (one chunk), their send times written into ``sent``."""
    max_len, block_size, kv_total = engine.max_model_len, engine.block_size, cores[0].total_blocks
    policy = getattr(cores[0].waiting, "policy", None)  # a PolicyQueue's
    ids = cores[0].prefix_caching  # prefix ids are read only where the cache uses them
    try:
        for chunk in chunks:
            base = rec.rows
            recorder = rec.open(chunk)
            if sender is not None:  # one chunk: every row to the core's table, those no turn holds as arrivals
                rows = _rows(chunk, base, recorder, rec, max_len, block_size, kv_total, policy, gateway_policy,
                             ids=ids)
                fast.sessions(rows, *sender.compiled_sends(), sent)
                blocks = iter([_some_rows(rows, ~sender.held(chunk.height))])
            else:  # a block at a time: memory follows the block, not the trace
                blocks = (_rows(chunk.slice(lo, BLOCK), base + lo, recorder, rec, max_len, block_size, kv_total,
                                policy, gateway_policy, ids=ids) for lo in range(0, chunk.height, BLOCK))
            for block in blocks:
                fast.push(*block)
                while (yield from _simulate(env, fast, rec, n, progress, kv_total, final=False)) != RC_NEED_ROWS:
                    pass
            rec.arrived()
        while (yield from _simulate(env, fast, rec, n, progress, kv_total, final=True)) != RC_DONE:
            pass
        for core, c in zip(cores, fast.counters()["replicas"]):
            core.busy_s, core.steps, core.preemptions = c["busy_s"], c["steps"], c["preemptions"]
            core.prefix_queries, core.prefix_query_tokens = c["prefix_queries"], c["prefix_query_tokens"]
            core.prefix_hit_tokens = c["prefix_hit_tokens"]
            if core.prefix_caching:
                core.kv.evictions = c["prefix_evictions"]
    finally:
        fast.close()
    if progress is not None:
        progress(1.0)


def _simulate(env, fast: CompiledCore, rec: ChunkedResults, n: int, progress, kv_total: int, *, final: bool):
    """One :meth:`CompiledCore.run`: record what it finished and move SimPy's clock to the core's."""
    rc = fast.run(final)
    done = fast.drain()
    if len(done.idx):
        rec.finish_rows(done.idx, done.scheduled_s, done.first_token_s, done.finish_s, done.generated,
                        done.preemptions, replica=done.replica, cached_tokens=done.cached_tokens)
    counters = fast.counters()
    if rc == RC_STALL:
        stalled = next(r for r in counters["replicas"] if r["waiting"] and not r["running"])
        raise RuntimeError(f"engine stalled: {stalled['waiting']} waiting, none admissible with "
                           f"{kv_total - stalled['kv_used']}/{kv_total} free KV blocks")
    if progress is not None and n:
        progress(min(1.0, counters["released"] / n))
    yield env.timeout(max(0.0, counters["clock"] - env.now))
    return rc


def _rows(chunk: pl.DataFrame, first: int, recorder: ResultRecorder, rec: ChunkedResults, max_len: int,
          block_size: int, kv_total: int, policy, gateway_policy, *, ids: bool) -> tuple[np.ndarray, ...]:
    """Rows of a chunk (trace rows ``first`` on, recorded by ``recorder``) for the core, refusals and
    length caps recorded as the feed's ``_Release`` records them
    (:func:`driftsim.sim.request.engine_output_tokens`, then the KV check), with the keys of the engine's
    ``policy`` (None: FCFS) and of a capped gateway's ``gateway_policy`` (None: no cap) and, with ``ids``,
    each row's prefix ids (:func:`_prefix_ids`)."""
    prompt = chunk["input_tokens"].to_numpy().astype(np.int64)
    output = chunk["output_tokens"].to_numpy().astype(np.int64)
    max_tokens = chunk["max_tokens"].fill_null(-1).to_numpy().astype(np.int64)
    too_long = prompt >= max_len
    cap = max_len - prompt
    cap = np.where(max_tokens > 0, np.minimum(cap, max_tokens), cap)
    capped = ~too_long & (output > cap)
    gen = np.where(capped, cap, output)
    too_big = ~too_long & (-(-(prompt + gen) // block_size) > kv_total)  # cdiv, on arrays
    rows = np.arange(first, first + chunk.height, dtype=np.int64)
    if capped.any():
        recorder.length_capped[rows[capped] - recorder.base] = True
    refused = np.flatnonzero(too_long | too_big)
    if len(refused):
        reasons = [engine_output_tokens(int(prompt[j]), int(output[j]), int(max_tokens[j]), max_len)[2] if too_long[j]
                   else kv_refusal(int(prompt[j] + gen[j]), kv_total) for j in refused.tolist()]
        rec.reject_rows(rows[refused], reasons)
    key1, key2 = _static_keys(policy, chunk, prompt, gen)
    gateway_key1, gateway_key2 = _static_keys(gateway_policy, chunk, prompt, gen)
    gen[refused] = -1
    return (rows, chunk["arrival_s"].to_numpy().astype(np.float64), prompt, gen,
            chunk["request_id"].to_numpy().astype(np.int64), key1, key2, gateway_key1, gateway_key2,
            *(_prefix_ids(chunk) if ids else ()))


def _some_rows(rows: tuple, keep: np.ndarray) -> tuple:
    """The rows of :func:`_rows`' arrays that ``keep`` selects (their prefix ids with them)."""
    columns = [a[keep] for a in rows[:9]]
    if len(rows) == 9:
        return tuple(columns)
    id_tokens, counts, flat = rows[9:]
    return (*columns, id_tokens[keep], counts[keep], flat[np.repeat(keep, counts)])


def _prefix_ids(chunk: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's tokens per prefix id (0: no ids, as a SimRequest whose ``prefix_ids`` is None), how
    many ids it has, and all rows' ids one after another."""
    ids = chunk["prefix_ids"]
    if ids.null_count() == chunk.height:
        zero = np.zeros(chunk.height, np.int64)
        return zero, zero, np.zeros(0, np.int64)
    named = ids.is_not_null().to_numpy()
    id_tokens = np.where(named, chunk["prefix_block_tokens"].fill_null(0).to_numpy(), 0).astype(np.int64)
    counts = ids.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = ids.filter(ids.list.len() > 0).explode().to_numpy().astype(np.int64)
    return id_tokens, counts, flat
