"""What a vLLM user expects of ``driftsim simulate``: a trace or profile runs a vLLM server, a named policy
acts, every run says what it ran, and an overloaded run says so."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from driftsim.cli.main import app

runner = CliRunner()
CONV = str(Path(__file__).resolve().parent.parent / "traces" / "data" / "azure2023_conv.csv")
OVERLOAD = ["--trace", CONV, "--tenants", "premium=2,batch=1", "--rate-scale", "4", "--profile", "a100-llama-3.1-8b",
            "--max-requests", "2000"]  # fmt: skip


def _run(args: list[str], out: Path) -> tuple[str, dict, pl.DataFrame]:
    res = runner.invoke(app, ["simulate", *args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    return res.output, summary, pl.read_parquet(out / "requests.parquet")


def test_a_trace_and_a_profile_without_scenario_run_a_vllm_server(tmp_path):
    out, summary, _ = _run(["--trace", CONV, "--tenants", "a=1,b=1", "--profile", "a100-llama-3.1-8b",
                            "--max-requests", "200"], tmp_path / "o")  # fmt: skip
    ctx = summary["context"]
    assert ctx["engine"]["mode"] == "continuous"
    assert ctx["scenario"]["name"] == "vllm"
    assert ctx["engine"]["max_num_batched_tokens"] == 8192  # the profile's limit, not the micro-batch set-up's
    assert "ran: continuous engine x1" in out and "profile a100-llama-3.1-8b (derived from specs)" in out


def test_the_default_and_scenario_by_name_stay_driftsched(tmp_path):
    for i, args in enumerate([["--seed", "1"], ["--scenario", "driftsched", "--max-requests", "50", "--policy", "sjf"]]):
        out, summary, _ = _run(args, tmp_path / str(i))
        assert summary["context"]["engine"]["mode"] == "microbatch"
        assert "ran: microbatch engine" in out


def test_priority_changes_per_tenant_latency_on_an_overloaded_trace(tmp_path):
    _, _, fifo = _run([*OVERLOAD, "--policy", "fifo"], tmp_path / "fifo")
    out, summary, prio = _run([*OVERLOAD, "--policy", "priority"], tmp_path / "prio")
    assert summary["context"]["gateway"]["placement"] == "engine"
    assert "policy priority in the engine's waiting queue" in out

    def p50(df: pl.DataFrame, tenant: str) -> float:
        return df.filter(pl.col("tenant") == tenant)["ttft_s"].median()

    assert p50(prio, "premium") < 0.5 * p50(fifo, "premium")  # premium (priority 1) goes first
    assert p50(prio, "batch") > p50(fifo, "batch")


def test_an_overloaded_run_says_so_with_both_rates(tmp_path):
    out, summary, _ = _run(OVERLOAD, tmp_path / "o")
    assert "overloaded: the trace offers" in out and "the engine served" in out
    light, _, _ = _run(["--trace", CONV, "--profile", "a100-llama-3.1-8b", "--max-requests", "200"], tmp_path / "l")
    assert "overloaded:" not in light


def test_a_per_tenant_policy_without_a_cap_is_refused_naming_the_flag(tmp_path):
    res = runner.invoke(app, ["simulate", "--trace", CONV, "--policy", "weighted", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "--max-outstanding" in res.output and "weighted" in res.output


def test_a_gateway_policy_with_no_cap_is_warned_about(tmp_path):
    out, summary, _ = _run(["--trace", CONV, "--max-requests", "100", "--policy", "priority", "--placement", "gateway"],
                           tmp_path / "o")  # fmt: skip
    assert summary["context"]["gateway"]["placement"] == "gateway"
    assert "warning:" in out and "orders nothing" in out


def test_a_capped_gateway_keeps_the_policy_at_the_gateway(tmp_path):
    out, summary, _ = _run(["--trace", CONV, "--max-requests", "100", "--policy", "weighted", "--max-outstanding", "8"],
                           tmp_path / "o")  # fmt: skip
    assert summary["context"]["gateway"]["placement"] == "gateway"
    assert "at the gateway, cap 8 in flight per replica" in out


def test_a_policy_sweep_on_a_continuous_engine_gives_different_rows(tmp_path):
    res = runner.invoke(app, ["sweep", "--policy", "fifo,priority", "--seeds", "0", "--jobs", "1", "--no-timeseries",
                              "--set", "workload.kind=trace", "--set", f"workload.path={CONV}",
                              "--set", "workload.assign_tenants={premium=2,batch=1}", "--set", "workload.rate_scale=4",
                              "--set", "workload.max_requests=2000", "--set", "engine.mode=continuous",
                              "--set", "profile=a100-llama-3.1-8b", "--out", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 0, res.output
    table = pl.read_parquet(tmp_path / "o" / "results.parquet").filter(pl.col("tenant") == "premium")
    ttft = dict(zip(table["policy"], table["ttft_s_p50"]))
    assert ttft["priority"] < 0.5 * ttft["fifo"]


def test_a_sweep_refuses_a_policy_that_cannot_act_before_any_run(tmp_path):
    res = runner.invoke(app, ["sweep", "--policy", "fifo,weighted", "--set", "engine.mode=continuous", "--seeds", "0",
                              "--jobs", "1", "--out", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 2 and "policy=weighted" in res.output and "max_outstanding" in res.output
    assert not (tmp_path / "o").exists()
