"""Synthetic multi-tenant workloads: per-tenant arrival processes and length distributions, merged by arrival.

Each tenant draws from its own random streams, derived from the run's seed
and the tenant's name, one stream each for arrivals, input and output
lengths. So the same seed gives the same table, and adding a tenant or
changing one tenant's lengths leaves every other stream as it was.
Everything is vectorised numpy: a million requests take well under a second.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import KW_ONLY, dataclass, field
from typing import Literal

import numpy as np
import polars as pl

from driftsim.traces.schema import REQUEST_SCHEMA

__all__ = ["LengthDist", "TenantLoad", "generate", "lengths_from_trace"]


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution; samples are integers in [min, max].

    kind:
      "constant"  -> `value`
      "uniform"   -> integers in [low, high], inclusive
      "lognormal" -> either `mean` and `cv` (of the unclipped distribution) or
                     `mu` and `sigma` (of log length); rounded, then clipped
                     to [min, max], which shifts the mean a little when the
                     clip bites
      "empirical" -> resampled with replacement from `values` (e.g. a real
                     trace's lengths; see lengths_from_trace)
    Prefer the constructors: LengthDist.lognormal(mean=512, cv=1.5, max=8192).
    """

    kind: Literal["constant", "uniform", "lognormal", "empirical"]
    value: int | None = None
    low: int | None = None
    high: int | None = None
    mean: float | None = None
    cv: float | None = None
    mu: float | None = None
    sigma: float | None = None
    min: int = 1
    max: int | None = None
    values: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.min < 1 or (self.max is not None and self.max < self.min):
            raise ValueError(f"need 1 <= min <= max, got min={self.min}, max={self.max}")
        if self.kind == "constant":
            if self.value is None or self.value < 1:
                raise ValueError(f"constant lengths need value >= 1, got {self.value}")
        elif self.kind == "uniform":
            if self.low is None or self.high is None or not (1 <= self.low <= self.high):
                raise ValueError(f"uniform lengths need 1 <= low <= high, got low={self.low}, high={self.high}")
        elif self.kind == "lognormal":
            by_moments = self.mean is not None and self.cv is not None
            by_log = self.mu is not None and self.sigma is not None
            if by_moments == by_log:
                raise ValueError("lognormal lengths need either mean and cv, or mu and sigma (not both)")
            if by_moments and not (self.mean > 0 and self.cv >= 0):
                raise ValueError(f"lognormal lengths need mean > 0 and cv >= 0, got mean={self.mean}, cv={self.cv}")
            if by_log and not self.sigma >= 0:
                raise ValueError(f"lognormal lengths need sigma >= 0, got {self.sigma}")
        elif self.kind == "empirical":
            v = None if self.values is None else np.asarray(self.values)
            if v is None or v.ndim != 1 or v.size == 0:
                raise ValueError("empirical lengths need a non-empty 1-d array of values")
            if not np.issubdtype(v.dtype, np.integer) or v.min() < 1:
                raise ValueError("empirical length values must be integers >= 1")
            object.__setattr__(self, "values", v.astype(np.int64, copy=False))
        else:
            raise ValueError(f"unknown length kind {self.kind!r}; expected constant, uniform, lognormal or empirical")

    @classmethod
    def constant(cls, value: int) -> LengthDist:
        return cls("constant", value=value)

    @classmethod
    def uniform(cls, low: int, high: int) -> LengthDist:
        return cls("uniform", low=low, high=high)

    @classmethod
    def lognormal(
        cls,
        *,
        mean: float | None = None,
        cv: float | None = None,
        mu: float | None = None,
        sigma: float | None = None,
        min: int = 1,
        max: int | None = None,
    ) -> LengthDist:
        return cls("lognormal", mean=mean, cv=cv, mu=mu, sigma=sigma, min=min, max=max)

    @classmethod
    def empirical(cls, values: np.ndarray | list[int]) -> LengthDist:
        return cls("empirical", values=np.asarray(values))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` lengths as int64."""
        if self.kind == "constant":
            out = np.full(n, self.value, dtype=np.int64)
        elif self.kind == "uniform":
            out = rng.integers(self.low, self.high, size=n, endpoint=True, dtype=np.int64)
        elif self.kind == "lognormal":
            if self.mu is not None:
                mu, sigma = self.mu, self.sigma
            else:
                sigma = math.sqrt(math.log1p(self.cv**2))
                mu = math.log(self.mean) - sigma**2 / 2
            x = np.rint(rng.lognormal(mu, sigma, size=n))
            hi = self.max if self.max is not None else np.iinfo(np.int64).max // 2
            out = np.clip(x, self.min, hi).astype(np.int64)
        else:
            out = self.values[rng.integers(0, self.values.size, size=n)]
        if self.kind != "lognormal" and (self.min > 1 or self.max is not None):
            out = np.clip(out, self.min, self.max if self.max is not None else None)
        return out


@dataclass(frozen=True)
class TenantLoad:
    """One tenant's arrival process and request shape.

    arrival: "poisson" (exponential gaps, mean 1/rate_per_s); "gamma" (gamma
    gaps, mean 1/rate_per_s, coefficient of variation `cv`: > 1 is burstier
    than Poisson, 0 is evenly spaced); "uniform" (gaps uniform in
    `gap_range`, default (0, 2/rate_per_s)). For "uniform" with a gap_range,
    rate_per_s may be None; if given it must match the range's mean gap.
    """

    name: str
    rate_per_s: float | None
    _: KW_ONLY
    input: LengthDist
    output: LengthDist
    arrival: Literal["poisson", "gamma", "uniform"] = "poisson"
    cv: float = 1.0
    gap_range: tuple[float, float] | None = None
    priority: int | None = None
    slo_ttft_s: float | None = None
    slo_e2e_s: float | None = None
    # shared system prompts: each request starts with one of `system_prompts` prompts of
    # `system_prompt_tokens` tokens, drawn with Zipf popularity (prompt k has weight 1 / k**zipf;
    # 0 = uniform), then its own input (`input`); its prefix ids name the prompt's full blocks
    system_prompts: int = 0
    system_prompt_tokens: int = 0
    system_prompt_zipf: float = 1.0
    # multi-turn sessions: each arrival starts a session of `turns` turns (a length distribution);
    # turn k+1 is sent an exponential think time (mean `think_s`) after turn k's answer completes,
    # its prompt the conversation so far plus its new `input`
    turns: LengthDist | None = None
    think_s: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"tenant name must be a non-empty string, got {self.name!r}")
        if self.arrival not in ("poisson", "gamma", "uniform"):
            raise ValueError(
                f"tenant {self.name!r}: unknown arrival {self.arrival!r}; expected poisson, gamma or uniform"
            )
        if self.arrival == "uniform" and self.gap_range is not None:
            lo, hi = self.gap_range
            if not (0 <= lo <= hi and hi > 0 and math.isfinite(hi)):
                raise ValueError(f"tenant {self.name!r}: gap_range needs 0 <= lo <= hi, hi > 0, got {self.gap_range}")
            implied = 2.0 / (lo + hi)
            if self.rate_per_s is not None and not math.isclose(self.rate_per_s, implied, rel_tol=1e-6):
                raise ValueError(
                    f"tenant {self.name!r}: gap_range {self.gap_range} means {implied:g} requests/s, "
                    f"but rate_per_s is {self.rate_per_s}; give one or make them agree"
                )
        elif self.rate_per_s is None or not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise ValueError(f"tenant {self.name!r}: rate_per_s must be a finite number > 0, got {self.rate_per_s!r}")
        if self.arrival == "gamma" and not (math.isfinite(self.cv) and self.cv >= 0):
            raise ValueError(f"tenant {self.name!r}: cv must be >= 0, got {self.cv}")
        for v in (self.slo_ttft_s, self.slo_e2e_s):
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"tenant {self.name!r}: SLOs must be finite and > 0, got {v}")
        for key in ("system_prompts", "system_prompt_tokens"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"tenant {self.name!r}: {key} must be an integer >= 0, got {v!r}")
        if (self.system_prompts > 0) != (self.system_prompt_tokens > 0):
            raise ValueError(f"tenant {self.name!r}: give system_prompts and system_prompt_tokens together "
                             f"(got {self.system_prompts} prompts of {self.system_prompt_tokens} tokens)")
        if self.turns is not None and not isinstance(self.turns, LengthDist):
            raise ValueError(f"tenant {self.name!r}: turns must be a LengthDist, got {self.turns!r}")
        if not (isinstance(self.think_s, (int, float)) and math.isfinite(self.think_s) and self.think_s >= 0):
            raise ValueError(f"tenant {self.name!r}: think_s must be a finite number >= 0, got {self.think_s!r}")
        if not (math.isfinite(self.system_prompt_zipf) and self.system_prompt_zipf >= 0):
            raise ValueError(f"tenant {self.name!r}: system_prompt_zipf must be >= 0, got {self.system_prompt_zipf}")

    @property
    def mean_rate(self) -> float:
        """Requests per second this tenant's process produces on average."""
        if self.arrival == "uniform" and self.gap_range is not None:
            return 2.0 / sum(self.gap_range)
        return float(self.rate_per_s)

    def gaps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` inter-arrival gaps in seconds."""
        mean = 1.0 / self.mean_rate
        if self.arrival == "poisson":
            return rng.exponential(mean, size=n)
        if self.arrival == "gamma":
            if self.cv == 0:
                return np.full(n, mean)
            shape = 1.0 / self.cv**2
            return rng.gamma(shape, mean / shape, size=n)
        lo, hi = self.gap_range if self.gap_range is not None else (0.0, 2.0 * mean)
        return rng.uniform(lo, hi, size=n)


#: tokens each synthetic prefix id covers (vLLM's default KV block size; any engine block size maps onto it)
PREFIX_BLOCK_TOKENS = 16


def _streams(seed: int, name: str) -> tuple[np.random.Generator, ...]:
    """Arrival, input, output, system-prompt and session generators for one tenant, keyed by its name."""
    key = zlib.crc32(name.encode())
    return tuple(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, i))) for i in range(5))


def _system_prompts(t: TenantLoad, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list | None]:
    """Extra prompt tokens and prefix ids of ``n`` requests of tenant ``t``: each one's system prompt,
    drawn with Zipf popularity. Ids name the prompt's full blocks of :data:`PREFIX_BLOCK_TOKENS`
    (tenant, prompt and block in one integer, so tenants never share); None without system prompts."""
    if t.system_prompts == 0:
        return np.zeros(n, dtype=np.int64), None
    weights = 1.0 / np.arange(1, t.system_prompts + 1, dtype=np.float64) ** t.system_prompt_zipf
    pick = rng.choice(t.system_prompts, size=n, p=weights / weights.sum())
    blocks = t.system_prompt_tokens // PREFIX_BLOCK_TOKENS
    base = (zlib.crc32(t.name.encode()) & 0x7FFFFFFF) << 31
    ids_of = [[base | (k << 20) | m for m in range(blocks)] for k in range(t.system_prompts)]
    return np.full(n, t.system_prompt_tokens, dtype=np.int64), [ids_of[k] for k in pick]


def _arrivals(t: TenantLoad, rng: np.random.Generator, horizon: float) -> np.ndarray:
    """Arrival times in [0, horizon): gaps drawn in chunks until the horizon is passed."""
    expected = t.mean_rate * horizon
    chunk = int(expected + 6 * math.sqrt(expected) * max(1.0, t.cv if t.arrival == "gamma" else 1.0) + 16)
    times, last = [], 0.0
    while True:
        c = last + np.cumsum(t.gaps(rng, chunk))
        times.append(c)
        last = float(c[-1])
        if last >= horizon:
            break
    out = np.concatenate(times)
    return out[: np.searchsorted(out, horizon, side="left")]


def generate(
    tenants: list[TenantLoad],
    *,
    duration_s: float | None = None,
    num_requests: int | None = None,
    seed: int,
) -> pl.DataFrame:
    """A request table from the tenants' processes, merged by arrival (ties: tenant order).

    Stops at `duration_s` (arrivals in [0, duration_s)), at `num_requests`
    (the first that many of the merged stream), or at whichever comes first
    when both are given. request_id is 0..n-1 in arrival order.
    """
    if not tenants:
        raise ValueError("need at least one TenantLoad")
    names = [t.name for t in tenants]
    if len(set(names)) != len(names):
        raise ValueError(f"tenant names must be distinct, got {names}")
    if duration_s is None and num_requests is None:
        raise ValueError("give duration_s, num_requests, or both")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
    if num_requests is not None and num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")

    total_rate = sum(t.mean_rate for t in tenants)
    if duration_s is not None:
        horizon = duration_s
        if num_requests is not None:
            horizon = min(horizon, 1.2 * num_requests / total_rate + 10.0 / total_rate)
    else:
        horizon = 1.2 * num_requests / total_rate + 10.0 / total_rate
    while True:
        # Re-drawing from fresh generators with a longer horizon extends each stream with the same values.
        streams = [_streams(seed, t.name) for t in tenants]
        arrivals = [_arrivals(t, s[0], horizon) for t, s in zip(tenants, streams)]
        count = sum(a.size for a in arrivals)
        if num_requests is None or count >= num_requests or (duration_s is not None and horizon >= duration_s):
            break
        horizon *= 2
        if duration_s is not None:
            horizon = min(horizon, duration_s)

    parts = [_tenant_rows(t, s, a) for t, s, a in zip(tenants, streams, arrivals)]
    owner = np.repeat(np.arange(len(tenants), dtype=np.uint32), [p["arrival_s"].size for p in parts])
    arrival = np.concatenate([p["arrival_s"] for p in parts])
    order = np.lexsort((owner, arrival))  # by arrival, then tenant order; stable within a tenant (turn order)
    if num_requests is not None:
        order = order[:num_requests]
    owner_s = pl.Series(owner[order])

    def per_tenant(values: list, dtype: pl.DataType) -> pl.Series:
        return pl.Series(values, dtype=dtype).gather(owner_s)

    def column(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts])[order]

    ids = [x for p in parts for x in p["prefix_ids"]]
    n = order.size
    return pl.DataFrame(
        {
            "request_id": np.arange(n, dtype=np.int64),
            "arrival_s": arrival[order],
            "tenant": per_tenant(names, pl.String),
            "input_tokens": column("input_tokens"),
            "output_tokens": column("output_tokens"),
            "prompt": pl.repeat(None, n, dtype=pl.String, eager=True),
            "max_tokens": pl.repeat(None, n, dtype=pl.Int64, eager=True),
            "priority": per_tenant([t.priority for t in tenants], pl.Int64),
            "slo_ttft_s": per_tenant([t.slo_ttft_s for t in tenants], pl.Float64),
            "slo_e2e_s": per_tenant([t.slo_e2e_s for t in tenants], pl.Float64),
            "prefix_ids": pl.Series([ids[i] for i in order], dtype=pl.List(pl.Int64)),
            "prefix_block_tokens": pl.Series([None if ids[i] is None else PREFIX_BLOCK_TOKENS for i in order],
                                             dtype=pl.Int64),
            "session_id": pl.Series(column("session_id"), dtype=pl.Int64).set(pl.Series(column("turn") == 0), None),
            "turn": pl.Series(column("turn"), dtype=pl.Int64).set(pl.Series(column("turn") == 0), None),
            "think_s": pl.Series(column("think_s"), dtype=pl.Float64).fill_nan(None),
        },
        schema=REQUEST_SCHEMA,
    )


def _tenant_rows(t: TenantLoad, streams: tuple[np.random.Generator, ...], starts: np.ndarray) -> dict:
    """One tenant's rows, in its own arrival order: one request per arrival, or with ``turns`` one
    session per arrival, its turns in order (arrival_s: the session's start, the earliest any turn
    may be sent; the closed loop of :mod:`driftsim.sim.sessions` sends the rest).

    A turn's prompt is the whole conversation so far: system prompt, earlier inputs and answers,
    then its own new input; its prefix ids name the system prompt's blocks, then the session's own
    through its answer (so the next turn, which repeats the answer, finds it cached as in vLLM).
    """
    n = starts.size
    sys_tokens, sys_ids = _system_prompts(t, streams[3], n)
    if t.turns is None:
        new_in = t.input.sample(streams[1], n)
        out = t.output.sample(streams[2], n)
        zero = np.zeros(n, dtype=np.int64)  # turn 0: no session (null in the table)
        return {"arrival_s": starts, "input_tokens": new_in + sys_tokens, "output_tokens": out,
                "prefix_ids": sys_ids if sys_ids is not None else [None] * n,
                "session_id": zero, "turn": zero, "think_s": np.full(n, np.nan)}
    turns = t.turns.sample(streams[4], n)
    total = int(turns.sum())
    new_in = t.input.sample(streams[1], total)
    out = t.output.sample(streams[2], total)
    think = streams[4].exponential(t.think_s, total) if t.think_s > 0 else np.zeros(total)
    session = np.repeat(np.arange(n), turns)
    first = np.concatenate(([0], np.cumsum(turns)[:-1]))
    turn = np.arange(total) - np.repeat(first, turns) + 1
    think[turn == 1] = 0.0
    # prompt of turn k: the previous prompt and its answer, then the new input (turn 1: system prompt + input)
    prompt = np.empty(total, dtype=np.int64)
    base = (zlib.crc32(t.name.encode()) & 0x7FFFFFFF) << 24
    ids: list = []
    for i in range(total):
        j = session[i]
        prompt[i] = sys_tokens[j] + new_in[i] if turn[i] == 1 else prompt[i - 1] + out[i - 1] + new_in[i]
        shared = sys_ids[j] if sys_ids is not None else []
        own = range(len(shared), -(-int(prompt[i] + out[i]) // PREFIX_BLOCK_TOKENS))
        ids.append(shared + [hash((base + j, m)) for m in own])
    return {"arrival_s": starts[session], "input_tokens": prompt, "output_tokens": out, "prefix_ids": ids,
            "session_id": base + session, "turn": turn, "think_s": think}


def lengths_from_trace(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The (input, output) token lengths of a trace, as int64 arrays for LengthDist.empirical."""
    return df["input_tokens"].to_numpy().astype(np.int64), df["output_tokens"].to_numpy().astype(np.int64)
