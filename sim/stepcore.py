"""The compiled core: the Python engine's replicas, in C, bit for bit.

When continuous replicas take a trace's rows and nothing but the arrivals acts on them (no
client timeouts, observers or horizon; multi-turn sessions and closed loops, whose sends the core
makes itself, included), the per-step Python of
:class:`~driftsim.sim.engine.EngineCore` and :class:`~driftsim.sim.replica.ContinuousReplica` is
most of a run's time. ``sim/_stepcore.c`` runs the same scheduler (FCFS or a keyed policy, chunked prefill,
recompute preemption, fast-forwarded decode runs, synchronous or async scheduling, the prefix
cache of :class:`~driftsim.sim.prefix_cache.PrefixCachedBlocks` with its keys hashed as Python
hashes them) with the same float operations in the same order, so its times equal the Python engine's
bit for bit. A lone replica mirrors the replica that takes the rows in itself
(:class:`driftsim.sim.run._ArrivalFeed`); several, or one behind a capped gateway, mirror the
arrival process, the gateway (passing each arrival on, or queueing it in its policy's order when
the replicas are at its cap), its round-robin, least-outstanding or prefix-affinity router and each
replica's SimPy process, in SimPy's event order. The Python engine stays the reference (``tests/test_stepcore.py``) and runs
everything else.

:class:`CompiledCore` is the C state behind ctypes: rows go in with :meth:`CompiledCore.push`,
:meth:`CompiledCore.run` simulates until it needs more rows or its buffer of finished requests is
full, and :meth:`CompiledCore.drain` hands those back as arrays.
"""

from __future__ import annotations

import ctypes
import importlib.util
import inspect
from dataclasses import dataclass

import numpy as np

from driftsim.costmodel.base import StepFormula
from driftsim.sim.config import EngineConfig
from driftsim.sim.kv import NULL_BLOCKS

_KINDS = {"roofline": 1, "linear": 2, "token-table": 3}
_MAX_COEFFICIENTS, _MAX_KNOTS = 12, 64
RC_DONE, RC_NEED_ROWS, RC_FULL, RC_STALL, RC_NOMEM = 0, 1, 2, -1, -2

_i64p = np.ctypeslib.ndpointer(dtype=np.int64, flags="C_CONTIGUOUS")
_f64p = np.ctypeslib.ndpointer(dtype=np.float64, flags="C_CONTIGUOUS")
_lib: ctypes.CDLL | None | bool = False  # False: not looked for yet


def library() -> ctypes.CDLL | None:
    """The built ``driftsim.sim._stepcore`` extension, or None where it was not built."""
    global _lib
    if _lib is False:
        spec = importlib.util.find_spec("driftsim.sim._stepcore")
        _lib = None if spec is None or spec.origin is None else _bind(ctypes.CDLL(spec.origin))
    return _lib


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    lib.sc_new.restype = vp
    lib.sc_new.argtypes = [_i64p, ctypes.c_int, _f64p, ctypes.c_int, ctypes.c_int, _f64p, _f64p, i64,
                           _i64p, _f64p, _f64p, _f64p, _i64p, _i64p, _i64p, _i64p]
    lib.sc_cluster_new.restype = vp
    lib.sc_cluster_new.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, *lib.sc_new.argtypes]
    for prefix in ("sc_", "sc_cluster_"):  # a lone replica's functions and a cluster's: the same shapes
        getattr(lib, prefix + "free").argtypes = [vp]
        getattr(lib, prefix + "push").restype = ctypes.c_int
        getattr(lib, prefix + "push").argtypes = [vp, i64, _i64p, _f64p, _i64p, _i64p, _i64p, _f64p, _f64p, _f64p,
                                                  _f64p, _i64p, _i64p, _i64p, i64, _i64p]
        getattr(lib, prefix + "run").restype = ctypes.c_int
        getattr(lib, prefix + "run").argtypes = [vp, ctypes.c_int]
        getattr(lib, prefix + "counters").argtypes = [vp, _f64p, _i64p]
        getattr(lib, prefix + "drained").argtypes = [vp]
    lib.sc_cluster_sessions.restype = ctypes.c_int
    lib.sc_cluster_sessions.argtypes = [vp, i64, _i64p, _f64p, _i64p, _i64p, _i64p, _f64p, _f64p, _f64p, _f64p,
                                        _i64p, _i64p, _i64p, i64, _i64p, _i64p, _f64p, _f64p, _f64p, i64]
    lib.sc_block_keys.restype = i64
    lib.sc_block_keys.argtypes = [_i64p, i64, i64, i64, i64, _i64p]
    lib.sc_step_time.restype = f64
    lib.sc_step_time.argtypes = [ctypes.c_int, _f64p, ctypes.c_int, ctypes.c_int, _f64p, _f64p, f64, f64, f64, f64, f64]
    return lib


def formula_of(cost) -> StepFormula | None:
    """The cost model's :class:`StepFormula` when the compiled core can evaluate it exactly, else None.

    A subclass that redefines ``step_time`` below the class that wrote ``step_formula`` does not
    qualify: the formula would describe its parent."""
    method = getattr(cost, "step_formula", None)
    if method is None or _defined_in(type(cost), "step_formula") is not _defined_in(type(cost), "step_time"):
        return None
    form = method()
    if (form.kind not in _KINDS or len(form.coefficients) > _MAX_COEFFICIENTS or len(form.knots) > _MAX_KNOTS
            or len(form.knots) != len(form.values)):
        return None
    return form


def _defined_in(cls: type, name: str) -> type | None:
    return next((k for k in inspect.getmro(cls) if name in vars(k)), None)


def step_time(form: StepFormula, P: float, A: float, Sp: float, D: float, C: float) -> float:
    """One step time evaluated by the compiled formula (for checking it against the Python model)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the compiled core driftsim.sim._stepcore is not built")
    p, knots, values = _arrays(form)
    return lib.sc_step_time(_KINDS[form.kind], p, len(form.coefficients), len(form.knots), knots, values,
                            P, A, Sp, D, C)


def block_keys(ids, id_tokens: int, block_size: int, prompt_tokens: int) -> list[int]:
    """:func:`driftsim.sim.prefix_cache.block_keys` as the compiled core computes it (for checking the two)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the compiled core driftsim.sim._stepcore is not built")
    ids = np.ascontiguousarray(np.append(np.asarray(ids, dtype=np.int64), 0))  # never empty
    keys = np.empty(prompt_tokens // block_size + 1, np.int64)
    n = lib.sc_block_keys(ids, len(ids) - 1, id_tokens, block_size, prompt_tokens, keys)
    return keys[:n].tolist()


def _arrays(form: StepFormula) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    def padded(values) -> np.ndarray:
        return np.array([*values, 0.0], dtype=np.float64)  # never empty: ctypes wants a buffer

    return padded(form.coefficients), padded(form.knots), padded(form.values)


@dataclass(frozen=True)
class Finished:
    """Requests the compiled core finished since the last drain, as arrays (trace row first)."""

    idx: np.ndarray
    scheduled_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    generated: np.ndarray
    preemptions: np.ndarray
    replica: np.ndarray
    cached_tokens: np.ndarray  # prompt tokens found in the prefix cache at the first admission


_COUNTER_NAMES = ("steps", "preemptions", "running", "waiting", "kv_used", "prefix_queries", "prefix_query_tokens",
                  "prefix_hit_tokens", "prefix_evictions")  # per replica, in replica_counters' order
_COUNTERS = len(_COUNTER_NAMES)
ROUTERS = {"round_robin": 0, "least_outstanding": 1, "prefix_affinity": 2}  # the routers a cluster of replicas mirrors
#: the engine's waiting queue: FcfsQueue, or a PolicyQueue whose key is static per request (given with
#: each row), Las's generated tokens or Srpt's remaining estimate (kept by the core)
POLICY_FCFS, POLICY_STATIC, POLICY_LAS, POLICY_SRPT = 0, 1, 2, 3


class CompiledCore:
    """The engines of ``replicas`` replicas and their arrivals, in C (see the module docstring); several
    replicas sit behind the gateway's ``router``; a gateway with a cap of requests in flight per
    replica queues the arrivals beyond it in its policy's order."""

    def __init__(self, lib: ctypes.CDLL, engine: EngineConfig, form: StepFormula, num_blocks: int, *,
                 replicas: int = 1, router: str = "least_outstanding", policy: int = POLICY_FCFS,
                 prefix_caching: bool = False, gateway_cap: int | None = None, sessions: bool = False) -> None:
        self._lib = lib
        self.replicas = replicas
        cap = max(8192, 4 * engine.max_num_seqs)
        self._out = (np.empty(cap, np.int64), np.empty(cap), np.empty(cap), np.empty(cap), np.empty(cap, np.int64),
                     np.empty(cap, np.int64), np.zeros(cap, np.int64), np.empty(cap, np.int64))
        config = np.array([engine.block_size, engine.max_num_seqs, engine.max_num_batched_tokens, engine.max_model_len,
                           num_blocks - NULL_BLOCKS, int(engine.chunked_prefill), int(engine.reserve_full_prompt),
                           int(engine.async_scheduling), policy, int(prefix_caching)],
                          dtype=np.int64)
        p, knots, values = _arrays(form)
        args = (config, _KINDS[form.kind], p, len(form.coefficients), len(form.knots), knots, values, cap, *self._out)
        if replicas == 1 and gateway_cap is None and not sessions:  # a lone replica that takes the rows in itself
            self._state = lib.sc_new(*args)
            prefix = "sc_"
        else:
            # ContinuousReplica.merge_runs for these runs (driftsim.sim.run._build): not where the router
            # reads the engines' caches, nor where a cap holds work back from several replicas
            merge = not engine.async_scheduling and (replicas == 1 or (gateway_cap is None
                                                                       and router != "prefix_affinity"))
            self._state = lib.sc_cluster_new(replicas, ROUTERS[router], int(merge),
                                             -1 if gateway_cap is None else gateway_cap, *args)
            prefix = "sc_cluster_"
        self._run, self._push, self._free, self._counters, self._drained = (
            getattr(lib, prefix + name) for name in ("run", "push", "free", "counters", "drained"))
        if not self._state:
            raise MemoryError("the compiled core could not allocate its state")
        self._d = np.zeros(1 + replicas)
        self._n = np.zeros(2 + _COUNTERS * replicas, np.int64)

    def close(self) -> None:
        if self._state:
            self._free(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()

    def sessions(self, rows: tuple, next_turn: np.ndarray, think: np.ndarray, open_s: np.ndarray, slots: int,
                 sent: np.ndarray) -> None:
        """A sender the core runs itself (a core made with ``sessions``): ``rows``, every row of the trace
        as :meth:`push` takes them, trace row ``i`` at place ``i``. Multi-turn sessions (``slots`` 0): row
        ``i``'s session continues with row ``next_turn[i]`` (-1: none), sent ``think`` after ``i`` settles
        and not before its ``open_s``; rows no earlier turn holds back are pushed as usual. A closed loop
        (``slots`` > 0): every row is held, sent in order when open and a slot is free, a slot freeing
        ``think`` after a completion. Send times are written into ``sent`` as rows leave."""
        if sent.dtype != np.float64 or not sent.flags.c_contiguous or not sent.flags.writeable:
            raise ValueError("sent: a writable contiguous float64 array")
        self._kept = arrays = (*self._row_arrays(*rows), np.ascontiguousarray(next_turn, dtype=np.int64),
                               np.ascontiguousarray(think, dtype=np.float64),
                               np.ascontiguousarray(open_s, dtype=np.float64), sent, int(slots))  # the core reads them
        if self._lib.sc_cluster_sessions(self._state, len(arrays[0]), *arrays) != 0:
            raise MemoryError("the compiled core could not take the sessions' rows")

    def push(self, idx: np.ndarray, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray,
             request_id: np.ndarray, key1: np.ndarray, key2: np.ndarray, gateway_key1: np.ndarray,
             gateway_key2: np.ndarray, id_tokens: np.ndarray | None = None, id_counts: np.ndarray | None = None,
             ids: np.ndarray | None = None) -> None:
        """Rows in trace order; ``output_tokens`` < 0 marks a row refused at its arrival (it still moves
        the arrival clock and ends decode runs, as in the Python feed); ``key1``, ``key2``: the engine
        policy's static key of each row (a pair, compared in order), ``gateway_key1``, ``gateway_key2``
        the gateway policy's (a capped gateway's queue); ``id_tokens`` (0: none), ``id_counts``, ``ids``:
        each row's prefix ids, the rows' ids one after another."""
        if self._push(self._state, len(idx), *self._row_arrays(
                idx, arrival_s, input_tokens, output_tokens, request_id, key1, key2, gateway_key1, gateway_key2,
                id_tokens, id_counts, ids)) != 0:
            raise MemoryError("the compiled core could not take more rows")

    @staticmethod
    def _row_arrays(idx, arrival_s, input_tokens, output_tokens, request_id, key1, key2, gateway_key1, gateway_key2,
                    id_tokens=None, id_counts=None, ids=None) -> tuple:
        """:meth:`push`'s arguments as the C functions take them: contiguous columns, the ids' offsets."""
        n = len(idx)
        if id_tokens is None:
            id_tokens = id_counts = np.zeros(n, np.int64)
            ids = np.zeros(0, np.int64)
        counts = np.ascontiguousarray(id_counts, dtype=np.int64)
        offsets = np.zeros(n, np.int64)
        np.cumsum(counts[:-1], out=offsets[1:])
        flat = np.ascontiguousarray(ids, dtype=np.int64)
        nids = len(flat)
        if not nids:
            flat = np.zeros(1, np.int64)  # ctypes wants a buffer
        args = [np.ascontiguousarray(a, dtype=t) for a, t in
                ((idx, np.int64), (arrival_s, np.float64), (input_tokens, np.int64), (output_tokens, np.int64),
                 (request_id, np.int64), (key1, np.float64), (key2, np.float64), (gateway_key1, np.float64),
                 (gateway_key2, np.float64), (id_tokens, np.int64))]
        return (*args, offsets, counts, nids, flat)

    def run(self, final: bool) -> int:
        """Simulate until more rows are needed (``final``: there are none), the finished buffer is
        full, or every row has finished; returns which (``RC_*``)."""
        rc = self._run(self._state, int(final))
        if rc == RC_NOMEM:
            raise MemoryError("the compiled core ran out of memory")
        return rc

    def counters(self) -> dict:
        """The clock, rows released, finished requests not drained, and per replica its busy time,
        steps, preemptions, running and waiting requests, KV blocks in use, and the prefix cache's
        counters (:meth:`~driftsim.sim.engine.EngineCore.prefix_stats`' own)."""
        d, n = self._d, self._n
        self._counters(self._state, d, n)
        per = n[2:].reshape(self.replicas, _COUNTERS).tolist()
        return {"clock": float(d[0]), "released": int(n[0]), "finished": int(n[1]),
                "replicas": [{"busy_s": float(d[1 + i]), **dict(zip(_COUNTER_NAMES, row))} for i, row in enumerate(per)]}

    def drain(self) -> Finished:
        """The requests finished since the last drain (copies), then an empty buffer."""
        k = self.counters()["finished"]
        out = Finished(*(a[:k].copy() for a in self._out))
        self._drained(self._state)
        return out
