"""A cost model whose weight-GEMM cost is a rising piecewise-linear table in
the step's token count, with linear attention and per-sequence terms.

Why: a GEMM over T tokens costs about the same for any T while it streams
weights (memory-bound) and grows linearly once it is compute-bound; a single
per-token coefficient cannot be right at both ends. Measured kernel tables
show this directly, so profiles built from them use this form.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np

from driftsim.costmodel._runs import decode_run_ctx
from driftsim.costmodel.base import StepFormula
from driftsim.costmodel.batch import StepBatch
from driftsim.costmodel.kv import KvCapacity

COEFFICIENTS = ("overhead_s", "per_token_s", "per_prefill_attn_s", "per_prefill_seq_s", "per_prefill_step_s",
                "per_decode_seq_s", "per_decode_step_s", "per_decode_ctx_token_s")


class TokenTableCostModel:
    """step_time = overhead + g(T) + b*A + c*Sp + p*[Sp>0] + d*D + q*[D>0] + e*C, in seconds.

    T = ``prefill_tokens + decode_seqs`` (the tokens every weight GEMM runs
    over), A = ``prefill_attn_tokens``, Sp = ``prefill_seqs``, D =
    ``decode_seqs``, C = ``decode_ctx_tokens``; [Sp>0] and [D>0] are 1 when
    the step has prefill (decode) work and 0 otherwise. p
    (``per_prefill_step_s``) and q (``per_decode_step_s``) are the floor an
    attention kernel costs per step once it runs at all (launches, one wave
    per layer), which a linear term in its work cannot follow on small
    batches. g is piecewise linear through
    (0, 0) and (``token_knots[j]``, ``token_cost_s[j]``); beyond the last knot
    each further token costs ``per_token_s``. Every coefficient is finite
    and >= 0, the table rises (non-decreasing), and ``overhead_s`` > 0: the
    step time is > 0 and non-decreasing in every kind of work.

    NOTE: step_time and decode_run_times evaluate the same sum in the same
    order on float64, with g(T) computed once by the same scalar code, so the
    two are bit-identical.
    """

    kind = "token-table"

    def __init__(self, *, overhead_s: float, token_knots, token_cost_s, per_token_s: float = 0.0,
                 per_prefill_attn_s: float = 0.0, per_prefill_seq_s: float = 0.0, per_prefill_step_s: float = 0.0,
                 per_decode_seq_s: float = 0.0, per_decode_step_s: float = 0.0, per_decode_ctx_token_s: float = 0.0, kv: KvCapacity | None = None, name: str = "token-table",
                 provenance: dict | None = None) -> None:
        values = dict(overhead_s=overhead_s, per_token_s=per_token_s, per_prefill_attn_s=per_prefill_attn_s,
                      per_prefill_seq_s=per_prefill_seq_s, per_prefill_step_s=per_prefill_step_s,
                      per_decode_seq_s=per_decode_seq_s, per_decode_step_s=per_decode_step_s,
                      per_decode_ctx_token_s=per_decode_ctx_token_s)
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"TokenTableCostModel.{key} must be a finite number >= 0, got {value!r}")
            setattr(self, key, float(value))
        if not self.overhead_s > 0:
            raise ValueError("TokenTableCostModel.overhead_s must be > 0 (step_time must be > 0)")
        knots, costs = list(token_knots), [float(v) for v in token_cost_s]
        if not knots or len(knots) != len(costs):
            raise ValueError("TokenTableCostModel: token_knots and token_cost_s need one cost per knot (non-empty)")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in knots) \
                or any(b <= a for a, b in zip(knots, knots[1:])):
            raise ValueError(f"TokenTableCostModel.token_knots must be strictly increasing integers >= 1, got {knots!r}")
        if any(not math.isfinite(v) or v < 0 for v in costs) or any(b < a for a, b in zip(costs, costs[1:])):
            raise ValueError(f"TokenTableCostModel.token_cost_s must be finite, >= 0 and non-decreasing, got {costs!r}")
        self.token_knots, self.token_cost_s = tuple(knots), tuple(costs)
        self.kv, self.name, self.provenance = kv, name, dict(provenance or {})

    @property
    def coefficients(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in COEFFICIENTS}

    def tokens_s(self, T: float) -> float:
        """g(T): seconds the weight GEMMs of a step over ``T`` tokens cost."""
        knots, costs = self.token_knots, self.token_cost_s
        if T >= knots[-1]:
            return costs[-1] + self.per_token_s * (T - knots[-1])
        j = bisect.bisect_right(knots, T)
        if j and T == knots[j - 1]:
            return costs[j - 1]
        k0, v0 = (knots[j - 1], costs[j - 1]) if j else (0.0, 0.0)
        return v0 + (costs[j] - v0) * ((T - k0) / (knots[j] - k0))

    def _eval(self, G: float, A: Any, Sp: float, D: float, C: Any) -> Any:
        return (self.overhead_s + G + self.per_prefill_attn_s * A + self.per_prefill_seq_s * Sp
                + self.per_prefill_step_s * float(Sp > 0) + self.per_decode_seq_s * D
                + self.per_decode_step_s * float(D > 0) + self.per_decode_ctx_token_s * C)

    def step_time(self, batch: StepBatch) -> float:
        """Seconds one engine iteration running ``batch`` takes (> 0, finite)."""
        D = float(batch.decode_seqs)
        return self._eval(self.tokens_s(float(batch.prefill_tokens) + D), float(batch.prefill_attn_tokens),
                          float(batch.prefill_seqs), D, float(batch.decode_ctx_tokens))

    def decode_run_times(self, num_seqs: int, ctx_tokens: int, k: int) -> np.ndarray:
        """Durations (s, float64[k]) of k pure-decode steps, bit-identical to step_time."""
        ctx = decode_run_ctx(num_seqs, ctx_tokens, k)
        D = float(num_seqs)
        return np.asarray(self._eval(self.tokens_s(0.0 + D), 0.0, 0.0, D, ctx), dtype=np.float64)

    def step_formula(self) -> StepFormula:
        """:meth:`step_time` for the compiled core (:class:`driftsim.costmodel.base.StepFormula`)."""
        return StepFormula("token-table", tuple(getattr(self, k) for k in COEFFICIENTS),
                           tuple(float(k) for k in self.token_knots), self.token_cost_s)

    def kv_capacity_blocks(self, block_size: int) -> int:
        if self.kv is None:
            raise ValueError(f"cost model {self.name!r} has no KV capacity configured")
        return self.kv.blocks(block_size)

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind,
                "parameters": {**self.coefficients, "token_knots": list(self.token_knots),
                               "token_cost_s": list(self.token_cost_s)},
                "kv": None if self.kv is None else self.kv.describe(), "provenance": dict(self.provenance)}
