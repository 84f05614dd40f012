"""A cost model linear in the five batch quantities of a StepBatch, with an
optional piecewise-linear table for the cost of the decode sequences.

The form measured profiles are fitted to (and, via :func:`driftsim.costmodel.fit.linearize`,
a first-order stand-in for the roofline model).
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

COEFFICIENTS = (
    "overhead_s",
    "per_prefill_token_s",
    "per_prefill_attn_s",
    "per_prefill_seq_s",
    "per_decode_seq_s",
    "per_decode_ctx_token_s",
)


class LinearCostModel:
    """step_time = overhead + a*P + b*A + c*Sp + s(D) + e*C, in seconds,
    with s(D) = d*D unless a decode table is given (below).

    ========================  =====================================  ==========
    coefficient               multiplies                              unit
    ========================  =====================================  ==========
    ``overhead_s``            1 (CPU/scheduler + fixed launch cost)  s
    ``per_prefill_token_s``   P = ``prefill_tokens``                 s/token
    ``per_prefill_attn_s``    A = ``prefill_attn_tokens``            s/pair
    ``per_prefill_seq_s``     Sp = ``prefill_seqs``                  s/seq
    ``per_decode_seq_s``      D = ``decode_seqs``                    s/seq
    ``per_decode_ctx_token_s``  C = ``decode_ctx_tokens``            s/token
    ========================  =====================================  ==========

    Decode table (optional): ``decode_seq_knots`` k_1 < ... < k_m (decode
    sequence counts) and ``decode_seq_cost_s`` v_1 .. v_m (seconds the decode
    sequences of a step cost at exactly k_j of them, their context excluded).
    s(D) is piecewise linear through (0, 0), (k_1, v_1), ..., (k_m, v_m), and
    above k_m each further sequence costs ``per_decode_seq_s``:
    s(D) = v_m + d*(D - k_m). It describes engines whose per-sequence decode
    cost depends on the batch size (kernels that switch paths at small
    batches, caches outgrown by large ones). Without a table, s(D) = d*D and
    the model is exactly the plain linear one.

    All coefficients and table values are finite and >= 0, the table values
    are non-decreasing and ``overhead_s`` > 0, so the step time is > 0 and
    non-decreasing in every batch dimension: more work never costs less.

    NOTE: the sum is evaluated left to right in exactly the order written
    above, on float64, both in :meth:`step_time` and (elementwise, numpy) in
    :meth:`decode_run_times`, with s(D) computed once by the same scalar
    code; that is what makes the two bit-identical.

    KV capacity comes from ``kv`` (a measured ``num_gpu_blocks`` or spec
    numbers); without it :meth:`kv_capacity_blocks` raises.
    """

    kind = "linear"

    def __init__(
        self,
        *,
        overhead_s: float,
        per_prefill_token_s: float = 0.0,
        per_prefill_attn_s: float = 0.0,
        per_prefill_seq_s: float = 0.0,
        per_decode_seq_s: float = 0.0,
        per_decode_ctx_token_s: float = 0.0,
        decode_seq_knots: tuple[int, ...] | list[int] = (),
        decode_seq_cost_s: tuple[float, ...] | list[float] = (),
        kv: KvCapacity | None = None,
        name: str = "linear",
        provenance: dict | None = None,
    ) -> None:
        values = dict(
            overhead_s=overhead_s,
            per_prefill_token_s=per_prefill_token_s,
            per_prefill_attn_s=per_prefill_attn_s,
            per_prefill_seq_s=per_prefill_seq_s,
            per_decode_seq_s=per_decode_seq_s,
            per_decode_ctx_token_s=per_decode_ctx_token_s,
        )
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"LinearCostModel.{key} must be a finite number >= 0, got {value!r}")
        if not overhead_s > 0:
            raise ValueError("LinearCostModel.overhead_s must be > 0 (step_time must be > 0)")
        self.overhead_s = float(overhead_s)
        self.per_prefill_token_s = float(per_prefill_token_s)
        self.per_prefill_attn_s = float(per_prefill_attn_s)
        self.per_prefill_seq_s = float(per_prefill_seq_s)
        self.per_decode_seq_s = float(per_decode_seq_s)
        self.per_decode_ctx_token_s = float(per_decode_ctx_token_s)
        self.decode_seq_knots, self.decode_seq_cost_s = _decode_table(decode_seq_knots, decode_seq_cost_s)
        self.kv = kv
        self.name = name
        self.provenance = dict(provenance or {})

    @property
    def coefficients(self) -> dict[str, float]:
        """The six scalar coefficients (the decode table is :attr:`decode_table`)."""
        return {key: getattr(self, key) for key in COEFFICIENTS}

    @property
    def decode_table(self) -> dict[str, list]:
        """``{"decode_seq_knots": [...], "decode_seq_cost_s": [...]}``, empty lists when there is none."""
        return {"decode_seq_knots": list(self.decode_seq_knots), "decode_seq_cost_s": list(self.decode_seq_cost_s)}

    def decode_seqs_s(self, D: float) -> float:
        """s(D): seconds the ``D`` decode sequences of a step cost, context excluded (a Python float)."""
        knots = self.decode_seq_knots
        if not knots:
            return self.per_decode_seq_s * D
        costs = self.decode_seq_cost_s
        if D >= knots[-1]:
            return costs[-1] + self.per_decode_seq_s * (D - knots[-1])
        j = bisect.bisect_right(knots, D)  # knots[j-1] <= D < knots[j]
        if j and D == knots[j - 1]:
            return costs[j - 1]
        k0, v0 = (knots[j - 1], costs[j - 1]) if j else (0.0, 0.0)
        return v0 + (costs[j] - v0) * ((D - k0) / (knots[j] - k0))

    # The one formula. Inputs are float64 (Python floats or numpy arrays); S = s(D), a float.
    def _eval(self, P: Any, A: Any, Sp: Any, S: float, C: Any) -> Any:
        return (
            self.overhead_s
            + self.per_prefill_token_s * P
            + self.per_prefill_attn_s * A
            + self.per_prefill_seq_s * Sp
            + S
            + self.per_decode_ctx_token_s * C
        )

    def step_time(self, batch: StepBatch) -> float:
        """Seconds one engine iteration running ``batch`` takes (> 0, finite)."""
        D = float(batch.decode_seqs)
        return self._eval(
            float(batch.prefill_tokens),
            float(batch.prefill_attn_tokens),
            float(batch.prefill_seqs),
            self.decode_seqs_s(D) if self.decode_seq_knots else self.per_decode_seq_s * D,  # inlined: hot path
            float(batch.decode_ctx_tokens),
        )

    def decode_run_times(self, num_seqs: int, ctx_tokens: int, k: int) -> np.ndarray:
        """Durations (s, float64[k]) of k pure-decode steps; element j equals
        ``step_time(StepBatch(decode_seqs=num_seqs, decode_ctx_tokens=ctx_tokens + j*num_seqs))``
        bit for bit."""
        ctx = decode_run_ctx(num_seqs, ctx_tokens, k)
        out = self._eval(0.0, 0.0, 0.0, self.decode_seqs_s(float(num_seqs)), ctx)
        return np.asarray(out, dtype=np.float64)

    def step_formula(self) -> StepFormula:
        """:meth:`step_time` for the compiled core (:class:`driftsim.costmodel.base.StepFormula`)."""
        return StepFormula("linear", tuple(self.coefficients[k] for k in COEFFICIENTS),
                           tuple(float(k) for k in self.decode_seq_knots), tuple(self.decode_seq_cost_s))

    def breakdown(self, batch: StepBatch) -> dict:
        """Seconds per term for reports; ``total_s == step_time(batch)``."""
        P, A, Sp = float(batch.prefill_tokens), float(batch.prefill_attn_tokens), float(batch.prefill_seqs)
        D, C = float(batch.decode_seqs), float(batch.decode_ctx_tokens)
        return {
            "overhead_s": self.overhead_s,
            "prefill_s": self.per_prefill_token_s * P + self.per_prefill_attn_s * A + self.per_prefill_seq_s * Sp,
            "decode_s": self.decode_seqs_s(D) + self.per_decode_ctx_token_s * C,
            "total_s": self._eval(P, A, Sp, self.decode_seqs_s(D), C),
        }

    def kv_capacity_blocks(self, block_size: int) -> int:
        """KV blocks of ``block_size`` tokens (see :class:`driftsim.costmodel.kv.KvCapacity`)."""
        if self.kv is None:
            raise ValueError(f"cost model {self.name!r} has no KV capacity configured")
        return self.kv.blocks(block_size)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "parameters": {**self.coefficients, **(self.decode_table if self.decode_seq_knots else {})},
            "kv": None if self.kv is None else self.kv.describe(),
            "provenance": dict(self.provenance),
        }

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.coefficients.items())
        if self.decode_seq_knots:
            params += f", decode_seq_knots={self.decode_seq_knots!r}, decode_seq_cost_s={self.decode_seq_cost_s!r}"
        return f"LinearCostModel({params})"


def _decode_table(knots, costs) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Checked decode table: knots strictly increasing positive integers, one finite cost >= 0 per knot, non-decreasing."""
    knots, costs = list(knots), list(costs)
    if len(knots) != len(costs):
        raise ValueError(f"LinearCostModel.decode_seq_knots and decode_seq_cost_s must have the same length, "
                         f"got {len(knots)} knots and {len(costs)} costs")
    for k in knots:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"LinearCostModel.decode_seq_knots must be integers >= 1, got {k!r}")
    if any(b <= a for a, b in zip(knots, knots[1:])):
        raise ValueError(f"LinearCostModel.decode_seq_knots must be strictly increasing, got {knots!r}")
    for v in costs:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"LinearCostModel.decode_seq_cost_s must be finite numbers >= 0, got {v!r}")
    if any(b < a for a, b in zip(costs, costs[1:])):
        raise ValueError(f"LinearCostModel.decode_seq_cost_s must be non-decreasing (a step with more decode "
                         f"sequences cannot cost less), got {costs!r}")
    return tuple(int(k) for k in knots), tuple(float(v) for v in costs)

