"""The DriftSched reproduction grid, its headline numbers, Jain's index and the HTML report."""

from __future__ import annotations

import math

import polars as pl
import pytest

from driftsim.experiments import headline_table, jain_index, run_driftsched_experiment
from driftsim.experiments.headline import compare_note
from driftsim.experiments.report import queue_depth, write_report

SMALL = dict(n_learning=100, n_stress=200)


@pytest.fixture(scope="module")
def small():
    return run_driftsched_experiment(seeds=(0,), policies=("fifo", "sjf"), workload_params=SMALL)


def test_small_grid_has_one_row_per_run_and_tenant(small):
    t = small.table
    assert t.height == 1 * 2 * 2 * 2 * 4  # seed x policies x counters x calibration x (3 tiers + overall)
    keys = ["seed", "policy", "counter", "calibration", "tenant"]
    assert t.select(keys).is_duplicated().sum() == 0
    assert set(t["tenant"]) == {"premium", "standard", "batch", "overall"}
    overall = t.filter(pl.col("tenant") == "overall")
    assert (overall["requests"] == 300).all() and (overall["completed"] == 300).all()
    for col in ("e2e_p50_s", "e2e_p99_s", "queue_wait_mean_s", "throughput_rps", "mae", "rmse", "misclassification", "jain_e2e"):
        assert t[col].is_not_null().all() and not t[col].is_nan().any(), col
    # the stress phase starts after the learning phase drained, plus the 15 s pause
    assert (overall["stress_start_s"] - overall["learning_drain_s"] - 15.0).abs().max() < 1e-9
    # per-request data and bias history of the representative seed, for the plots
    assert small.requests.height == 2 * 2 * 2 * 300
    assert set(small.bias_history["calibration"]) == {True}
    assert small.bias_history.height > 0


def test_calibration_reduces_whitespace_error(small):
    t = small.table.filter(pl.col("tenant") == "overall", pl.col("counter") == "whitespace")
    for policy in ("fifo", "sjf"):
        off = t.filter(pl.col("policy") == policy, ~pl.col("calibration")).row(0, named=True)
        on = t.filter(pl.col("policy") == policy, pl.col("calibration")).row(0, named=True)
        assert on["mae"] < off["mae"], policy
        assert on["rmse"] < off["rmse"], policy
    assert small.headline["calibration"]["per_counter"]["whitespace"]["mae_reduction_pct"] > 0


def test_fifo_latency_does_not_depend_on_estimates(small):
    """FIFO never reads the estimate, so counter and calibration leave its latencies unchanged."""
    fifo = small.table.filter(pl.col("policy") == "fifo", pl.col("tenant") == "overall")
    assert fifo["e2e_p50_s"].n_unique() == 1 and fifo["e2e_p99_s"].n_unique() == 1


def test_deterministic():
    a = run_driftsched_experiment(seeds=(1,), policies=("sjf",), counters=("whitespace",), workload_params=SMALL)
    b = run_driftsched_experiment(seeds=(1,), policies=("sjf",), counters=("whitespace",), workload_params=SMALL)
    assert a.table.equals(b.table)


def test_jain_index_on_hand_values():
    assert jain_index([3.0, 3.0, 3.0]) == pytest.approx(1.0)
    assert jain_index([5.0, 0.0, 0.0, 0.0]) == pytest.approx(1 / 4)
    assert jain_index([1.0, 2.0, 3.0]) == pytest.approx(36 / 42)
    assert jain_index([0.0, 0.0]) == 1.0
    assert math.isnan(jain_index([]))
    assert math.isnan(jain_index([1.0, float("nan")]))
    with pytest.raises(ValueError):
        jain_index([1.0, -1.0])


def test_compare_note_is_computed_from_the_gap():
    assert compare_note(55.0, 38.8, 10).startswith("differs from the paper by +16.2 points")
    assert compare_note(-46.0, -42.0, 10).startswith("within 10 points")


def test_headline_table_rows(small):
    rows = headline_table(small)
    assert all(set(r) == {"metric", "paper", "driftsim", "unit", "note"} for r in rows)
    metrics = [r["metric"] for r in rows]
    assert "MAE reduction from calibration, whitespace counter" in metrics
    assert any(m.startswith("SJF vs FIFO median E2E") for m in metrics)
    mae = next(r for r in rows if r["metric"] == "MAE reduction from calibration, whitespace counter")
    assert mae["paper"] == 38.8
    assert mae["driftsim"] == pytest.approx(small.headline["calibration"]["per_counter"]["whitespace"]["mae_reduction_pct"])


def test_queue_depth_counts_arrived_minus_dispatched():
    part = pl.DataFrame(
        {"tenant": ["a", "a", "b"], "arrival_s": [0.5, 1.5, 1.0], "scheduled_s": [2.5, 2.5, 1.2]}
    )
    grid, depth = queue_depth(part, step_s=1.0)
    assert grid.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert depth["a"].tolist() == [0, 1, 2, 0]
    assert depth["b"].tolist() == [0, 1, 0, 0]


def test_report_is_written_and_self_contained(small, tmp_path):
    path = write_report(small, tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert "plotly" in text.lower()
    assert "<script src=" not in text and "<script type=\"text/javascript\" src=" not in text  # plotly.js inlined: opens offline
    assert "Plotly.newPlot" in text
    for metric in ("MAE reduction from calibration", "RMSE reduction from calibration", "SJF vs FIFO median E2E",
                   "SJF vs FIFO P99 E2E", "Jain"):  # fmt: skip
        assert metric in text, metric


def test_tokenizer_path_recounts_prompts(monkeypatch):
    """With a tokenizer, prompt lengths (engine and tokenizer counter) are recounted with it; the notes say so."""
    import driftsim.experiments.driftsched as ds

    class CharsOver4:
        def __init__(self, path):
            self.path = path

        def count(self, text: str) -> int:
            return len(text) // 4

    monkeypatch.setattr(ds, "TokenizerCounter", CharsOver4)
    res = run_driftsched_experiment(
        seeds=(0,), policies=("sjf",), counters=("tokenizer",), calibration=(True,), tokenizer_path="tok.json", workload_params=SMALL
    )
    trace = ds._trace(None, 0, SMALL, None)
    lengths = [len(p) // 4 for p in trace["prompt"]]
    assert res.meta["prompt_length_range"] == [min(lengths), max(lengths)]
    assert any("tok.json" in n for n in res.headline["notes"])
