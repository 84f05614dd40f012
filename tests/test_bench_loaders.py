"""Loaders of benchmark tools' files: vllm bench serve results, GuideLLM reports, ShareGPT."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from driftsim.traces.bench_workload import with_arrivals
from driftsim.traces.loaders import detect_format, load_trace, load_trace_with_report, read_vllm_bench_latencies
from driftsim.traces.schema import TraceError, validate_trace

DATA = Path(__file__).parent / "data" / "bench"


def test_vllm_bench_result_round_trips_into_the_request_table():
    path = DATA / "vllm_bench_result.json"
    assert detect_format(path) == "vllm-bench"
    df, report = load_trace_with_report(path)
    validate_trace(df)
    raw = json.loads(path.read_text())
    ok = [i for i, e in enumerate(raw["errors"]) if not e]
    assert df["request_id"].to_list() == ok == [0, 1, 3]
    assert df["input_tokens"].to_list() == [raw["input_lens"][i] for i in ok]
    assert df["output_tokens"].to_list() == [raw["output_lens"][i] for i in ok]
    assert df["arrival_s"].to_list() == pytest.approx([0.0, 0.25, 0.75])  # start_times from the first
    assert report.rows_read == 4 and report.rows_loaded == 3
    assert any("dropped 1 failed" in r and "rows 3" in r for r in report.repairs)


def test_vllm_bench_measured_latencies_are_read_per_request():
    lat = read_vllm_bench_latencies(DATA / "vllm_bench_result.json")
    assert lat["request_id"].to_list() == [0, 1, 3]
    assert lat["ttft_s"].to_list() == pytest.approx([0.05, 0.06, 0.08])
    assert lat["e2e_s"].to_list() == pytest.approx([0.06, 0.09, 0.14])
    assert lat["itl_mean_s"].to_list() == pytest.approx([0.01, 0.015, 0.02])


def test_vllm_bench_without_start_times_draws_vllms_arrivals(tmp_path):
    raw = json.loads((DATA / "vllm_bench_result.json").read_text())
    del raw["start_times"]
    p = tmp_path / "r.json"
    p.write_text(json.dumps(raw))
    df, report = load_trace_with_report(p)
    assert df.height == 3 and df["arrival_s"][-1] == pytest.approx(1.0)  # 4 requests at 4/s end at 1 s
    assert any("request_rate 4.0" in r for r in report.repairs)


def test_vllm_bench_without_detailed_lists_says_how_to_save_them(tmp_path):
    raw = json.loads((DATA / "vllm_bench_result.json").read_text())
    for k in ("input_lens", "output_lens", "ttfts", "itls", "start_times", "errors", "generated_texts"):
        del raw[k]
    p = tmp_path / "r.json"
    p.write_text(json.dumps(raw))
    with pytest.raises(TraceError, match="--save-detailed") as e:
        load_trace(p)
    assert e.value.field == "input_lens" and str(p) in str(e.value)
    raw2 = json.loads((DATA / "vllm_bench_result.json").read_text())
    raw2["output_lens"] = raw2["output_lens"][:2]
    p.write_text(json.dumps(raw2))
    with pytest.raises(TraceError, match="expected a list of 4 values") as e:
        load_trace(p)
    assert e.value.field == "output_lens"


def test_guidellm_report_loads_every_benchmarks_successful_requests():
    path = DATA / "guidellm_report.json"
    assert detect_format(path) == "guidellm"
    df, report = load_trace_with_report(path)
    validate_trace(df)
    assert df["input_tokens"].to_list() == [12, 14, 20]
    assert df["output_tokens"].to_list() == [5, 6, 3]
    assert df["arrival_s"].to_list() == pytest.approx([0.0, 0.2, 3.0])
    assert df["tenant"].to_list() == ["benchmark-0", "benchmark-0", "benchmark-1"]
    assert any("1 errored or incomplete" in r for r in report.repairs)


def test_guidellm_bad_record_is_named(tmp_path):
    raw = json.loads((DATA / "guidellm_report.json").read_text())
    raw["benchmarks"][0]["requests"]["successful"][1]["prompt_tokens"] = "many"
    p = tmp_path / "g.json"
    p.write_text(json.dumps(raw, indent=1))
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert (e.value.row, e.value.field) == (2, "prompt_tokens") and "'many'" in str(e.value)


def test_sharegpt_takes_the_first_two_turns_and_says_arrivals_are_at_zero():
    path = DATA / "sharegpt.json"
    assert detect_format(path) == "sharegpt"
    df, report = load_trace_with_report(path)
    validate_trace(df)
    assert df["request_id"].to_list() == [0, 2]
    assert df["input_tokens"].to_list() == [3, 3]  # whitespace words of the first turn
    assert df["output_tokens"].to_list() == [1, 4]
    assert df["prompt"].to_list() == ["hello there friend", "write a poem"]
    assert df["arrival_s"].to_list() == [0.0, 0.0]
    assert any("t = 0" in r for r in report.repairs)
    assert any("dropped 1 conversations" in r and "rows 2" in r for r in report.repairs)
    timed = with_arrivals(df, request_rate=2.0, seed=1)
    assert timed["arrival_s"][-1] == pytest.approx(1.0) and timed.drop("arrival_s").equals(df.drop("arrival_s"))
    assert np.all(np.diff(timed["arrival_s"].to_numpy()) >= 0)


def test_sharegpt_not_a_list_of_conversations(tmp_path):
    p = tmp_path / "s.json"
    p.write_text('[{"conversations": "hi"}]')
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert (e.value.row, e.value.field) == (1, "conversations")
    p.write_text('[{"conversations": [')
    with pytest.raises(TraceError, match="not valid JSON"):
        load_trace(p)


def test_documents_load_by_explicit_format_too():
    assert load_trace(DATA / "guidellm_report.json", format="guidellm").height == 3
    assert isinstance(load_trace(DATA / "sharegpt.json", format="sharegpt"), pl.DataFrame)
