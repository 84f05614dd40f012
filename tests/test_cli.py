"""The command line end to end: the default scenario, a real trace, and clear errors on bad input."""

from __future__ import annotations

import json

import polars as pl
from typer.testing import CliRunner

import driftsim
from driftsim.cli.main import app

runner = CliRunner()


def test_simulate_default_scenario_prints_tables_and_writes_results(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["simulate", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for word in ("premium", "standard", "batch", "overall", "TTFT", "TPOT", "E2E", "queue wait", "busy fraction"):
        assert word in res.output
    df = pl.read_parquet(out / "requests.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert df.height == summary["summary"]["overall"]["requests"] == 3000
    assert set(df["tenant"].unique()) == {"premium", "standard", "batch"}
    assert summary["context"]["profile"]["provenance"]["source"] == "derived-from-spec"


def test_simulate_real_azure_trace_split_into_tenants(tmp_path):
    res = runner.invoke(app, [
        "simulate", "--trace", "traces/data/azure2023_code.csv", "--tenants", "a=1,b=3", "--mode", "continuous",
        "--profile", "h100-llama-3.1-8b", "--max-model-len", "8192", "--duration-s", "120", "--out", str(tmp_path),
    ])
    assert res.exit_code == 0, res.output
    df = pl.read_parquet(tmp_path / "requests.parquet")
    assert set(df["tenant"].unique()) == {"a", "b"}
    assert (df["status"] == "ok").all()
    assert df["arrival_s"].max() < 120


def test_missing_trace_file_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["simulate", "--trace", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "nope.csv" in res.output


def test_bad_trace_row_names_row_and_field(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                   "2023-11-16 18:15:47.0,abc,10\n")
    res = runner.invoke(app, ["simulate", "--trace", str(bad), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "row 2" in res.output and "ContextTokens" in res.output


def test_unknown_scenario_key_and_policy_are_named(tmp_path):
    sc = tmp_path / "s.toml"
    sc.write_text('[engine]\nmax_num_seqz = 4\n')
    res = runner.invoke(app, ["simulate", "--scenario", str(sc), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "max_num_seqz" in res.output
    res = runner.invoke(app, ["simulate", "--policy", "lottery", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "lottery" in res.output and "fifo" in res.output


def test_inconsistent_engine_limits_are_refused(tmp_path):
    res = runner.invoke(app, ["simulate", "--max-num-seqs", "512", "--max-num-batched-tokens", "256", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "max_num_batched_tokens" in res.output


def test_traces_inspect_prints_percentiles():
    res = runner.invoke(app, ["traces", "inspect", "traces/data/azure2023_conv.csv"])
    assert res.exit_code == 0, res.output
    assert "19366" in res.output and "p99" in res.output


def test_step_by_step_flag_gives_identical_results(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert runner.invoke(app, ["simulate", "--mode", "continuous", "--out", str(a)]).exit_code == 0
    assert runner.invoke(app, ["simulate", "--mode", "continuous", "--step-by-step", "--out", str(b)]).exit_code == 0
    assert pl.read_parquet(a / "requests.parquet").equals(pl.read_parquet(b / "requests.parquet"))


def test_python_engine_flag_gives_identical_results_without_the_compiled_core(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    fast = runner.invoke(app, ["simulate", "--mode", "continuous", "--out", str(a)])
    slow = runner.invoke(app, ["simulate", "--mode", "continuous", "--python-engine", "--out", str(b)])
    assert fast.exit_code == 0 and slow.exit_code == 0, fast.output + slow.output
    assert "compiled core" in fast.output and "compiled core" not in slow.output
    assert pl.read_parquet(a / "requests.parquet").equals(pl.read_parquet(b / "requests.parquet"))


def test_results_identical_across_processes_and_hash_seeds(tmp_path):
    """Bit-for-bit determinism does not depend on Python's per-process string hashing."""
    import os
    import subprocess
    import sys

    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        cmd = [sys.executable, "-m", "driftsim.cli.main", "simulate", "--policy", "vtc", "--estimator", "driftsched",
               "--out", str(out)]
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        outs.append(pl.read_parquet(out / "requests.parquet"))
    assert outs[0].equals(outs[1])


def test_a_launched_cpu_server_is_taken_to_run_without_async_scheduling(monkeypatch):
    """vLLM's CPU platform turns async scheduling off whatever the command line asks, so the facts a
    launched CPU server's report shows say off; elsewhere they say what was asked for."""
    import driftsim.profiling.offline
    from driftsim.profiling.cpu_platform import launched_async

    monkeypatch.setattr(driftsim.profiling.offline, "cpu_build", lambda: True)
    assert launched_async(True) is False
    monkeypatch.setattr(driftsim.profiling.offline, "cpu_build", lambda: False)
    assert launched_async(True) is True and launched_async(False) is False


def test_version_option_prints_the_package_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"driftsim {driftsim.__version__}"


def test_tenant_weights_bad_weight_names_the_flag(tmp_path):
    res = runner.invoke(app, ["simulate", "--tenants", "a=x", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "--tenants: weight of 'a' is not a number" in res.output
