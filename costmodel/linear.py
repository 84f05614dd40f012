"""A cost model linear in the five batch quantities of a StepBatch.

The form measured profiles are fitted to (and, via :func:`costmodel.fit.linearize`,
a first-order stand-in for the roofline model).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from costmodel._runs import decode_run_ctx
from costmodel.batch import StepBatch
from costmodel.kv import KvCapacity

COEFFICIENTS = (
    "overhead_s",
    "per_prefill_token_s",
    "per_prefill_attn_s",
    "per_prefill_seq_s",
    "per_decode_seq_s",
    "per_decode_ctx_token_s",
)


class LinearCostModel:
    """step_time = overhead + a*P + b*A + c*Sp + d*D + e*C, in seconds.

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

    All coefficients are finite and >= 0 and ``overhead_s`` > 0, so the step
    time is > 0 and non-decreasing in every batch dimension.

    NOTE: the sum is evaluated left to right in exactly the order written
    above, on float64, both in :meth:`step_time` and (elementwise, numpy) in
    :meth:`decode_run_times`; that is what makes the two bit-identical.

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
        self.kv = kv
        self.name = name
        self.provenance = dict(provenance or {})

    @property
    def coefficients(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in COEFFICIENTS}

    # The one formula. Inputs are float64 (Python floats or numpy arrays).
    def _eval(self, P: Any, A: Any, Sp: Any, D: Any, C: Any) -> Any:
        return (
            self.overhead_s
            + self.per_prefill_token_s * P
            + self.per_prefill_attn_s * A
            + self.per_prefill_seq_s * Sp
            + self.per_decode_seq_s * D
            + self.per_decode_ctx_token_s * C
        )

    def step_time(self, batch: StepBatch) -> float:
        """Seconds one engine iteration running ``batch`` takes (> 0, finite)."""
        return self._eval(
            float(batch.prefill_tokens),
            float(batch.prefill_attn_tokens),
            float(batch.prefill_seqs),
            float(batch.decode_seqs),
            float(batch.decode_ctx_tokens),
        )

    def decode_run_times(self, num_seqs: int, ctx_tokens: int, k: int) -> np.ndarray:
        """Durations (s, float64[k]) of k pure-decode steps; element j equals
        ``step_time(StepBatch(decode_seqs=num_seqs, decode_ctx_tokens=ctx_tokens + j*num_seqs))``
        bit for bit."""
        ctx = decode_run_ctx(num_seqs, ctx_tokens, k)
        out = self._eval(0.0, 0.0, 0.0, float(num_seqs), ctx)
        return np.asarray(out, dtype=np.float64)

    def breakdown(self, batch: StepBatch) -> dict:
        """Seconds per term for reports; ``total_s == step_time(batch)``."""
        P, A, Sp = float(batch.prefill_tokens), float(batch.prefill_attn_tokens), float(batch.prefill_seqs)
        D, C = float(batch.decode_seqs), float(batch.decode_ctx_tokens)
        return {
            "overhead_s": self.overhead_s,
            "prefill_s": self.per_prefill_token_s * P + self.per_prefill_attn_s * A + self.per_prefill_seq_s * Sp,
            "decode_s": self.per_decode_seq_s * D + self.per_decode_ctx_token_s * C,
            "total_s": self._eval(P, A, Sp, D, C),
        }

    def kv_capacity_blocks(self, block_size: int) -> int:
        """KV blocks of ``block_size`` tokens (see :class:`costmodel.kv.KvCapacity`)."""
        if self.kv is None:
            raise ValueError(f"cost model {self.name!r} has no KV capacity configured")
        return self.kv.blocks(block_size)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "parameters": self.coefficients,
            "kv": None if self.kv is None else self.kv.describe(),
            "provenance": dict(self.provenance),
        }

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.coefficients.items())
        return f"LinearCostModel({params})"

