"""Week-long traces: the quantile sketch's bound, streamed traces and results, summary-only runs."""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl
import pytest

from driftsim.sim.config import ConfigError, EngineConfig
from driftsim.sim.metrics import LATENCY_METRICS, StreamingSummary, summarize
from driftsim.sim.run import simulate
from driftsim.sim.sketch import QuantileSketch
from driftsim.admission.controller import AdmissionConfig
from tests.factories import linear_cost, random_trace
from driftsim.traces.loaders import load_trace
from driftsim.traces.schema import TraceError
from driftsim.traces.stream import TraceStream, scan_trace
from driftsim.traces.writer import write_trace

ALPHA = 0.005
QS = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def _within(estimate: float, exact: float, alpha: float) -> bool:
    return abs(estimate - exact) <= alpha * abs(exact) * (1 + 1e-9) + 1e-12


# --------------------------------------------------------------------------- sketch


@pytest.mark.parametrize("seed", range(4))
def test_sketch_quantiles_within_alpha_of_numpy(seed):
    rng = np.random.default_rng(seed)
    data = np.concatenate([
        rng.lognormal(mean=rng.uniform(-6, 3), sigma=rng.uniform(0.1, 3), size=int(rng.integers(1, 20_000))),
        np.zeros(int(rng.integers(0, 50))),  # exact zeros (a queue wait of 0)
        np.full(int(rng.integers(0, 50)), 2.5),  # ties
    ])
    rng.shuffle(data)
    sketch = QuantileSketch(ALPHA)
    for part in np.array_split(data, 7):
        sketch.add(part)
    assert sketch.count == data.size
    assert sketch.mean == pytest.approx(data.mean(), rel=1e-12)
    for q in QS:
        exact = float(np.quantile(data, q))  # linear interpolation, as polars'
        assert _within(sketch.quantile(q), exact, ALPHA), (q, sketch.quantile(q), exact)


def test_sketch_merge_equals_sketch_of_all_data_and_keeps_the_bound():
    rng = np.random.default_rng(7)
    parts = [rng.exponential(scale, size) for scale, size in [(0.01, 5000), (30.0, 3000), (2000.0, 1)]]
    merged = QuantileSketch(ALPHA)
    for p in parts:
        s = QuantileSketch(ALPHA)
        s.add(p)
        merged.merge(s)
    whole = QuantileSketch(ALPHA)
    whole.add(np.concatenate(parts))
    data = np.concatenate(parts)
    for q in QS:
        assert merged.quantile(q) == whole.quantile(q)
        assert _within(merged.quantile(q), float(np.quantile(data, q)), ALPHA)
    assert (merged.count, merged.min, merged.max) == (data.size, data.min(), data.max())


def test_sketch_refuses_negative_nan_and_mismatched_merge():
    s = QuantileSketch(ALPHA)
    assert math.isnan(s.quantile(0.5))
    with pytest.raises(ValueError, match=">= 0"):
        s.add([1.0, -0.5])
    with pytest.raises(ValueError, match=">= 0"):
        s.add([float("nan")])
    with pytest.raises(ValueError, match="different parameters"):
        s.merge(QuantileSketch(0.01))


# --------------------------------------------------------------------------- runs

ENGINE = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, max_model_len=1024)
RUN = dict(cost=linear_cost(), engine=ENGINE, replicas=2, num_blocks=300)


def _trace(n: int = 1500, seed: int = 3) -> pl.DataFrame:
    """Multi-tenant, with SLOs, caps, refusals (prompt >= max_model_len) and ties in arrival time."""
    tr = random_trace(n, rate=6.0, seed=seed, max_in=1100, max_out=300)
    return tr.with_columns(
        arrival_s=(pl.col("arrival_s") * 10).round(0) / 10,
        slo_e2e_s=pl.when(pl.col("tenant") != "c").then(pl.lit(20.0)),
        slo_ttft_s=pl.when(pl.col("tenant") == "a").then(pl.lit(2.0)),
        max_tokens=pl.when(pl.col("tenant") == "b").then(pl.lit(50, pl.Int64)),
    )


@pytest.mark.parametrize("horizon", [None, 150.0])
def test_streamed_results_are_bit_identical_to_in_memory(tmp_path, horizon):
    trace = _trace()
    memory = simulate(trace, horizon_s=horizon, **RUN)
    streamed = simulate(trace, horizon_s=horizon, results_path=tmp_path / "r.parquet", chunk_rows=97, **RUN)
    assert streamed.requests is None and streamed.requests_path == tmp_path / "r.parquet"
    back = pl.read_parquet(tmp_path / "r.parquet")
    assert back.schema == memory.requests.schema
    assert back.equals(memory.requests, null_equal=True)
    assert pq_row_groups(tmp_path / "r.parquet") == math.ceil(trace.height / 97)
    statuses = set(memory.requests["status"].unique().to_list())
    assert {"ok", "rejected"} <= statuses and (horizon is None or "unfinished" in statuses)
    # and from a file read in chunks (a different chunking again)
    write_trace(trace, tmp_path / "t.parquet")
    from_file = simulate(TraceStream(tmp_path / "t.parquet", chunk_rows=64), horizon_s=horizon,
                         results_path=tmp_path / "r2.parquet", chunk_rows=97, **RUN)
    assert pl.read_parquet(from_file.requests_path).equals(memory.requests, null_equal=True)
    assert from_file.replicas == memory.replicas


def pq_row_groups(path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).num_row_groups


_SKETCHED = re.compile(r"^[a-z0-9]+_p\d+_(ms|s)$")


def _assert_summary_matches(approx: dict, exact: dict) -> None:
    assert approx["span_s"] == exact["span_s"]
    assert approx["busy_fraction"] == exact["busy_fraction"]
    assert approx["percentiles"] == {"method": "log-bucket sketch", "relative_error": ALPHA}
    assert set(approx["tenants"]) == set(exact["tenants"])
    for name in ["overall", *exact["tenants"]]:
        a = approx["overall"] if name == "overall" else approx["tenants"][name]
        e = exact["overall"] if name == "overall" else exact["tenants"][name]
        assert list(a) == list(e)  # same fields, same order
        for key, value in e.items():
            if key in LATENCY_METRICS:
                assert a[key]["mean"] == pytest.approx(value["mean"], rel=1e-9, nan_ok=True)
                for stat in ("p50", "p90", "p99"):
                    assert _within(a[key][stat], value[stat], ALPHA) or (math.isnan(a[key][stat]) and math.isnan(value[stat]))
            elif _SKETCHED.match(key):  # vllm bench serve-style percentiles, from the same sketches
                assert _within(a[key], value, ALPHA) or (math.isnan(a[key]) and math.isnan(value)), key
            elif key.endswith(("_mean_ms", "_mean_s")):
                assert a[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
            elif isinstance(value, float):
                assert a[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
            else:
                assert a[key] == value, key


@pytest.mark.parametrize("horizon", [None, 150.0])
def test_summary_only_matches_exact_summary_within_the_bound(tmp_path, horizon):
    trace = _trace(seed=5)
    exact = simulate(trace, horizon_s=horizon, **RUN)
    write_trace(trace, tmp_path / "t.csv")
    approx = simulate(TraceStream(tmp_path / "t.csv", chunk_rows=200), horizon_s=horizon, summary_only=True, **RUN)
    assert approx.requests is None and approx.requests_path is None
    assert approx.summary["overall"]["completed"] > 100
    _assert_summary_matches(approx.summary, exact.summary)


def test_streaming_summary_of_any_split_matches_summarize():
    requests = simulate(_trace(seed=9), **RUN).requests
    exact = summarize(requests, [{"busy_s": 1.0}])
    acc = StreamingSummary()
    for part in (requests.slice(0, 10), requests.slice(10, 700), requests.slice(710, None)):
        acc.add(part)
    _assert_summary_matches(acc.result([{"busy_s": 1.0}]), exact)


def test_streamed_modes_refuse_estimators_that_need_the_whole_trace(tmp_path):
    with pytest.raises(ConfigError, match="oracle"):
        simulate(_trace(50), summary_only=True, admission=AdmissionConfig(estimator="learned"), **RUN)
    with pytest.raises(ConfigError, match="results_path"):
        simulate(_trace(50), summary_only=True, results_path=tmp_path / "r.parquet", **RUN)


# --------------------------------------------------------------------------- lazy trace reading


def test_trace_stream_equals_loader_with_transforms(tmp_path):
    trace = _trace(700)
    write_trace(trace, tmp_path / "t.parquet")
    stream = TraceStream(tmp_path / "t.parquet", chunk_rows=50, rate_scale=2.0, duration_s=40.0, max_requests=300)
    expected = load_trace(tmp_path / "t.parquet").with_columns(pl.col("arrival_s") / 2.0)
    expected = expected.filter(pl.col("arrival_s") < 40.0).head(300)
    got = pl.concat(list(stream))
    assert stream.rows == got.height == expected.height
    assert got.equals(expected, null_equal=True)
    assert pl.concat(list(stream)).equals(got)  # iterable again


def test_trace_stream_errors_name_file_row_and_field(tmp_path):
    trace = _trace(300)
    bad = tmp_path / "late.csv"
    trace.with_columns(arrival_s=pl.when(pl.int_range(pl.len()) == 200).then(0.0).otherwise("arrival_s")).drop("prefix_ids").write_csv(bad)
    with pytest.raises(TraceError, match=r"late.csv, row 201, field 'arrival_s': .*arrival order"):
        TraceStream(bad, chunk_rows=64)
    dup = tmp_path / "dup.parquet"
    trace.with_columns(request_id=pl.when(pl.col("request_id") == 250).then(7).otherwise("request_id")).write_parquet(dup)
    with pytest.raises(TraceError, match=r"dup.parquet, row 251, field 'request_id': duplicate request id 7, first seen at row 8"):
        TraceStream(dup, chunk_rows=64)
    neg = tmp_path / "neg.csv"
    trace.with_columns(input_tokens=pl.when(pl.col("request_id") == 130).then(-3).otherwise("input_tokens")).drop("prefix_ids").write_csv(neg)
    stream = TraceStream(neg, chunk_rows=64)  # the first pass checks ids and arrivals only
    with pytest.raises(TraceError, match=r"neg.csv, row 131, field 'input_tokens'"):
        list(stream)
    with pytest.raises(TraceError, match="native Parquet or CSV, not the azure format"):
        scan_trace("traces/data/azure2023_conv.csv")


# --------------------------------------------------------------------------- command line


def test_cli_stream_writes_the_same_rows_and_summary_only_writes_none(tmp_path):
    import json

    from typer.testing import CliRunner

    from driftsim.cli.main import app

    trace = _trace(400).with_columns(tenant=pl.col("tenant").replace({"a": "premium", "b": "standard", "c": "batch"}))
    write_trace(trace, tmp_path / "t.parquet")
    base = ["simulate", "--trace", str(tmp_path / "t.parquet"), "--mode", "continuous", "--replicas", "2",
            "--profile", "a100-llama-3.1-8b", "--max-model-len", "1024"]
    runner = CliRunner()
    runs = {}
    for name, flags in {"memory": [], "stream": ["--stream"], "summary": ["--summary-only"]}.items():
        res = runner.invoke(app, [*base, *flags, "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())["summary"]
    assert "streaming sketch" in res.output
    assert not (tmp_path / "summary" / "requests.parquet").exists()
    memory = pl.read_parquet(tmp_path / "memory" / "requests.parquet")
    assert memory.filter(pl.col("slo_e2e_s").is_not_null()).height > 0  # the default scenario's tenant SLOs applied
    assert pl.read_parquet(tmp_path / "stream" / "requests.parquet").equals(memory, null_equal=True)
    for name in ("stream", "summary"):
        _assert_summary_matches(runs[name], runs["memory"])
    res = runner.invoke(app, [*base, "--stream", "--tenants", "x=1,y=1", "--out", str(tmp_path / "bad")])
    assert res.exit_code != 0 and "assign_tenants" in res.output


def test_rows_read_a_block_at_a_time_give_the_same_run_for_any_block_size(monkeypatch):
    """Arrivals read the trace's columns a block of rows at a time; block edges must not show in the results
    (prefix identity, SLOs, priorities, max_tokens caps and refused rows on both sides of every edge)."""
    import driftsim.sim.run as run_module

    n = 1_000
    trace = random_trace(n, rate=40.0, seed=11, max_in=1_500)
    rng = np.random.default_rng(12)
    prompts = trace["input_tokens"].to_numpy()
    has_ids = rng.random(n) < 0.5
    ids = [[int(g) * 100 + m for m in range(int(p) // 64)] if h else None
           for g, p, h in zip(rng.integers(0, 4, n), prompts, has_ids)]
    trace = trace.with_columns(
        pl.Series("prefix_ids", ids, dtype=pl.List(pl.Int64)),
        pl.Series("prefix_block_tokens", [64 if h else None for h in has_ids], dtype=pl.Int64),
        pl.Series("slo_e2e_s", [float(x) if x < 15 else None for x in rng.uniform(1, 30, n)], dtype=pl.Float64),
        pl.Series("priority", rng.integers(0, 3, n), dtype=pl.Int64),
        pl.Series("max_tokens", [int(x) if x < 15 else None for x in rng.integers(1, 50, n)], dtype=pl.Int64),
    )
    engine = EngineConfig(mode="continuous", max_num_seqs=32, max_num_batched_tokens=1024, max_model_len=1_200)
    kw = dict(cost=linear_cost(), engine=engine, num_blocks=900)
    whole = simulate(trace, **kw)
    assert (whole.requests["status"] == "rejected").sum() > 0 and whole.replicas[0]["prefix_hit_tokens"] > 0
    monkeypatch.setattr(run_module._Release, "BLOCK", 7)
    small = simulate(trace, **kw)
    assert small.requests.equals(whole.requests)
    assert small.summary == whole.summary or str(small.summary) == str(whole.summary)  # NaN-safe
