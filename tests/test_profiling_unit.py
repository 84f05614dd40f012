"""Profiling without an engine: plan sizing, batch bookkeeping, the HTTP
client seam (httpx.MockTransport), the measurement file, the fit, the CLI's
error paths."""

from __future__ import annotations

import asyncio
import json
import math
import time

import httpx
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from driftsim.cli.profiling_cmds import _standalone_app
from driftsim.costmodel.batch import StepBatch, chunk_attn_tokens
from driftsim.costmodel.fit import FitError, decode_repeatability, fit_measurements, write_profile
from driftsim.costmodel.linear import LinearCostModel
from driftsim.costmodel.profiles import load_profile
from driftsim.profiling.http import (
    EndpointError,
    HttpConfig,
    HttpDriver,
    OpenAIClient,
    StreamResult,
    cache_config,
    lockstep_decode_steps,
    parse_prometheus,
)
from driftsim.profiling.measurements import (
    MeasurementError,
    MeasurementWriter,
    empty_row,
    load_measurements,
    phase_of,
    to_frame,
    write_measurements,
)
from driftsim.profiling.offline import _count_cpus, cpu_bind_default, derive_batch
from driftsim.profiling.plan import EngineLimits, ProbePoint, _ranks, build_plan, candidate_points
from driftsim.profiling.sweep import run_sweep
from driftsim.profiling.tiny_model import TinyModelSpec, model_dir_for

runner = CliRunner()
LIMITS = EngineLimits(max_num_seqs=128, max_num_batched_tokens=2048, max_model_len=2048, kv_tokens=65536)
TRUE = LinearCostModel(overhead_s=0.010, per_prefill_token_s=4e-4, per_prefill_attn_s=1e-7,
                       per_prefill_seq_s=2e-4, per_decode_seq_s=5e-4, per_decode_ctx_token_s=1.5e-6)


# ---- factories -------------------------------------------------------------------

def synthetic_rows(model: LinearCostModel = TRUE, *, points: int = 60, noise: float = 0.01, seed: int = 0,
                   max_decode_seqs: int = 128) -> list[dict]:
    """Steps of a plausible sweep timed by ``model`` with multiplicative noise (decode batches log-uniform
    up to ``max_decode_seqs`` when it is not 128, so small batches are well covered)."""
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(points):
        kind = ("prefill", "decode", "mixed")[pid % 3]
        for step in range(6):
            if kind == "prefill":
                n, seqs = int(rng.integers(16, 2048)), int(rng.integers(1, 8))
                b = StepBatch(prefill_tokens=n, prefill_seqs=seqs,
                              prefill_attn_tokens=seqs * chunk_attn_tokens(int(rng.integers(0, 512)), n // seqs))
            elif kind == "decode":
                d = (int(rng.integers(1, 128)) if max_decode_seqs == 128
                     else int(np.exp(rng.uniform(0, np.log(max_decode_seqs + 1)))))
                b = StepBatch(decode_seqs=d, decode_ctx_tokens=d * int(rng.integers(16, 2000)))
            else:
                d, n = int(rng.integers(1, 64)), int(rng.integers(16, 1024))
                b = StepBatch(decode_seqs=d, decode_ctx_tokens=d * int(rng.integers(16, 1000)), prefill_tokens=n,
                              prefill_seqs=1, prefill_attn_tokens=chunk_attn_tokens(0, n))
            r = empty_row()
            r.update(source="synthetic", point_id=pid, point_kind=kind, step=step,
                     phase=phase_of(b.prefill_tokens, b.decode_seqs),
                     step_time_s=model.step_time(b) * float(np.exp(rng.normal(0, noise))),
                     prefill_tokens=b.prefill_tokens, prefill_seqs=b.prefill_seqs,
                     prefill_attn_tokens=float(b.prefill_attn_tokens), decode_seqs=b.decode_seqs,
                     decode_ctx_tokens=b.decode_ctx_tokens, num_tokens=b.total_tokens, wait_s=0.0)
            rows.append(r)
    return rows


META = {"engine": "vllm", "engine_version": "0.32.0", "driver": "offline", "model": "/m/tiny", "dtype": "float32",
        "device": "cpu", "device_name": "test CPU",
        "limits": {"max_num_seqs": 128, "max_num_batched_tokens": 2048, "max_model_len": 2048, "chunked_prefill": True},
        "num_gpu_blocks": 512, "block_size": 128, "gpu_memory_utilization": 0.9, "status": "complete",
        "model_arch": {"name": "tiny", "num_layers": 8, "hidden_size": 512, "num_heads": 8, "num_kv_heads": 4,
                       "intermediate_size": 1536, "vocab_size": 8192, "dtype_bytes": 4}}


# ---- plan ----------------------------------------------------------------------------

def test_ranks_put_ends_first_then_middles():
    assert _ranks(1) == [0]
    assert _ranks(2) == [0, 0]
    assert _ranks(5) == [0, 2, 1, 2, 0]


@pytest.mark.parametrize("budget", [20.0, 60.0, 300.0])
def test_plan_fits_its_budget_and_covers_every_phase(budget):
    plan = build_plan(LIMITS, budget_s=budget)
    assert plan.est_total_s <= budget + 1e-9
    counts = plan.counts()
    assert all(counts[k] > 0 for k in ("prefill", "decode", "mixed")), counts
    assert [p.point_id for p in plan.points] == list(range(len(plan.points)))
    assert all(p.est_s <= 0.12 * budget for p in plan.points)


def test_bigger_budget_buys_more_points_and_repeats():
    small, big = build_plan(LIMITS, budget_s=30), build_plan(LIMITS, budget_s=2000)
    assert len(big.points) > len(small.points)
    assert max(p.rep for p in big.points) >= 1


def test_plan_respects_engine_limits():
    lim = EngineLimits(max_num_seqs=16, max_num_batched_tokens=512, max_model_len=1024, kv_tokens=8192)
    for kind, items in candidate_points(lim).items():
        for _, fields in items:
            p = ProbePoint(**fields)
            assert p.batch <= 16
            assert p.total_tokens(lim) <= 8192
            for prompt, output in p.requests(lim):
                assert prompt + output <= 1024, (kind, fields)
            if kind == "mixed":
                assert p.prompt_len + p.mixed_decoder_tokens(lim) <= 1024


def test_plan_is_deterministic_per_seed():
    a, b = build_plan(LIMITS, budget_s=60, seed=1), build_plan(LIMITS, budget_s=60, seed=1)
    assert a.points == b.points
    with pytest.raises(ValueError, match="budget_s"):
        build_plan(LIMITS, budget_s=0)


# ---- batch bookkeeping --------------------------------------------------------------------

def test_derive_batch_separates_prompt_chunks_from_decodes():
    # [prompt, computed, scheduled, outputs]
    reqs = [[100, 0, 100, 0],      # whole prompt
            [3000, 2048, 500, 0],  # second chunk of a long prompt
            [64, 70, 1, 7],        # decode at context 71
            [10, 10, 1, 1]]        # first decode after the prompt
    b = derive_batch(reqs)
    assert b["prefill_tokens"] == 600 and b["prefill_seqs"] == 2
    assert b["prefill_attn_tokens"] == chunk_attn_tokens(0, 100) + chunk_attn_tokens(2048, 500)
    assert b["decode_seqs"] == 2 and b["decode_ctx_tokens"] == 71 + 11
    assert phase_of(b["prefill_tokens"], b["decode_seqs"]) == "mixed"
    assert phase_of(0, 3) == "decode" and phase_of(5, 0) == "prefill" and phase_of(0, 0) == "idle"


def test_cpu_binding_leaves_a_core_free():
    spec = cpu_bind_default()
    assert _count_cpus(spec) >= 1
    assert _count_cpus("1-3,6") == 4 and _count_cpus("0") == 1


def test_tiny_model_folder_is_named_by_content():
    a, b = TinyModelSpec(), TinyModelSpec(num_layers=4)
    assert a.digest() == TinyModelSpec().digest() != b.digest()
    assert model_dir_for(a).name.endswith(a.digest())


# ---- /metrics ----------------------------------------------------------------------------

VLLM_METRICS = """# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="128",cache_dtype="auto",enable_prefix_caching="False",engine="0",gpu_memory_utilization="0.92",kv_cache_dtype_skip_layers="[]",num_gpu_blocks="512",num_gpu_blocks_override="None"} 1.0
vllm:num_requests_running{engine="0",model_name="m"} 0.0
vllm:iteration_tokens_total_count{engine="0",model_name="m"} 4.0
vllm:iteration_tokens_total_sum{engine="0",model_name="m"} 8.0
"""


def test_cache_config_read_from_vllm_metrics():
    m = parse_prometheus(VLLM_METRICS)
    assert cache_config(m) == {"num_gpu_blocks": 512, "block_size": 128, "gpu_memory_utilization": 0.92,
                               "enable_prefix_caching": False}
    assert m["vllm:iteration_tokens_total_sum"][0][1] == 8.0


def test_metrics_without_cache_config_is_a_clear_error():
    with pytest.raises(EndpointError, match="cache_config_info"):
        cache_config(parse_prometheus("python_info{version=\"3.11\"} 1.0\n"))


# ---- the client seam (MockTransport) ------------------------------------------------------

def sse(chunks: list[dict], done: bool = True) -> bytes:
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


def usage_chunks(prompt: int, n: int) -> list[dict]:
    return [{"choices": [{"text": "x", "finish_reason": "length" if k == n else None}],
             "usage": {"prompt_tokens": prompt, "completion_tokens": k, "total_tokens": prompt + k}}
            for k in range(1, n + 1)]


def client_for(handler) -> OpenAIClient:
    return OpenAIClient("http://engine.test", transport=httpx.MockTransport(handler))


def test_client_streams_a_completion_and_times_every_token():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, content=sse(usage_chunks(4, 3)), headers={"content-type": "text/event-stream"})

    c = client_for(handler)

    async def go():
        async with c.async_client(1) as ac:
            return await c.stream(ac, "m", [1, 2, 3, 4], 3)

    res = asyncio.run(go())
    assert res.completion_tokens == 3 and res.prompt_tokens == 4 and res.finish_reason == "length"
    assert all(not math.isnan(t) for t in res.arrivals)
    body = seen["body"]
    assert body["prompt"] == [1, 2, 3, 4] and body["ignore_eos"] is True
    assert body["max_tokens"] == body["min_tokens"] == 3
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


@pytest.mark.parametrize("content,status,match", [
    (b'{"error": "boom"}', 500, "answered 500"),
    (sse(usage_chunks(4, 1), done=False), 200, "ended after 1 of 3"),
    (sse([{"error": {"message": "engine dead"}}]), 200, "error mid-stream"),
    (sse([{"choices": [{"text": "x"}]}]), 200, "continuous_usage_stats"),
])
def test_stream_failures_are_clear(content, status, match):
    c = client_for(lambda req: httpx.Response(status, content=content))

    async def go():
        async with c.async_client(1) as ac:
            return await c.stream(ac, "m", [1, 2, 3, 4], 3)

    with pytest.raises(EndpointError, match=match):
        asyncio.run(go())


def test_unreachable_endpoint_is_a_clear_error():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(EndpointError, match="cannot reach http://engine.test/health"):
        client_for(refuse).health()
    with pytest.raises(EndpointError, match="not an http"):
        OpenAIClient("engine.test:8000")


def test_wrong_endpoint_is_a_clear_error():
    c = client_for(lambda req: httpx.Response(404, text="no such route"))
    with pytest.raises(EndpointError, match="answered 404"):
        c.health()
    c = client_for(lambda req: httpx.Response(200, json={"hello": "world"}))
    with pytest.raises(EndpointError, match="not an OpenAI model list"):
        c.models()


# ---- token arrivals -> steps ----------------------------------------------------------------

def test_lockstep_steps_recover_gap_and_contexts():
    step = 0.02
    # request 0 prefilled one step before request 1; afterwards both decode together
    a0 = [1.00 + k * step for k in range(8)]
    a1 = [1.02 + k * step for k in range(7)]
    streams = [StreamResult(0, a0, 8, 10), StreamResult(0, a1, 7, 20)]
    steps = lockstep_decode_steps(streams, [10, 20])
    assert len(steps) == 6
    assert all(abs(s.time_s - step) < 1e-9 and s.decode_seqs == 2 for s in steps)
    # first recovered step: request 0 emits its token 3 (context 10 + 2), request 1 its token 2 (context 20 + 1)
    assert steps[0].decode_ctx_tokens == (10 + 2) + (20 + 1)
    assert steps[1].decode_ctx_tokens == steps[0].decode_ctx_tokens + 2


def test_lockstep_drops_bursts_that_are_not_together():
    a0 = [1.0, 1.02, 1.04, 1.06]
    a1 = [1.0, 1.02, 1.05, 1.06]  # token 3 of request 1 is late by half a step
    steps = lockstep_decode_steps([StreamResult(0, a0, 4, 5), StreamResult(0, a1, 4, 5)], [5, 5])
    assert [round(s.end_s, 3) for s in steps] == [1.02]  # only the clean first step survives


# ---- a fake OpenAI server for the HTTP driver --------------------------------------------------

class FakeEngine:
    """An OpenAI-compatible MockTransport handler that streams every request's
    k-th token at a shared clock tick, like an engine stepping its batch."""

    def __init__(self, step_s: float = 0.01, fail_after: int | None = None, prefill_s: float = 0.05) -> None:
        self.step_s, self.fail_after, self.calls, self.prefill_s = step_s, fail_after, 0, prefill_s
        self.t0: float | None = None

    def plain(self, request: httpx.Request) -> httpx.Response:
        """The non-streaming routes (the sync client)."""
        path = request.url.path
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "fake", "max_model_len": 1024}]})
        if path == "/metrics":
            return httpx.Response(200, text=VLLM_METRICS.split("vllm:iteration")[0])  # cache info only
        return httpx.Response(404)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        """Streaming completions (the async client)."""
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            return httpx.Response(500, json={"error": "engine crashed"})
        body = json.loads(request.content)
        n, prompt = body["max_tokens"], len(body["prompt"])
        if self.t0 is None or time.perf_counter() - self.t0 > 5:
            self.t0 = time.perf_counter()
        gate = n == 1 and prompt >= 512  # the driver's gate: a 512-token prompt, one token
        start = self.t0 + (0.0 if gate else self.prefill_s)  # the gate's token lands first, the batch's one prefill later

        async def chunks():
            for k, chunk in enumerate(usage_chunks(prompt, n)):
                delay = start + k * self.step_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return httpx.Response(200, content=chunks(), headers={"content-type": "text/event-stream"})


def fake_driver(engine: FakeEngine) -> HttpDriver:
    client = OpenAIClient("http://engine.test", transport=httpx.MockTransport(engine.plain),
                          async_transport=httpx.MockTransport(engine))
    return HttpDriver(HttpConfig(endpoint="http://engine.test", max_num_seqs=8, max_num_batched_tokens=512),
                      client=client)


def test_http_driver_recovers_decode_steps_from_a_fake_engine():
    # gaps wide enough (100 ms steps, a 300 ms prefill) that a busy machine's scheduling delays of a few
    # tens of ms stay inside the 25 % tolerance; the median decode step shrugs off one late token
    with fake_driver(FakeEngine(step_s=0.1, prefill_s=0.3)) as d:
        assert d.limits().kv_tokens == 512 * 128 and d.limits().max_model_len == 1024
        rows = d.run_point(ProbePoint(kind="decode", batch=3, prompt_len=32, decode_steps=6, point_id=7))
    prefill, decode = rows[0], rows[1:]
    assert decode and all(r["phase"] == "decode" and r["decode_seqs"] == 3 for r in decode)
    assert np.median([r["step_time_s"] for r in decode]) == pytest.approx(0.1, rel=0.25)
    # the batch's own prefill step, between the gate's first token and theirs
    assert (prefill["phase"], prefill["prefill_tokens"], prefill["prefill_seqs"]) == ("prefill", 96, 3)
    assert prefill["step_time_s"] == pytest.approx(0.3, rel=0.25)
    assert [r["step"] for r in rows] == list(range(len(rows)))
    assert d.metadata()["num_gpu_blocks"] == 512


def test_server_failing_mid_sweep_keeps_what_was_measured(tmp_path):
    out = tmp_path / "m.parquet"
    with fake_driver(FakeEngine(step_s=0.005, fail_after=6)) as d:
        result = run_sweep(d, out=out, budget_s=20, warmup=False)
    assert result.status == "failed" and "500" in result.error
    m = load_measurements(out)
    assert m.meta["status"] == "failed" and "500" in m.meta["error"]
    assert m.df.height == result.rows > 0


# ---- the sweep loop -----------------------------------------------------------------------------

class ListDriver:
    """A driver that returns synthetic rows and can be told to stop."""

    source = "fake"

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls, self.interrupt_at = 0, interrupt_at

    def limits(self):
        return LIMITS

    def metadata(self):
        return dict(META)

    def run_point(self, point, *, warmup=False, on_row=None):
        self.calls += 1
        if self.interrupt_at is not None and self.calls >= self.interrupt_at:
            raise KeyboardInterrupt
        rows = []
        for r in synthetic_rows(points=1, seed=self.calls)[:3]:
            r.update(point_id=point.point_id, warmup=warmup)
            rows.append(r)
            if on_row:
                on_row(r)
        return rows


class SlowDriver(ListDriver):
    """A ListDriver on a virtual clock: each point takes three times its planned estimate."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def run_point(self, point, *, warmup=False, on_row=None):
        self.now += 3 * point.est_s
        return super().run_point(point, warmup=warmup, on_row=on_row)


def test_sweep_stops_at_its_budget(tmp_path, monkeypatch):
    """Points run three times slower than planned: the sweep learns the ratio and stops within its budget
    (virtual time, so a busy machine cannot change the outcome)."""
    import types

    import driftsim.profiling.sweep as sweep

    driver = SlowDriver()
    monkeypatch.setattr(sweep, "time", types.SimpleNamespace(perf_counter=driver.perf_counter))
    result = run_sweep(driver, out=tmp_path / "m.parquet", budget_s=60, warmup=False)
    assert result.status == "complete" and result.rows > 0
    assert 0 < result.points_run < result.points_planned, "the plan fits 60 s at its estimates, not at 3x them"
    assert 0.5 * 60 < result.wall_s <= 60


def test_interrupted_sweep_keeps_its_rows(tmp_path):
    out = tmp_path / "m.parquet"
    result = run_sweep(ListDriver(interrupt_at=8), out=out, budget_s=100)
    assert result.status == "interrupted"
    m = load_measurements(out)
    assert m.meta["status"] == "interrupted" and m.df.height == result.rows == 7 * 3


# ---- measurement files ------------------------------------------------------------------------------

def test_writer_keeps_a_readable_file_at_every_flush(tmp_path):
    out = tmp_path / "m.parquet"
    w = MeasurementWriter(out, {"engine": "x"}, flush_every=5)
    for r in synthetic_rows(points=2)[:7]:
        w.add(r)
    m = load_measurements(out)  # flushed after 5 rows, before close
    assert m.df.height == 5 and m.meta["status"] == "running"
    w.close("complete")
    m = load_measurements(out)
    assert m.df.height == 7 and m.meta["status"] == "complete"


def test_csv_measurements_round_trip_with_sidecar(tmp_path):
    out = tmp_path / "m.csv"
    write_measurements(out, to_frame(synthetic_rows(points=3)), META)
    m = load_measurements(out)
    assert m.df.height == 18 and m.meta["num_gpu_blocks"] == 512


@pytest.mark.parametrize("make,match", [
    (lambda p: None, "not found"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(b"PAR1 this is not parquet"), "not a readable Parquet"),
    (lambda p: pl.DataFrame({"a": [1]}).write_parquet(p), "missing column"),
    (lambda p: write_measurements(p, to_frame([]), {"status": "failed", "error": "server gone"}), "no measurements.*server gone"),
])
def test_bad_measurement_files_are_named_with_the_problem(tmp_path, make, match):
    p = tmp_path / "m.parquet"
    make(p)
    with pytest.raises(MeasurementError, match=match):
        load_measurements(p)


def test_bad_step_time_names_the_row(tmp_path):
    rows = synthetic_rows(points=1)
    rows[3]["step_time_s"] = -1.0
    p = tmp_path / "m.parquet"
    write_measurements(p, to_frame(rows), META)
    with pytest.raises(MeasurementError, match="row 3: step_time_s"):
        load_measurements(p)


# ---- fitting ------------------------------------------------------------------------------------------

def test_fit_recovers_known_coefficients():
    model, report = fit_measurements(to_frame(synthetic_rows(noise=0.005)))
    for key, true in TRUE.coefficients.items():
        assert getattr(model, key) == pytest.approx(true, rel=0.1, abs=1e-9), key
    for phase in ("prefill", "decode", "mixed"):
        assert report.errors["linear"][phase].mdape < 0.01
    assert report.meets_targets("linear")
    assert set(report.errors) == {"linear", "linear_plain", "gbt"} and report.winner in ("linear", "gbt")
    assert report.winner == "linear"  # the data are linear: the linear model must win
    for d in (16, 64, 127):  # with or without a decode table, the decode sequences cost what they did
        assert model.decode_seqs_s(float(d)) == pytest.approx(TRUE.decode_seqs_s(float(d)), rel=0.05)


#: Decode sequences that cost almost as much alone as four together, and more per sequence above 32.
TRUE_TABLE = LinearCostModel(**{**TRUE.coefficients, "per_decode_seq_s": 9e-4},
                             decode_seq_knots=[1, 4, 32], decode_seq_cost_s=[6e-3, 6.5e-3, 2e-2])


@pytest.fixture(scope="module")
def table_fits():
    """Steps timed by TRUE_TABLE, fitted with knots chosen, fixed and absent: {mode: (rows, model, report)}."""
    rows = to_frame(synthetic_rows(TRUE_TABLE, points=90, noise=0.005, max_decode_seqs=256))
    return {mode: (rows, *fit_measurements(rows, decode_knots=mode)) for mode in ("auto", (1, 4, 32), "none")}


def test_fit_recovers_a_known_decode_table(table_fits):
    _, model, report = table_fits["auto"]
    assert {1, 4, 32} <= set(report.decode_knots), report.decode_knots
    for d in (1, 2, 3, 4, 8, 16, 32, 64, 128, 256):
        assert model.decode_seqs_s(float(d)) == pytest.approx(TRUE_TABLE.decode_seqs_s(float(d)), rel=0.1), d
    lin, plain = report.errors["linear"]["decode"], report.errors["linear_plain"]["decode"]
    assert lin.mdape < 0.01 and lin.p90ape < 0.02  # the table model sits at the noise
    assert plain.p90ape > 4 * lin.p90ape  # one cost per sequence cannot follow it
    assert report.meets_targets("linear") and report.winner == "linear"
    assert len(report.fold_decode_knots) == report.folds
    _, fixed, fixed_report = table_fits[(1, 4, 32)]
    assert fixed.decode_seq_knots == (1, 4, 32) and set(fixed_report.fold_decode_knots) == {(1, 4, 32)}
    assert fixed.decode_seq_cost_s == pytest.approx(TRUE_TABLE.decode_seq_cost_s, rel=0.05)
    assert fixed.per_decode_seq_s == pytest.approx(TRUE_TABLE.per_decode_seq_s, rel=0.05)


def test_fit_without_a_decode_table_is_the_plain_linear_fit(table_fits):
    rows, plain, report = table_fits["none"]
    assert plain.decode_seq_knots == () and report.decode_knots == () and "linear_plain" not in report.errors
    # the no-table column of an auto fit is the plain fit's held-out error, and the table beats it here
    auto = table_fits["auto"][2]
    assert auto.errors["linear_plain"]["decode"] == report.errors["linear"]["decode"]
    assert auto.errors["linear"]["decode"].p90ape < report.errors["linear"]["decode"].p90ape
    with pytest.raises(FitError, match="strictly increasing"):
        fit_measurements(rows, decode_knots=[4, 1])
    with pytest.raises(FitError, match="'auto', 'none'"):
        fit_measurements(rows, decode_knots="some")


def test_fit_without_a_constant_term_keeps_steps_positive_and_says_so():
    """Steps whose constant cost sits in the per-sequence terms (as HTTP-derived steps, which all carry
    a sequence) fit the constant to 0: the fit floors it and reports it instead of failing."""
    rows = synthetic_rows(noise=0.0)
    for r in rows:
        r["step_time_s"] -= TRUE.overhead_s + 1e-4  # a negative constant: the non-negative fit must clamp it
    model, report = fit_measurements(to_frame(rows))
    assert model.overhead_s == pytest.approx(1e-6)
    assert report.warnings and "overhead_s" in report.warnings[0]
    assert report.to_dict()["warnings"] == list(report.warnings)
    assert model.per_decode_seq_s > 0 and model.per_prefill_token_s > 0


def test_fit_reports_heldout_error_honestly_on_noisy_data():
    _, report = fit_measurements(to_frame(synthetic_rows(noise=0.10)))
    lin = report.errors["linear"]["all"]
    assert 0.04 < lin.mdape < 0.12  # 10 % log-normal noise: median |error| ~ 6.7 %


def test_too_few_measurements_is_a_clear_error():
    with pytest.raises(FitError, match="too few measurements"):
        fit_measurements(to_frame(synthetic_rows(points=3)))
    decode_only = [r for r in synthetic_rows() if r["phase"] == "decode"]
    with pytest.raises(FitError, match="too few prefill steps"):
        fit_measurements(to_frame(decode_only))


def test_contended_and_cold_steps_are_left_out_and_counted():
    rows = synthetic_rows()
    rows[0]["wait_s"] = rows[0]["step_time_s"]  # kept waiting the whole step
    rows[1]["new_shape"] = True
    rows[2]["warmup"] = True
    rows[3]["wait_s"] = math.nan  # unknown (HTTP): kept
    _, report = fit_measurements(to_frame(rows))
    assert sum(report.excluded.values()) == 3 and report.rows == len(rows) - 3


def test_written_profile_loads_with_measured_kv(tmp_path):
    model, report = fit_measurements(to_frame(synthetic_rows()))
    out = tmp_path / "tiny.toml"
    write_profile(out, model, report, META, measurements_path=None)
    p = load_profile(out)
    assert p.provenance["source"] == "measured"
    assert p.kv_capacity_blocks() == 512 and p.engine_defaults["block_size"] == 128
    assert p.cost_model.coefficients == pytest.approx(model.coefficients)
    assert p.provenance["fit"]["heldout"]["linear"]["decode"]["n"] > 0


def test_decode_repeatability_measures_run_to_run_noise():
    """Same-shape decode steps at other sweep points: 0 for exact timings, about the noise for noisy ones."""
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(40), 5)  # 40 points of 5 steps, 4 shapes each seen at 10 points
    B = np.repeat(np.array([1, 4, 16, 64])[np.arange(40) % 4], 5).astype(float)
    X = np.column_stack([np.zeros((200, 3)), B, B * 100.0])
    phases = np.array(["decode"] * 200)
    y = TRUE.overhead_s + TRUE.per_decode_seq_s * B
    assert decode_repeatability(X, y, phases, groups).mdape == 0.0
    noisy = decode_repeatability(X, y * np.exp(rng.normal(0, 0.05, 200)), phases, groups)
    assert noisy.n == 200 and 0.02 < noisy.mdape < 0.06  # |N(0, 5 %)| has median 3.4 %
    assert decode_repeatability(X, y, np.array(["prefill"] * 200), groups) is None


def test_written_profile_keeps_its_decode_table(tmp_path, table_fits):
    _, model, report = table_fits[(1, 4, 32)]
    out = tmp_path / "tabled.toml"
    write_profile(out, model, report, META)
    p = load_profile(out)
    assert p.cost_model.decode_table == model.decode_table and p.cost_model.coefficients == model.coefficients
    for d in (0, 1, 2, 4, 31, 32, 33, 500):
        b = StepBatch(decode_seqs=d, decode_ctx_tokens=d * 300, prefill_tokens=0 if d else 64, prefill_seqs=0 if d else 1)
        assert p.cost_model.step_time(b) == model.step_time(b)
    fit = p.provenance["fit"]
    assert fit["decode_knots"] == [1, 4, 32] and "linear_plain" in fit["heldout"]
    assert "decode table at 1, 4, 32" in p.provenance["notes"]


def test_profile_needs_kv_and_model_facts(tmp_path):
    model, report = fit_measurements(to_frame(synthetic_rows()))
    with pytest.raises(FitError, match="num_gpu_blocks"):
        write_profile(tmp_path / "a.toml", model, report, {**META, "num_gpu_blocks": None})
    with pytest.raises(FitError, match="model-dir"):
        write_profile(tmp_path / "b.toml", model, report, {k: v for k, v in META.items() if k != "model_arch"})


# ---- CLI ---------------------------------------------------------------------------------------------

def test_fit_command_prints_errors_and_writes_a_profile(tmp_path):
    m = tmp_path / "m.parquet"
    write_measurements(m, to_frame(synthetic_rows()), META)
    res = runner.invoke(_standalone_app(), ["fit", str(m), "--out", str(tmp_path / "p.toml"), "--check-targets"])
    assert res.exit_code == 0, res.output
    for word in ("prefill", "decode", "mixed", "linear", "GBT", "winner", "overhead_s", "no-table"):
        assert word in res.output
    assert load_profile(tmp_path / "p.toml").provenance["source"] == "measured"


def test_fit_command_on_bad_input_exits_2(tmp_path):
    empty = tmp_path / "e.parquet"
    empty.write_bytes(b"")
    res = runner.invoke(_standalone_app(), ["fit", str(empty)])
    assert res.exit_code == 2 and "empty" in res.output
    few = tmp_path / "few.parquet"
    write_measurements(few, to_frame(synthetic_rows(points=2)), META)
    res = runner.invoke(_standalone_app(), ["fit", str(few)])
    assert res.exit_code == 2 and "too few" in res.output
    res = runner.invoke(_standalone_app(), ["fit", str(few), "--decode-knots", "1,four"])
    assert res.exit_code == 2 and "--decode-knots" in res.output


def test_fit_command_takes_fixed_decode_knots(tmp_path):
    m = tmp_path / "m.parquet"
    write_measurements(m, to_frame(synthetic_rows(TRUE_TABLE, noise=0.005, max_decode_seqs=256)), META)
    res = runner.invoke(_standalone_app(), ["fit", str(m), "--out", str(tmp_path / "p.toml"), "--decode-knots", "1,4,32"])
    assert res.exit_code == 0, res.output
    assert "decode sequences cost at 32" in res.output
    assert load_profile(tmp_path / "p.toml").cost_model.decode_seq_knots == (1, 4, 32)


def test_profile_command_on_unreachable_endpoint_exits_2(tmp_path):
    from driftsim.profiling.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    res = runner.invoke(_standalone_app(), ["profile", "--engine", "http", "--endpoint", url,
                                            "--out", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and "cannot reach" in res.output


def test_profile_command_rejects_inconsistent_options(tmp_path):
    res = runner.invoke(_standalone_app(), ["profile", "--engine", "http"])
    assert res.exit_code == 2 and "--endpoint" in res.output
    res = runner.invoke(_standalone_app(), ["profile", "--engine", "offline"])
    assert res.exit_code == 2 and "--tiny-model" in res.output


def test_http_driver_skips_points_it_cannot_attribute():
    d = fake_driver(FakeEngine())  # 512 tokens per step
    assert d.supports(ProbePoint(kind="prefill", batch=2, prompt_len=256))
    assert not d.supports(ProbePoint(kind="prefill", batch=4, prompt_len=256))  # chunked: boundaries invisible
    assert not d.supports(ProbePoint(kind="mixed", batch=8, prompt_len=64, join_prompt_len=512, join_count=1))
    assert d.supports(ProbePoint(kind="decode", batch=8, prompt_len=1000, decode_steps=4))


def test_timing_runs_with_the_existing_heap_frozen_out_of_the_collector():
    import gc

    from driftsim.profiling.http import gc_frozen

    before = gc.get_freeze_count()
    with gc_frozen():
        assert gc.get_freeze_count() > before  # a full collection no longer walks these objects
    assert gc.get_freeze_count() == 0
