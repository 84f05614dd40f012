"""`driftsim sweep`, `plan` and `report` end to end, and their one-line errors on bad input."""

from __future__ import annotations

import json

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from driftsim.cli.capacity_cmds import register
from tests.test_capacity_plan import small_scenario

runner = CliRunner()
app = typer.Typer(pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    """Stand-in for the driftsim app (cli/main.py registers the same commands)."""


register(app)


@pytest.fixture
def scen(tmp_path):
    return small_scenario(tmp_path)


def test_sweep_writes_tidy_tables_with_intervals(tmp_path, scen):
    out = tmp_path / "sw"
    res = runner.invoke(app, ["sweep", "-s", scen, "--rate-scale", "0.5,1", "--replicas", "1,2", "--seeds", "0,1",
                              "--price", "a100-llama-3.1-8b=1.8", "--jobs", "1", "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "8 runs (4 configurations x 2 seeds)" in res.output and "mean ± 95 % t-interval" in res.output
    t = pl.read_parquet(out / "results.parquet")
    assert t.height == 8 * 3 and set(t["tenant"]) == {"chat", "batch", "overall"}
    assert {"rate_scale", "replicas", "seed", "ttft_s_p99", "e2e_s_p99", "slo_attainment", "usd_per_m_output_tokens"} <= set(t.columns)
    s = pl.read_parquet(out / "summary.parquet")
    assert s.filter(pl.col("metric") == "ttft_s_p99").height == 4 * 3 and (s["n"] <= 2).all()
    runs = pl.read_parquet(out / "runs.parquet")
    assert runs.height == 8 and runs["ok"].all()
    assert pl.read_parquet(out / "checks.parquet").height == 8 * 3  # chat TTFT + E2E, batch E2E per run
    meta = json.loads((out / "meta.json").read_text())
    assert meta["axes"] == {"replicas": [1, 2], "rate_scale": [0.5, 1.0]} and meta["runs"] == 8

    rep = runner.invoke(app, ["report", str(out)])
    assert rep.exit_code == 0, rep.output
    assert (out / "report.html").exists() and "opens offline" in rep.output


def test_sweep_on_local_processes_to_csv(tmp_path, scen):
    out = tmp_path / "csv"
    res = runner.invoke(app, ["sweep", "-s", scen, "--policy", "fifo,sjf", "--seeds", "0", "--jobs", "2",
                              "--table-format", "csv", "--no-timeseries", "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "local processes (2 workers)" in res.output
    assert pl.read_csv(out / "results.csv").height == 2 * 3
    assert not (out / "results.parquet").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--policy", "fifo,lottery"], "unknown policy 'lottery'; known: aging"),
        (["--profile", "b200-nope"], "unknown profile 'b200-nope'; bundled profiles"),
        (["--replicas", ""], "expected a comma-separated list of values"),
        (["--seeds", ","], "seeds: no seeds"),
        (["--axis", "engine.block_size"], "expected KEY=V1,V2"),
        (["--slo", "chat.ttft=5", "--slo", "chat.e2e=2"], "contradictory SLOs: chat p99 TTFT <= 5 s is looser than chat p99 E2E <= 2 s"),
        (["--slo", "chat.ttft=1", "--slo", "chat.ttft=2"], "contradictory SLOs: chat p99 TTFT is given as 1 s and as 2 s"),
        (["--slo", "gold.ttft=1"], "tenant 'gold' is not in the scenario (tenants: chat, batch)"),
        (["--price", "a100=cheap"], "--price 'a100=cheap': expected PROFILE=USD_PER_GPU_HOUR"),
        (["--set", "engine.max_num_seqz=4"], "unknown key(s) max_num_seqz"),
    ],
)
def test_sweep_bad_input_is_one_clear_line(tmp_path, scen, args, message):
    res = runner.invoke(app, ["sweep", "-s", scen, "--jobs", "1", "-o", str(tmp_path / "x"), *args])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output


def test_plan_replicas_prints_answer_margin_and_runs(tmp_path, scen):
    out = tmp_path / "plan"
    res = runner.invoke(app, ["plan", "replicas", "-s", scen, "--seeds", "0,1", "--jobs", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "answer: 2 replicas" in text
    assert "margin: chat p99 E2E" in text and "headroom" in text and "the binding target" in text
    assert "supporting runs" in text and "with 1 replica: chat p99 TTFT" in text
    meta = json.loads((out / "meta.json").read_text())
    assert meta["plan"]["answer"] == {"replicas": 2} and len(meta["plan"]["probes"]) == 2
    assert pl.read_parquet(out / "results.parquet")["replicas"].unique().sort().to_list() == [1, 2]


def test_plan_infeasible_says_which_constraint_failed_and_by_how_much(tmp_path, scen):
    res = runner.invoke(app, ["plan", "replicas", "-s", scen, "--seeds", "0", "--jobs", "1", "--max-replicas", "2",
                              "--slo", "chat.ttft.p99=0.01", "-o", str(tmp_path / "inf")])  # fmt: skip
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "infeasible: no replica count up to 2 meets every SLO; at 2 replicas: chat p99 TTFT" in text
    assert "> 0.01 s SLO (" in text and "% over" in text


def test_plan_load_gpu_mix_and_policy(tmp_path, scen):
    res = runner.invoke(app, ["plan", "load", "-s", scen, "--seeds", "0", "--jobs", "1", "--tolerance", "0.1", "-o", str(tmp_path / "l")])
    assert res.exit_code == 0, res.output
    assert "answer: rate scale" in res.output and "requests/s offered" in res.output
    res = runner.invoke(app, ["plan", "gpu-mix", "-s", scen, "--seeds", "0", "--jobs", "1", "--max-per-type", "2",
                              "--price", "a100-llama-3.1-8b=1", "--price", "h100-llama-3.1-8b=1.5", "-o", str(tmp_path / "g")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "answer: 1 x h100-llama-3.1-8b at $1.50/h" in " ".join(res.output.split())
    res = runner.invoke(app, ["plan", "gpu-mix", "-s", scen, "--jobs", "1", "-o", str(tmp_path / "g2")])
    assert res.exit_code == 2 and "a GPU mix needs prices" in res.output
    res = runner.invoke(app, ["plan", "policy", "-s", scen, "--seeds", "0", "--jobs", "1", "--policies", "fifo,sjf",
                              "--set", "gateway.max_outstanding=4", "-o", str(tmp_path / "p")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "answer:" in res.output and "lowest tenant attainment" in res.output


def test_report_of_a_missing_folder_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no such results folder" in res.output
