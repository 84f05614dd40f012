"""The engine model: vLLM's iteration-level continuous batching, one replica.

``EngineCore`` is a plain object with no SimPy in it: ``plan(t)`` decides the
next iteration(s) starting at engine time ``t`` and returns their end times;
``commit(n)`` applies the first ``n`` of them. The SimPy replica process
(:mod:`driftsim.sim.replica`) yields a timeout per plan; the micro-batch worker calls
:meth:`EngineCore.run_arrivals` directly.

Scheduling follows vLLM's v1 scheduler, thinking in tokens rather than
phases: every running request has computed tokens catching up to its target
under a per-step token budget.

- Running pass first: each decoding sequence gets 1 token, then prefilling
  sequences (in running order) get chunks from what is left of
  ``max_num_batched_tokens``. If the KV blocks they need are not free, the
  most recently admitted running request is preempted (recompute: its blocks
  are freed and it goes back to the front of the waiting queue to recompute
  prompt + generated tokens), until the rest fits.
- Waiting pass, only if nothing was preempted: admit from the head of the
  waiting queue while ``max_num_seqs``, the token budget and free KV blocks
  allow. With chunked prefill the first chunk may be partial.
- A sequence whose prefill completes samples its first token in that step
  (TTFT is that step's end); each decode step adds one token.

The two passes are ``EngineCore._running_pass`` and ``EngineCore._waiting_pass``;
:func:`admitted_prompt_tokens` is the admission rule under the token budget.
KV blocks are counted by :class:`driftsim.sim.kv.KvBlocks`, which answers
"can I allocate?"; the scheduler here picks the victim. Observers given to
the engine receive :mod:`driftsim.sim.events` records (steps committed,
requests scheduled and finished).

Decoding sequences are not touched one by one per step. They share an
aggregate: their count ``D``, the sum of their computed tokens, and a
histogram of ``(computed - decode_step_counter) mod block_size`` that says
how many of them need a new KV block at any future step. Completion times
are known on entering decode and kept in a heap. So when nothing can change
the batch (no prefill in flight, nothing admissible waiting), ``plan`` fast-
forwards up to the next completion or KV shortage in one call, and the step
end times it returns are bit-identical to running those steps one by one.

With ``EngineConfig.async_scheduling`` (vLLM v1's default for ``vllm serve``:
``EngineCore.step_with_batch_queue`` with a batch queue of 2) step k+1 is
scheduled when step k is launched, before step k's outputs are known. The
model keeps what that changes for the timeline:

- *intake lag*: a request that reaches the engine during step k sits in an
  inbox (vLLM's input queue) and enters the waiting queue only when step
  k+1 is planned at step k's end, i.e. it can run from step k+2. A step
  planned after an idle gap, or one whose pre-scheduled batch would have
  been empty (nothing running or waiting), takes everything that arrived;
- *release lag*: a request finishing in step k still holds its slot and its
  KV blocks while step k+1 is scheduled (vLLM frees them when it processes
  step k's output), so the waiting pass of step k+1 sees them as taken.

Decodes of a request whose prefill completes in step k are scheduled in
step k+1 (vLLM schedules them against output placeholders), and a request
never gets a step beyond its ``max_tokens``, as in the synchronous model.
Steps and their durations are the same: what a served engine adds to each
step (its CPU loop beside the forward pass) is the cost model's business
(see ``driftsim.validation.server_steps.StepCorrection``). Inbox entries note the index of
the step during which they arrived, not a time, so fast-forwarded runs stay
bit-identical to step-by-step ones.

NOTE: ``max_num_batched_tokens >= max_num_seqs`` (checked in EngineConfig)
guarantees every decode fits the token budget; prefilling requests are always
behind all decoding ones in running order, so "decodes first" equals vLLM's
single ordered pass.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from driftsim.costmodel.base import CostModel
from driftsim.costmodel.batch import StepBatch, chunk_attn_tokens
from driftsim.sim.config import ConfigError, EngineConfig
from driftsim.sim.events import (EngineSampled, Observer, RequestFinished, RequestScheduled, StepCommitted,
                                 observer_tuple, publish)
from driftsim.sim.kv import NULL_BLOCKS, KvBlocks, cdiv
from driftsim.sim.policies import Policy
from driftsim.sim.prefix_cache import BlockKeyMemo, PrefixCachedBlocks
from driftsim.sim.request import SimRequest

__all__ = ["NULL_BLOCKS", "EngineCore", "FcfsQueue", "PolicyQueue", "admitted_prompt_tokens"]

_SHORT_RUN = 24  # runs up to this many steps are planned without numpy


def admitted_prompt_tokens(remaining: int, budget: int, *, chunked: bool) -> int | None:
    """Tokens of a waiting prompt (``remaining`` still to compute) that one step admits under a token
    ``budget``: all of them if they fit, else with chunked prefill a first chunk of ``budget`` tokens,
    else None (it waits). KV blocks are the caller's separate check."""
    if remaining > budget and not chunked:
        return None
    return min(remaining, budget)


@dataclass(slots=True)
class _InboxEntry:
    """A request that reached an async-scheduling engine and is not yet in its waiting queue."""

    arrived_step: int | None  # index of the step during which it arrived; None: the one planned (set at commit)
    request: SimRequest


class FcfsQueue:
    """vLLM's default waiting queue: arrival order, preempted requests go back to the front."""

    def __init__(self) -> None:
        self._q: deque[SimRequest] = deque()

    def push(self, req: SimRequest) -> None:
        self._q.append(req)

    def push_front(self, req: SimRequest) -> None:
        self._q.appendleft(req)

    def peek(self) -> SimRequest:
        return self._q[0]

    def pop(self) -> SimRequest:
        return self._q.popleft()

    def remove(self, req: SimRequest) -> bool:
        try:
            self._q.remove(req)
        except ValueError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._q)

    @staticmethod
    def victim(running: dict[int, SimRequest]) -> SimRequest:
        """The most recently admitted running request."""
        return running[next(reversed(running))]


class PolicyQueue:
    """A waiting queue ordered by a keyed policy, as vLLM's ``priority`` scheduling does.

    Preempted requests are pushed back by their key; the preemption victim is
    the running request the policy ranks last.
    """

    def __init__(self, policy: Policy) -> None:
        if not policy.keyed:
            raise ConfigError(
                f"policy '{policy.name}' keeps per-tenant state and can only act at the gateway; "
                "inside the engine use a keyed policy (fifo, priority, sjf, aging, edf, las, srpt)"
            )
        self.policy = policy

    def push(self, req: SimRequest) -> None:
        self.policy.push(req, 0.0)

    push_front = push

    def peek(self) -> SimRequest:
        return self.policy.peek()

    def pop(self) -> SimRequest:
        return self.policy.pop(0.0)

    def remove(self, req: SimRequest) -> bool:
        return self.policy.remove(req)

    def __len__(self) -> int:
        return len(self.policy)

    def victim(self, running: dict[int, SimRequest]) -> SimRequest:
        return max(running.values(), key=self.policy.rank)


class EngineCore:
    """Continuous-batching state of one replica; see the module docstring.

    ``replica`` is the index events carry; ``observers`` receive the
    :mod:`driftsim.sim.events` this engine publishes (steps committed,
    requests scheduled and finished).
    """

    def __init__(
        self,
        *,
        config: EngineConfig,
        cost: CostModel,
        num_blocks: int,
        policy: Policy | None = None,
        replica: int = 0,
        observers: Iterable[Observer] | None = None,
    ) -> None:
        self.cfg = config
        self.cost = cost
        self.block_size = config.block_size
        self.max_seqs = config.max_num_seqs
        self.token_budget = config.max_num_batched_tokens
        self.chunked = config.chunked_prefill
        self.fast_forward = config.fast_forward
        self.async_sched = config.async_scheduling
        self.reserve_full = config.reserve_full_prompt
        # prefix caching (continuous mode): a request with prefix identity reuses cached full blocks
        self.prefix_caching = config.prefix_caching and config.mode == "continuous"
        self.kv = PrefixCachedBlocks(num_blocks) if self.prefix_caching else KvBlocks(num_blocks)
        self._block_key_memo = BlockKeyMemo(self.block_size)
        # a router reads this engine's cache at arrivals (prefix affinity): a fast-forwarded run must not
        # evict a cached block before its last step, so that an arrival during it sees what a step-by-step
        # run shows then (its earlier steps committed)
        self.cache_read_by_router = False
        self.replica = replica
        self._observers = observer_tuple(observers)
        # a cost model may time a pure-decode step without a StepBatch (same value, bit for bit)
        self._decode_step_time = getattr(cost, "decode_step_time", None) or (
            lambda d, ctx: cost.step_time(StepBatch(decode_seqs=d, decode_ctx_tokens=ctx)))

        self.waiting: FcfsQueue | PolicyQueue = FcfsQueue() if policy is None else PolicyQueue(policy)
        self.running: dict[int, SimRequest] = {}  # order -> request, admission order
        self.prefilling: list[SimRequest] = []  # running requests still prefilling, in running order
        self._next_order = 0

        # decode aggregate
        self.decode_step = 0  # decode steps executed so far
        self.num_decode = 0
        self.decode_ctx = 0  # sum of computed tokens over decoding sequences
        # decoding sequences by (computed - decode_step) mod block_size at decode entry: at decode step s,
        # those with phase -s % block_size start a new KV block
        self._decodes_by_phase = [0] * self.block_size
        self._finish_heap: list[tuple[int, int, int, SimRequest]] = []  # (finish_g, order, epoch, req)

        # the plan awaiting commit
        self._ends: np.ndarray | list[float] = []
        self._plan_start = 0.0
        self._plan_chunks: list[int] | None = None  # None: a pure-decode run
        self._plan_decode_blocks = 0

        # async scheduling: requests not yet in the scheduler, and what the last committed step
        # left behind (its end, the slots and KV blocks its finishers still hold)
        self._inbox: deque[_InboxEntry] = deque()
        self._last_end = -1.0
        self._lag_seqs = self._lag_blocks = 0
        self._lagged = False  # the plan in progress sees the last step's finishers as still there
        self._freed = 0  # blocks freed by the step being committed

        # counters for reports
        self.busy_s = 0.0
        self.steps = 0
        self.preemptions = 0
        self.prefix_queries = 0  # admissions of requests with prefix identity (each after a preemption too)
        self.prefix_query_tokens = 0  # their prompt tokens to compute at those admissions
        self.prefix_hit_tokens = 0  # of those, tokens found in the prefix cache (prefill saved)

    # ------------------------------------------------------------------ queries
    @property
    def total_blocks(self) -> int:
        return self.kv.total

    @property
    def used_blocks(self) -> int:
        return self.kv.used

    @property
    def free_blocks(self) -> int:
        return self.kv.total - self.kv.used

    def fits(self, req: SimRequest) -> bool:
        """Whether the whole sequence could ever hold its KV on this engine."""
        return cdiv(req.input_tokens + req.output_tokens, self.block_size) <= self.kv.total

    def prefix_stats(self) -> dict:
        """Prefix-cache counters for reports: admissions that looked the cache up, the prompt tokens
        they had to compute and the tokens found cached (prefill saved), and cached blocks evicted."""
        return {
            "prefix_caching": self.prefix_caching,
            "prefix_lookups": self.prefix_queries,
            "prefix_lookup_tokens": self.prefix_query_tokens,
            "prefix_hit_tokens": self.prefix_hit_tokens,
            "prefix_token_hit_rate": self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens
            else math.nan,
            "prefix_evictions": self.kv.evictions if self.prefix_caching else 0,
        }

    def has_work(self) -> bool:
        return bool(self.running) or bool(self.waiting) or bool(self._inbox)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def _decode_tokens(self, r: SimRequest) -> int:
        """Computed tokens of the decoding request ``r`` now."""
        return r.decode_entry_computed + self.decode_step - r.decode_entry_step

    def decode_blocks_held(self) -> int:
        """KV blocks held by decoding sequences, recomputed from scratch (for invariant checks)."""
        return sum(cdiv(self._decode_tokens(r), self.block_size) for r in self.running.values() if r.finish_g >= 0)

    # ------------------------------------------------------------------ intake
    def add(self, req: SimRequest) -> None:
        """Queue a request in the waiting queue (at the back, for FCFS).

        With async scheduling it first waits in the inbox, noting the step during which it
        arrived: the one planned, if any, else the last one (it arrived at that step's end).
        Steps, not times, so that fast-forwarded and step-by-step runs agree bit for bit.
        """
        req.prefill_target = req.input_tokens + req.generated
        req.finish_g = -1
        if self.async_sched:
            self._inbox.append(_InboxEntry(None if len(self._ends) else self.steps, req))
        else:
            self.waiting.push(req)

    def _intake(self, t: float) -> None:
        """Async scheduling: move into the waiting queue what the step planned at ``t`` can see.

        A step right after the last one was scheduled when that one started: it sees arrivals
        up to then (during earlier steps), and the last step's finishers still holding their
        slots and blocks. Otherwise (after an idle gap, or when that pre-scheduled batch would
        have been empty) it sees everything that arrived and nothing lags.
        """
        self._lagged = t == self._last_end
        # the step planned now (self.steps + 1) was scheduled when the last one started
        self._take_inbox(self.steps - 1 if self._lagged else self.steps)
        if self._lagged and not self.running and not self._head_admissible():
            self._lagged = False  # the pre-scheduled batch was empty: vLLM schedules again now
            self._take_inbox(self.steps)
        if self._lagged and not (self._lag_seqs or self._lag_blocks):
            self._lagged = False

    def _take_inbox(self, step: int) -> None:
        """Move into the waiting queue the requests that arrived during steps up to ``step``."""
        inbox = self._inbox
        while inbox and inbox[0].arrived_step <= step:
            self.waiting.push(inbox.popleft().request)

    def _head_admissible(self) -> bool:
        """With nothing running: would the waiting head be admitted while the last step's
        finishers still hold their slots and blocks?"""
        if not self.waiting or self._lag_seqs >= self.max_seqs:
            return False
        head = self.waiting.peek()
        hit, hit_free = self._cache_hit(head)
        n = admitted_prompt_tokens(head.prefill_target - hit * self.block_size, self.token_budget, chunked=self.chunked)
        if n is None:
            return False
        return self._admission_blocks(head, n, hit, hit_free) <= self.free_blocks - self._lag_blocks

    def _admission_blocks(self, r: SimRequest, n: int, hit: int = 0, hit_free: int = 0) -> int:
        """Free KV blocks the waiting request ``r`` needs to be admitted with a chunk of ``n`` tokens
        after ``hit`` cached blocks (``hit_free`` of them free): its whole prompt's
        (``reserve_full_prompt``, vLLM's ``scheduler_reserve_full_isl``: ``kv_cache_manager.allocate_slots``
        checks ``request.num_tokens``) or the chunk's, less the cached ones, plus the cached ones it
        takes out of the free queue (vLLM's ``num_evictable_computed_blocks``). Only the chunk's
        blocks are then taken. A waiting request holds no blocks and has computed nothing."""
        tokens = r.prefill_target if self.reserve_full else hit * self.block_size + n
        return cdiv(min(tokens, self.cfg.max_model_len), self.block_size) - hit + hit_free

    def cached_prefix_blocks(self, r: SimRequest) -> int:
        """Leading prompt blocks of ``r`` this engine's prefix cache holds now (0 without caching or
        identity); what a prefix-aware router compares across replicas."""
        if r.prefix_ids is None or not self.prefix_caching:
            return 0
        if r.block_keys is None:
            r.block_keys = self._block_keys(r)
        return self.kv.lookup(r.block_keys, (r.prefill_target - 1) // self.block_size)[0]

    def _block_keys(self, r: SimRequest) -> list[int]:
        """Keys of the full blocks ``r``'s ids name: its prompt's, and when it has more ids than its prompt
        has blocks (they name the answer too, the block straddling both included), its answer's up to
        its last token, whose KV is never computed."""
        size = r.prefix_id_tokens
        answer = len(r.prefix_ids) > -(-r.input_tokens // size)
        tokens = r.input_tokens + r.output_tokens - 1 if answer else r.input_tokens
        return self._block_key_memo(r.prefix_ids, size, tokens)

    def _cache_hit(self, r: SimRequest) -> tuple[int, int]:
        """Cached leading prompt blocks of the waiting request ``r`` and how many of them are free.

        As vLLM's ``get_computed_blocks``: at most ``(tokens to compute - 1) // block_size`` blocks,
        so a prompt found whole still computes its last block (at least one token) to sample from.
        """
        if r.prefix_ids is None or not self.prefix_caching:
            return 0, 0
        kv = self.kv
        memo = r.hit_memo
        if memo is not None and memo[0] == kv.version and memo[1] == r.prefill_target:
            return memo[2], memo[3]
        if r.block_keys is None:
            r.block_keys = self._block_keys(r)
        hit, hit_free = kv.lookup(r.block_keys, (r.prefill_target - 1) // self.block_size)
        r.hit_memo = (kv.version, r.prefill_target, hit, hit_free)
        return hit, hit_free

    # ------------------------------------------------------------------ planning
    def plan(self, t: float, until: float = float("inf")) -> np.ndarray | list[float]:
        """Plan the next iteration(s) from engine time ``t``; return their end times.

        More than one end time is returned only for a fast-forwarded run of
        pure-decode steps; the caller may commit any prefix of it. Such a run
        stops at the first step that ends at or after ``until`` (the next
        known arrival), so the newcomer joins the step after it without an
        interrupt.
        """
        if self.async_sched:
            self._intake(t)
        if not self.running and not self.waiting:
            raise RuntimeError("plan() called on an idle engine")
        run = self.plan_decode_run(t, until)
        return run if run is not None else self._plan_step(t)

    def plan_decode_run(self, t: float, until: float = float("inf")) -> np.ndarray | list[float] | None:
        """The fast-forwarded pure-decode run :meth:`plan` would plan from ``t`` (None: it would plan a
        general step, which this leaves unplanned). Planning a run changes nothing but the plan, so a
        caller may drop it with :meth:`drop_decode_run` and plan again."""
        if (self.fast_forward and not self.prefilling and self.num_decode and not self._lagged
                and not self._inbox and self._waiting_blocked()):
            k = self._stable_steps()
            if k > 0:
                self._plan_start = t
                self._plan_chunks = None
                self._ends = ends = self._decode_run_ends(t, k, until)
                return ends
        self._plan_start = t
        return None

    def drop_decode_run(self) -> None:
        """Forget a planned pure-decode run none of whose steps is committed (the state is as before it)."""
        if self._plan_chunks is not None:
            raise RuntimeError("drop_decode_run() with a general step planned")
        self._ends = []

    def _decode_run_ends(self, t: float, k: int, until: float) -> np.ndarray | list[float]:
        """End times of up to ``k`` pure-decode steps from ``t``, cut after the first that reaches ``until``.

        Short runs are summed in Python (cheaper than numpy set-up); long ones
        vectorised. Both add durations one at a time from ``t``, so the times
        are bit-identical to step-by-step execution.
        """
        d, ctx = self.num_decode, self.decode_ctx + self.num_decode
        if k <= _SHORT_RUN:
            step_time = self._decode_step_time
            ends = []
            for j in range(k):
                t = t + step_time(d, ctx + j * d)
                ends.append(t)
                if t >= until:
                    break
            return ends
        durations = self.cost.decode_run_times(d, ctx, k)
        ends = np.cumsum(np.concatenate(([t], durations)))[1:]
        if ends[-1] >= until:
            ends = ends[: int(np.searchsorted(ends, until, side="left")) + 1]
        return ends

    def _waiting_blocked(self) -> bool:
        """True when the waiting pass would admit nothing now nor at any step before the next completion."""
        if not self.waiting or len(self.running) >= self.max_seqs:
            return True
        head = self.waiting.peek()
        budget = self.token_budget - self.num_decode
        hit, hit_free = self._cache_hit(head)
        n = admitted_prompt_tokens(head.prefill_target - hit * self.block_size, budget, chunked=self.chunked)
        if n is None:
            return True
        free_after_decodes = self.free_blocks - self._decodes_by_phase[-self.decode_step % self.block_size]
        # NOTE: while the run lasts, allocations only take free blocks and may evict cached ones the
        # head would hit, so what it needs never shrinks: blocked now means blocked until the run ends
        return self._admission_blocks(head, n, hit, hit_free) > free_after_decodes

    def _stable_steps(self) -> int:
        """Steps that can run as pure decode before a completion or a KV shortage (0 = a shortage now)."""
        heap = self._finish_heap
        while heap[0][2] != heap[0][3].epoch:  # drop entries of preempted requests
            heapq.heappop(heap)
        to_finish = heap[0][0] - self.decode_step
        if self.cache_read_by_router and self.prefix_caching:
            before = self.kv.blocks_before_cached()
            if before is not None:  # steps whose allocations evict nothing, then the last one
                to_finish = min(to_finish, self._steps_allocating(before) + 1)
        return min(to_finish, self._steps_allocating(self.free_blocks))

    def _steps_allocating(self, blocks: int) -> int:
        """Pure-decode steps from now whose new KV blocks come to at most ``blocks`` in all."""
        num_decode, block_size = self.num_decode, self.block_size
        by_phase, step = self._decodes_by_phase, self.decode_step
        full_cycles = blocks // num_decode  # every block_size steps each decode takes exactly one block
        k = full_cycles * block_size
        left = blocks - full_cycles * num_decode
        while True:
            need = by_phase[-(step + k) % block_size]
            if need > left:
                return k
            left -= need
            k += 1

    def _plan_step(self, t: float) -> list[float]:
        """Plan one general iteration: the running pass, then, if it preempted nothing, the waiting pass."""
        decode_blocks, chunks, budget, need, preempted = self._running_pass()
        if self.prefix_caching:
            for r, n in zip(self.prefilling, chunks):
                if n and r.block_keys:
                    self._register_blocks(r, r.computed + n)
        if not preempted:
            self._waiting_pass(t, chunks, budget, self.free_blocks - need)
        batch = self._step_batch(chunks)
        if batch is None and self._lagged:
            # vLLM's pre-scheduled batch came out empty (the finishers' blocks forced a
            # preemption): it schedules again once their output is processed and they are freed
            self._lagged = False
            self._take_inbox(self.steps)
            return self._plan_step(t)
        if batch is None:
            raise RuntimeError(
                f"engine stalled: {len(self.waiting)} waiting, none admissible with "
                f"{self.free_blocks}/{self.total_blocks} free KV blocks"
            )
        self._plan_chunks = chunks
        self._plan_decode_blocks = decode_blocks
        self._ends = [t + self.cost.step_time(batch)]
        return self._ends

    def _running_pass(self) -> tuple[int, list[int], int, int, bool]:
        """Decodes first (one token each), then running prefills' chunks from what is left of the
        token budget; while their KV blocks are not free, preempt the victim the waiting queue names.

        Returns the decodes' new blocks, the chunk of every prefilling request (running order;
        0 for none), the token budget left, the blocks the step needs, and whether it preempted.
        """
        held_by_finishers = self._lag_blocks if self._lagged else 0
        preempted = False
        while True:
            decode_blocks, chunks, budget, need = self._running_demand()
            if self.kv.can_allocate(need + held_by_finishers):
                return decode_blocks, chunks, budget, need, preempted
            self._preempt_victim()
            preempted = True

    def _running_demand(self) -> tuple[int, list[int], int, int]:
        """What the running requests ask of the next step: decodes' new blocks, prefill chunks,
        the token budget they leave, and the KV blocks they need in all."""
        block_size = self.block_size
        decode_blocks = self._decodes_by_phase[-self.decode_step % block_size] if self.num_decode else 0
        budget = self.token_budget - self.num_decode
        need = decode_blocks
        chunks: list[int] = []
        for r in self.prefilling:
            n = min(r.prefill_target - r.computed, budget)
            if n > 0:
                budget -= n
                need += cdiv(r.computed + n, block_size) - r.blocks
                chunks.append(n)
            else:
                chunks.append(0)
        return decode_blocks, chunks, budget, need

    def _waiting_pass(self, t: float, chunks: list[int], budget: int, free: int) -> None:
        """Admit from the head of the waiting queue while ``max_num_seqs``, the token ``budget`` and
        ``free`` KV blocks allow, appending each admitted request's chunk to ``chunks``."""
        max_seqs = self.max_seqs
        if self._lagged:  # the last step's finishers still hold their slots and blocks
            free -= self._lag_blocks
            max_seqs -= self._lag_seqs
        waiting, block_size, chunked = self.waiting, self.block_size, self.chunked
        while waiting and len(self.running) < max_seqs and budget > 0:
            r = waiting.peek()
            hit, hit_free = self._cache_hit(r)
            n = admitted_prompt_tokens(r.prefill_target - hit * block_size, budget, chunked=chunked)
            if n is None or self._admission_blocks(r, n, hit, hit_free) > free:
                break
            waiting.pop()
            if r.prefix_ids is not None and self.prefix_caching:
                self._take_hit(r, hit)
                free -= hit_free
            free -= cdiv(r.computed + n, block_size) - r.blocks
            budget -= n
            self._admit(r, t)
            chunks.append(n)
            if r.block_keys:
                self._register_blocks(r, r.computed + n)

    def _take_hit(self, r: SimRequest, hit: int) -> None:
        """Admit the waiting request ``r`` onto its ``hit`` cached leading blocks: they count as
        computed and held (referenced), and its statistics note the lookup."""
        kv: PrefixCachedBlocks = self.kv  # type: ignore[assignment]
        keys = r.block_keys[:hit]
        kv.acquire(keys)
        r.shared = keys
        r.hashed_upto = hit
        r.blocks = hit
        r.computed = hit * self.block_size
        self.prefix_queries += 1
        self.prefix_query_tokens += r.prefill_target
        self.prefix_hit_tokens += r.computed
        if r.cached_tokens < 0:
            r.cached_tokens = r.computed

    def _register_blocks(self, r: SimRequest, tokens: int) -> None:
        """Offer the prompt blocks of ``r`` that ``tokens`` fill to the cache when the step computing
        them is scheduled, as vLLM's ``allocate_slots`` caches full blocks: a request admitted later
        in the same step already hits them."""
        keys = r.block_keys
        full = min(tokens // self.block_size, len(keys))
        kv: PrefixCachedBlocks = self.kv  # type: ignore[assignment]
        for j in range(r.hashed_upto, full):
            if kv.register(keys[j]):
                r.shared.append(keys[j])
        if full > r.hashed_upto:
            r.hashed_upto = full

    def _admit(self, r: SimRequest, t: float) -> None:
        """Make the waiting request ``r`` the last of the running order, prefilling from step start ``t``."""
        r.order = self._next_order
        self._next_order += 1
        self.running[r.order] = r
        self.prefilling.append(r)
        if r.scheduled_s < 0:
            r.scheduled_s = t
        if self._observers:
            publish(self._observers, RequestScheduled(self.replica, r.request_id, t))

    def _step_batch(self, chunks: list[int]) -> StepBatch | None:
        """The batch of the planned step (prefilling requests with their ``chunks``, and every
        decode); None when it would be empty."""
        prefill_tokens = 0
        prefill_seqs = 0
        attn = 0.0
        for r, n in zip(self.prefilling, chunks):
            if n:
                prefill_tokens += n
                prefill_seqs += 1
                attn += chunk_attn_tokens(r.computed, n)
        if prefill_tokens == 0 and self.num_decode == 0:
            return None
        return StepBatch(
            prefill_tokens=prefill_tokens,
            prefill_seqs=prefill_seqs,
            prefill_attn_tokens=attn,
            decode_seqs=self.num_decode,
            decode_ctx_tokens=self.decode_ctx + self.num_decode,
        )

    # ------------------------------------------------------------------ commit
    def commit(self, n: int) -> list[tuple[SimRequest, float]]:
        """Apply the first ``n`` planned steps; return (request, finish time) for those that completed."""
        ends = self._ends
        if not 1 <= n <= len(ends):
            raise ValueError(f"commit({n}) outside the planned {len(ends)} steps")
        end = float(ends[n - 1])
        self._last_end = end
        self._freed = 0
        self.busy_s += end - self._plan_start
        self.steps += n
        finished: list[tuple[SimRequest, float]] = []
        if self._plan_chunks is None:
            self._advance_decodes(n, end, finished)
        else:
            if self.num_decode:
                self.kv.allocate(self._plan_decode_blocks)
                self._advance_decode_counters(1)
                self._pop_finished(end, finished)
            self._advance_prefills(self._plan_chunks, end, finished)
        if self._observers:
            self._publish_commit(ends[:n], finished)
        self._ends = []
        self._lag_seqs, self._lag_blocks = len(finished), self._freed
        if self._inbox:
            for entry in self._inbox:  # arrived during the step in progress: the last one committed
                if entry.arrived_step is None:
                    entry.arrived_step = self.steps
        return finished

    def _publish_commit(self, ends, finished: list[tuple[SimRequest, float]]) -> None:
        observers, replica = self._observers, self.replica
        for end in ends:
            publish(observers, StepCommitted(replica, float(end)))
        for req, t in finished:
            publish(observers, RequestFinished(replica, req.request_id, t))
        publish(observers, EngineSampled(replica, float(ends[-1]), len(self.running), len(self.waiting) + len(self._inbox),
                                         self.kv.used, self.kv.total))  # fmt: skip

    def _advance_decodes(self, n: int, end: float, finished: list) -> None:
        """Commit ``n`` pure-decode steps: each decode's new blocks come from the phase counts."""
        block_size, by_phase, step = self.block_size, self._decodes_by_phase, self.decode_step
        cycles, rest = divmod(n, block_size)
        new_blocks = cycles * self.num_decode
        for j in range(rest):
            new_blocks += by_phase[-(step + j) % block_size]
        self.kv.allocate(new_blocks)
        self._advance_decode_counters(n)
        self._pop_finished(end, finished)

    def _advance_decode_counters(self, n: int) -> None:
        self.decode_step += n
        self.decode_ctx += n * self.num_decode

    def _pop_finished(self, end: float, finished: list) -> None:
        heap, step = self._finish_heap, self.decode_step
        if not heap or heap[0][0] > step:
            return
        block_size, by_phase, running = self.block_size, self._decodes_by_phase, self.running
        while heap and heap[0][0] <= step:
            _, _, epoch, r = heapq.heappop(heap)
            if epoch != r.epoch:
                continue
            tokens = r.decode_entry_computed + step - r.decode_entry_step  # _decode_tokens(r)
            self._freed += self._release(r, -(-tokens // block_size), tokens)
            self.num_decode -= 1
            self.decode_ctx -= tokens
            by_phase[(r.decode_entry_computed - r.decode_entry_step) % block_size] -= 1
            r.generated = r.output_tokens
            del running[r.order]
            finished.append((r, end))

    def _advance_prefills(self, chunks: list[int], end: float, finished: list) -> None:
        """Commit the prefill chunks: a completed prompt samples its first token, then decodes or finishes."""
        block_size = self.block_size
        still: list[SimRequest] = []
        for r, n in zip(self.prefilling, chunks):
            if n == 0:
                still.append(r)
                continue
            r.computed += n
            blocks = cdiv(r.computed, block_size)
            self.kv.allocate(blocks - r.blocks)
            r.blocks = blocks
            if r.computed < r.prefill_target:
                still.append(r)
                continue
            if r.first_token_s < 0:
                r.first_token_s = end
            r.generated += 1
            if r.generated >= r.output_tokens:
                self._freed += self._release(r, r.blocks, r.computed)
                r.blocks = 0
                del self.running[r.order]
                finished.append((r, end))
                continue
            self._enter_decode(r)
        self.prefilling = still

    def _enter_decode(self, r: SimRequest) -> None:
        """Move ``r`` (prompt computed, first token sampled) into the decode aggregate."""
        r.decode_entry_computed = r.computed
        r.decode_entry_step = self.decode_step
        r.decode_entry_generated = r.generated
        r.finish_g = self.decode_step + (r.output_tokens - r.generated)
        self._decodes_by_phase[(r.decode_entry_computed - r.decode_entry_step) % self.block_size] += 1
        self.num_decode += 1
        self.decode_ctx += r.decode_entry_computed
        r.blocks = 0  # decode blocks are derived from the aggregate
        heapq.heappush(self._finish_heap, (r.finish_g, r.order, r.epoch, r))

    def _preempt_victim(self) -> None:
        """Preempt (recompute) the victim the waiting queue names: for FCFS the most recently admitted."""
        r = self.waiting.victim(self.running)
        self._take_off_running(r)
        r.computed = 0
        r.preemptions += 1
        self.preemptions += 1
        r.prefill_target = r.input_tokens + r.generated
        self.waiting.push_front(r)

    def _release(self, r: SimRequest, blocks: int, computed: int) -> int:
        """Give back the ``blocks`` that ``r`` holds, whose first ``computed`` tokens hold KV; return
        how many became free (a cached block another request still references stays taken).

        Full blocks its ids name are cached first, those of its answer too: vLLM hashes every full
        block as it is computed, so a later prompt that repeats the answer (the next turn of a chat)
        finds them. NOTE: here an answer's blocks become hittable when the request leaves the
        engine, not as each fills; only a request repeating an answer still being generated sees
        the difference."""
        if r.block_keys and self.prefix_caching:
            self._register_blocks(r, computed)
        if not r.shared:
            r.hashed_upto = 0
            self.kv.free(blocks)
            return blocks
        shared = r.shared
        r.shared = []
        r.hashed_upto = 0
        return self.kv.release(shared, blocks - len(shared))

    def _take_off_running(self, r: SimRequest) -> None:
        """Remove a running request and give back its KV blocks: from the prefilling list, or from the
        decode aggregate (its generated count brought up to date, its completion-heap entry made stale)."""
        del self.running[r.order]
        if r.finish_g < 0:  # still prefilling
            self.prefilling.remove(r)
            self._release(r, r.blocks, r.computed)
        else:
            tokens = self._decode_tokens(r)
            self._release(r, cdiv(tokens, self.block_size), tokens)
            self.num_decode -= 1
            self.decode_ctx -= tokens
            self._decodes_by_phase[(r.decode_entry_computed - r.decode_entry_step) % self.block_size] -= 1
            r.generated = r.decode_entry_generated + self.decode_step - r.decode_entry_step
            r.epoch += 1
        r.blocks = 0
        r.finish_g = -1

    # ------------------------------------------------------------------ abort
    def abort(self, req: SimRequest) -> bool:
        """Drop a request whose client went away and free its KV, as vLLM's ``abort_requests``.

        Call between steps only (no plan awaiting commit), as vLLM handles
        aborts between steps. False if the request is not on this engine.
        """
        if self._ends:
            raise RuntimeError("abort() with a planned step not committed")
        queued = next((i for i, entry in enumerate(self._inbox) if entry.request is req), None)
        if queued is not None:
            del self._inbox[queued]
        elif not self.waiting.remove(req):
            if self.running.get(req.order) is not req:
                return False
            self._take_off_running(req)
        if self._observers:  # the queues and KV changed now, not at the next commit (there may be none)
            publish(self._observers, EngineSampled(self.replica, self._last_end, len(self.running),
                                                   len(self.waiting) + len(self._inbox), self.kv.used, self.kv.total))
        return True

    def generated_by(self, req: SimRequest, t: float) -> int:
        """Output tokens ``req`` has produced in steps ending at or before ``t`` (committed or
        planned), the same in fast-forwarded and step-by-step runs."""
        if self.running.get(req.order) is not req:
            return req.generated
        ends = self._ends
        planned = int(np.searchsorted(np.asarray(ends), t, side="right")) if len(ends) else 0
        if req.finish_g >= 0:  # decoding: one token per step
            return min(req.output_tokens, req.decode_entry_generated + self.decode_step - req.decode_entry_step + planned)
        if planned and self._plan_chunks is not None:  # a prefill step: its last chunk samples a token
            k = self.prefilling.index(req) if req in self.prefilling else -1
            if 0 <= k < len(self._plan_chunks) and req.computed + self._plan_chunks[k] >= req.prefill_target:
                return req.generated + 1
        return req.generated

    # ------------------------------------------------------------------ batch mode
    def run_arrivals(self, t: float, arrivals: list[tuple[float, SimRequest]]) -> tuple[float, list[tuple[SimRequest, float]]]:
        """Run from ``t`` until every request of ``arrivals`` (time, request; in time order) has come
        in and finished: each joins between steps as in a continuous replica (one arriving during a
        step is added while it runs, so the admission rule, synchronous or async, applies). All at
        ``t``: one blocking ``generate()`` call."""
        finished: list[tuple[SimRequest, float]] = []
        i, n = 0, len(arrivals)
        while i < n or self.has_work():
            while i < n and arrivals[i][0] <= t:
                self.add(arrivals[i][1])
                i += 1
            if not self.has_work():
                t = max(t, arrivals[i][0])
                continue
            ends = self.plan(t, arrivals[i][0] if i < n else float("inf"))
            last = float(ends[-1])
            while i < n and arrivals[i][0] < last:  # arrived during the last planned step
                self.add(arrivals[i][1])
                i += 1
            finished.extend(self.commit(len(ends)))
            t = last
        return t, finished
