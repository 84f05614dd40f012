"""Shared input handling for ``decode_run_times``: the context sums of k
consecutive pure-decode steps, as float64, converted exactly as ``float()``
converts the ints of the equivalent StepBatch."""

from __future__ import annotations

import numpy as np

_INT64_MAX = 2**63 - 1


def decode_run_ctx(num_seqs: int, ctx_tokens: int, k: int) -> np.ndarray:
    """float64 array ``[ctx_tokens + j * num_seqs for j in range(k)]``.

    The sums are formed in int64 (exact) and then rounded to float64 once,
    like ``float(StepBatch.decode_ctx_tokens)``.
    """
    for key, value in (("num_seqs", num_seqs), ("ctx_tokens", ctx_tokens), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{key} must be a non-negative int, got {value!r}")
    num_seqs, ctx_tokens, k = int(num_seqs), int(ctx_tokens), int(k)
    if k == 0:
        return np.empty(0, dtype=np.float64)
    if ctx_tokens + (k - 1) * num_seqs > _INT64_MAX:
        raise OverflowError("decode context sum exceeds int64")
    ctx = np.arange(k, dtype=np.int64) * np.int64(num_seqs) + np.int64(ctx_tokens)
    return ctx.astype(np.float64)
