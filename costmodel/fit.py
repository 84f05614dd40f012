"""Fitting a :class:`LinearCostModel` to another cost model (``linearize``).

Used to derive the bundled ``*-linear`` profiles from their roofline
originals; ``python -m costmodel linearize PROFILE`` prints the fitted
``[cost_model]`` table and its error for a profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from costmodel.base import CostModel
from costmodel.batch import StepBatch, chunk_attn_tokens
from costmodel.linear import COEFFICIENTS, LinearCostModel


def batch_grid(*, max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int) -> list[StepBatch]:
    """A fixed, deterministic grid of batches an engine with these limits runs.

    - pure decode: 1, 2, 4, ... up to ``max_num_seqs`` sequences, each with a
      context of 16, 64, 256, 512, 1024, 2048, 4096, 8192 tokens (up to
      ``max_model_len``);
    - pure prefill: one or four sequences sharing a chunk of 16 ... up to
      ``max_num_batched_tokens`` tokens, after 0 or more computed tokens
      (chunked prefill), within ``max_model_len``;
    - mixed: 8, 32 or 128 decode sequences at 512 context plus one prefill
      chunk filling the rest of the token budget (at most 512 tokens).
    """
    seqs = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if n <= max_num_seqs]
    ctxs = [c for c in (16, 64, 256, 512, 1024, 2048, 4096, 8192) if c <= max_model_len]
    chunks = [n for n in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192) if n <= max_num_batched_tokens]
    priors = (0, 256, 1024, 4096)
    grid: list[StepBatch] = []
    for n in seqs:
        for c in ctxs:
            grid.append(StepBatch(decode_seqs=n, decode_ctx_tokens=n * c))
    for n in chunks:
        for split in (1, 4):
            if n % split:
                continue
            per_seq = n // split
            for prior in priors:
                if prior + per_seq > max_model_len:
                    continue
                grid.append(StepBatch(prefill_tokens=n, prefill_seqs=split,
                                      prefill_attn_tokens=split * chunk_attn_tokens(prior, per_seq)))
    for d in (8, 32, 128):
        if d > max_num_seqs or d >= max_num_batched_tokens:
            continue
        chunk = min(512, max_num_batched_tokens - d, max_model_len)
        grid.append(StepBatch(decode_seqs=d, decode_ctx_tokens=d * min(512, max_model_len),
                              prefill_tokens=chunk, prefill_seqs=1,
                              prefill_attn_tokens=chunk_attn_tokens(0, chunk)))
    return grid


@dataclass(frozen=True)
class LinearFit:
    """A fitted linear model and how far it is from the model it imitates."""

    model: LinearCostModel
    rel_err_mean: float  # mean |fit - target| / target over the grid
    rel_err_max: float  # worst |fit - target| / target over the grid
    num_points: int


def _features(batches: list[StepBatch]) -> np.ndarray:
    return np.array([[1.0, b.prefill_tokens, b.prefill_attn_tokens, b.prefill_seqs,
                      b.decode_seqs, b.decode_ctx_tokens] for b in batches], dtype=np.float64)


def linearize(target: CostModel, batches: list[StepBatch], *, name: str = "linear",
              provenance: dict | None = None) -> LinearFit:
    """Least-squares fit of the six linear coefficients to ``target.step_time``
    on ``batches``, with every coefficient >= 0.

    The fit minimises relative error (each row divided by its target time),
    so short decode steps weigh as much as long prefills. Columns are scaled
    to unit norm before the non-negative solve (scikit-learn's
    ``LinearRegression(positive=True)``) and unscaled after. The returned
    model shares the target's KV capacity.
    """
    from sklearn.linear_model import LinearRegression  # slow import, only needed here

    if not batches:
        raise ValueError("linearize needs at least one batch")
    X = _features(batches)
    y = np.array([target.step_time(b) for b in batches], dtype=np.float64)
    Xw = X / y[:, None]
    scale = np.linalg.norm(Xw, axis=0)
    scale[scale == 0] = 1.0
    reg = LinearRegression(positive=True, fit_intercept=False)
    reg.fit(Xw / scale, np.ones_like(y))
    coef = reg.coef_ / scale
    if not coef[0] > 0:
        raise ValueError("fitted overhead_s is not > 0; the grid cannot pin the constant term")
    values = {key: float(v) for key, v in zip(COEFFICIENTS, coef)}
    fitted = LinearCostModel(**values, kv=getattr(target, "kv", None), name=name, provenance=provenance)
    pred = np.array([fitted.step_time(b) for b in batches])
    rel = np.abs(pred - y) / y
    return LinearFit(model=fitted, rel_err_mean=float(rel.mean()), rel_err_max=float(rel.max()),
                     num_points=len(batches))


def linearize_profile(name_or_path: str) -> LinearFit:
    """Linearise a profile's cost model on the grid of its engine defaults."""
    from costmodel.profiles import load_profile

    profile = load_profile(name_or_path)
    d = profile.engine_defaults
    grid = batch_grid(max_num_seqs=d["max_num_seqs"], max_num_batched_tokens=d["max_num_batched_tokens"],
                      max_model_len=d["max_model_len"])
    return linearize(profile.cost_model, grid, name=f"{profile.name}-linear")
