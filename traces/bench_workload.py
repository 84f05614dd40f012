"""A workload from `vllm bench serve` flags alone: count, rate, burstiness, lengths with a range ratio, tenants.

Follows vLLM's own semantics (``vllm/benchmarks/serve.py:get_request`` and
the random dataset in ``vllm/benchmarks/datasets/datasets.py``):

* inter-arrival gaps are gamma-distributed with shape ``burstiness`` and
  mean ``1 / request_rate`` (burstiness 1 is a Poisson process, below 1
  burstier, above 1 more regular; the coefficient of variation of the gaps
  is ``1 / sqrt(burstiness)``); like vLLM, the cumulative arrivals are then
  rescaled so the last one falls at exactly ``num_prompts / request_rate``;
  the first request arrives after one gap, as vLLM sleeps before it sends;
* ``request_rate = inf`` sends everything at t = 0; ``burstiness = inf``
  gives evenly spaced arrivals ``1 / request_rate`` apart;
* input and output lengths are integers drawn uniformly from
  ``[floor(len * (1 - r)), ceil(len * (1 + r))]`` (``r`` the range ratio);
* each request's tenant is drawn from the weights (one tenant "default"
  when none are given).

One numpy Generator per quantity, derived from ``seed``: the same flags
and seed give the same table, byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from driftsim.traces.schema import REQUEST_SCHEMA

__all__ = ["BenchWorkload", "arrival_times", "generate_bench", "with_arrivals"]


@dataclass(frozen=True)
class BenchWorkload:
    """The flags of ``vllm bench serve --dataset-name random`` that shape a workload."""

    num_prompts: int = 1000  # requests in the table
    request_rate: float = math.inf  # mean arrivals per second; inf: all at t = 0
    input_len: int = 1024  # mean prompt length, tokens
    output_len: int = 128  # mean generated length, tokens
    range_ratio: float = 0.0  # lengths uniform in [len*(1-r), len*(1+r)], 0 <= r < 1
    burstiness: float = 1.0  # gamma shape of the inter-arrival gaps; 1 = Poisson
    tenants: Mapping[str, float] = field(default_factory=lambda: {"default": 1.0})  # name -> weight
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(flag: str, expected: str, got) -> ValueError:
            return ValueError(f"{flag}: expected {expected}, got {got!r}")

        if not isinstance(self.num_prompts, int) or self.num_prompts < 1:
            raise bad("--num-prompts", "an integer >= 1", self.num_prompts)
        if not (self.request_rate > 0):  # also refuses nan
            raise bad("--request-rate", "a number > 0 or inf", self.request_rate)
        if not (self.burstiness > 0):
            raise bad("--burstiness", "a number > 0 or inf", self.burstiness)
        for flag, n in (("--input-len", self.input_len), ("--output-len", self.output_len)):
            if not isinstance(n, int) or n < 1:
                raise bad(flag, "an integer >= 1", n)
        if not (0 <= self.range_ratio < 1):
            raise bad("--range-ratio", "a number in [0, 1)", self.range_ratio)
        for flag, n in (("--input-len", self.input_len), ("--output-len", self.output_len)):
            if math.floor(n * (1 - self.range_ratio)) < 1:
                raise bad(flag, f"a length whose lower bound floor(len * (1 - {self.range_ratio})) is >= 1", n)
        if not self.tenants:
            raise bad("--tenants", "at least one tenant name", dict(self.tenants))
        for name, w in self.tenants.items():
            if not name or not (w > 0) or not math.isfinite(w):
                raise bad("--tenants", "non-empty names with finite weights > 0", dict(self.tenants))


def _rng(seed: int, stream: int) -> np.random.Generator:
    """One independent generator per quantity, so adding a tenant does not move the arrivals."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream])))


def arrival_times(num: int, request_rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Send times in seconds as ``vllm bench serve`` draws them (see the module docstring)."""
    if request_rate == math.inf:
        return np.zeros(num)
    if burstiness == math.inf:
        gaps = np.full(num, 1.0 / request_rate)
    else:
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=num)
    t = np.cumsum(gaps)
    if t[-1] > 0:
        t = t * ((num / request_rate) / t[-1])  # vLLM's rescaling: the last send at num / rate
    return t


def _lengths(mean: int, ratio: float, num: int, rng: np.random.Generator) -> np.ndarray:
    low, high = math.floor(mean * (1 - ratio)), math.ceil(mean * (1 + ratio))
    return rng.integers(low, high + 1, size=num, dtype=np.int64)


def generate_bench(w: BenchWorkload) -> pl.DataFrame:
    """The request table (:data:`driftsim.traces.schema.REQUEST_SCHEMA`) of workload ``w``."""
    n = w.num_prompts
    arrivals = arrival_times(n, w.request_rate, w.burstiness, _rng(w.seed, 0))
    names = list(w.tenants)
    p = np.array([w.tenants[t] for t in names], dtype=float)
    picks = _rng(w.seed, 3).choice(len(names), size=n, p=p / p.sum()) if len(names) > 1 else np.zeros(n, int)
    columns = {
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_s": arrivals,
        "tenant": np.array(names, dtype=object)[picks],
        "input_tokens": _lengths(w.input_len, w.range_ratio, n, _rng(w.seed, 1)),
        "output_tokens": _lengths(w.output_len, w.range_ratio, n, _rng(w.seed, 2)),
    }
    df = pl.DataFrame({c: pl.Series(c, columns[c], dtype=REQUEST_SCHEMA[c]) for c in columns})
    return df.with_columns(
        pl.lit(None, dtype).alias(c) for c, dtype in REQUEST_SCHEMA.items() if c not in columns
    ).select(list(REQUEST_SCHEMA))


def with_arrivals(df: pl.DataFrame, request_rate: float, burstiness: float = 1.0, seed: int = 0) -> pl.DataFrame:
    """``df`` (a request table) sent as ``vllm bench serve --request-rate --burstiness`` sends a dataset.

    Rows keep their order and every column but ``arrival_s``; for traces
    without send times (ShareGPT) or to replay a trace at another rate.
    """
    BenchWorkload(num_prompts=max(df.height, 1), request_rate=request_rate, burstiness=burstiness)  # checks flags
    t = arrival_times(df.height, request_rate, burstiness, _rng(seed, 0)) if df.height else np.zeros(0)
    return df.with_columns(pl.Series("arrival_s", t, dtype=pl.Float64))
