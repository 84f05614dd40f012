"""Published real vLLM runs: the bundled data file parses and resolves, the command runs a row, bad rows are named."""

from __future__ import annotations

import math

import polars as pl
import pytest
from typer.testing import CliRunner

from driftsim.cli.main import app
from driftsim.errors import ConfigError
from driftsim.validation.published import (
    DEFAULT_RUNS, METRICS, Measurement, load_runs, resolve_profile, score, simulate_measurement,
)

runner = CliRunner()

SOURCE = '''
[source.s]
title = "a test source"
repository = "https://example.org/r"
commit = "0"
licence = "test data"
'''

ROW = '''
[[measurement]]
id = "{id}"
source = "s"
url = "https://example.org/r/run.json"
gpu = "NVIDIA H100 SXM 80GB"
tp = 1
model = "mistralai/Mistral-7B-Instruct-v0.3"
profile = "{profile}"
not_covered = "{not_covered}"
vllm_version = "0.5.4"
max_num_seqs = 256
max_num_batched_tokens = 2048
max_model_len = 2048
chunked_prefill = false
prefix_caching = false
gpu_memory_utilization = 0.9
block_size = 16
async_scheduling = false
reserve_full_prompt = false
workload = "{workload}"
request_rate = {rate}
max_concurrency = {concurrency}
metric = "{metric}"
published = 10.0
note = ""
'''

WORKLOADS = '''
[workload.recorded]
source = "s"
description = "two requests, the first with an empty answer"
input_lens = [40, 60]
output_lens = [0, 20]

[workload.synthetic]
source = "s"
description = "three requests of 100 prompt and 16 output tokens"
num_prompts = 3
input_len = 100
output_len = 16
'''


def _row(**over) -> str:
    values = dict(id="r1", profile="h100-mistral-7b-v0.3-kernels", not_covered="", workload="recorded",
                  rate='"inf"', concurrency=0, metric="tpot_median_ms") | over
    return ROW.format(**values)


def _file(tmp_path, *rows: str):
    path = tmp_path / "runs.toml"
    path.write_text(SOURCE + WORKLOADS + "".join(rows), encoding="utf-8")
    return path


def test_bundled_data_parses_with_every_required_field():
    rows, rejected = load_runs(DEFAULT_RUNS)
    assert rows and rejected
    for m in rows:
        assert m.metric in METRICS and m.published > 0 and math.isfinite(m.published)
        assert m.url.startswith("https://") and m.licence and m.vllm_version and m.gpu and m.model
        assert m.workload.requests > 0
        if m.workload.input_lens:
            assert len(m.workload.input_lens) == len(m.workload.output_lens)
    assert all(r.url.startswith("https://") and r.missing for r in rejected)


def test_every_bundled_row_names_a_profile_that_resolves_or_says_why_none_does():
    rows, _ = load_runs(DEFAULT_RUNS)
    for m in rows:
        if m.profile:
            profile = resolve_profile(m)
            assert int(profile.engine_defaults.get("tensor_parallel_size", 1)) == m.tp
        else:
            assert m.not_covered.strip(), m.id


def test_validate_published_on_one_small_row_writes_a_finite_error(tmp_path):
    out = tmp_path / "table.csv"
    res = runner.invoke(app, ["validate-published", "--only", "lambda-h100-mistral-10-tpot-median",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = pl.read_csv(out)
    assert table.height == 1
    row = table.row(0, named=True)
    assert row["simulated"] > 0 and math.isfinite(row["error_pct"])
    assert row["error_pct"] == pytest.approx((row["simulated"] - row["published"]) / row["published"] * 100)


def test_an_existing_out_file_is_kept_unless_forced(tmp_path):
    out = tmp_path / "table.md"
    out.write_text("keep me", encoding="utf-8")
    args = ["validate-published", "--data", str(_file(tmp_path, _row())), "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--force" in res.output and out.read_text(encoding="utf-8") == "keep me"
    res = runner.invoke(app, [*args, "--force"])
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8").startswith("| row |")


def test_an_empty_answer_counts_with_ttft_zero_and_no_tpot(tmp_path):
    (m,), _ = load_runs(_file(tmp_path, _row()))
    view = simulate_measurement(m)
    assert view["ttft"][0] == 0.0 and view["ttft"][1] > 0
    assert view["tpot"].size == 1 and view["gaps"].tolist() == [19]


def test_a_closed_loop_row_runs_one_request_at_a_time_with_the_single_request_target(tmp_path):
    path = _file(tmp_path, _row(workload="synthetic", concurrency=1, metric="ttft_mean_ms"),
                 _row(id="r2", workload="synthetic", concurrency=1, metric="e2e_mean_ms"))
    rows, _ = load_runs(path)
    assert [m.target_pct for m in rows] == [10.0, 10.0]
    records = score(rows)
    assert all(r["simulated"] > 0 and math.isfinite(r["error_pct"]) for r in records)
    assert records[1]["simulated"] > records[0]["simulated"]  # E2E holds 15 more tokens than TTFT
    assert score(rows) == records  # same inputs, same numbers


def test_a_not_covered_row_is_reported_not_simulated(tmp_path):
    rows, _ = load_runs(_file(tmp_path, _row(profile="", not_covered="FP8 weights")))
    (record,) = score(rows)
    assert record["simulated"] is None and record["met"] is None and record["not_covered"] == "FP8 weights"


def test_a_row_launched_with_prefix_caching_is_simulated_with_it(tmp_path):
    """vLLM v1 caches prefixes by default; a workload of lengths (like vLLM's random dataset, random tokens)
    shares no prefix, so the row is simulated with the cache on and matches the same row with it off."""
    from driftsim.validation.published import _engine

    on = _row(id="on", workload="synthetic", metric="e2e_mean_ms").replace("prefix_caching = false",
                                                                             "prefix_caching = true")
    rows, _ = load_runs(_file(tmp_path, on, _row(id="off", workload="synthetic", metric="e2e_mean_ms")))
    assert _engine(rows[0], resolve_profile(rows[0])).prefix_caching is True
    assert _engine(rows[1], resolve_profile(rows[1])).prefix_caching is False
    with_cache, without = score(rows)
    assert with_cache["simulated"] is not None and with_cache["simulated"] == without["simulated"] > 0


@pytest.mark.parametrize("row, words", [
    (_row().replace('metric = "tpot_median_ms"\n', ""), ["measurement 1 (r1)", "missing", "metric"]),
    (_row(metric="tpot_p42_ms"), ["measurement 1 (r1) metric", "tpot_median_ms"]),
    (_row(profile="h100-mistral-7b-v0.3-kernels", not_covered="why"), ["exactly one of profile"]),
    (_row(workload="nowhere"), ["workload", "recorded"]),
    (_row(rate='"fast"'), ["request_rate", "inf"]),
    (_row(concurrency="true"), ["max_concurrency", "expected int"]),
])
def test_a_bad_row_names_file_row_and_field(tmp_path, row, words):
    path = _file(tmp_path, row)
    with pytest.raises(ConfigError) as exc:
        load_runs(path)
    assert str(path) in str(exc.value)
    assert all(w in str(exc.value) for w in words), str(exc.value)
    res = runner.invoke(app, ["validate-published", "--data", str(path)])
    assert res.exit_code == 2 and "error:" in res.output


def test_a_row_whose_tp_differs_from_its_profile_is_refused(tmp_path):
    rows, _ = load_runs(_file(tmp_path, _row().replace("tp = 1", "tp = 4")))
    with pytest.raises(ConfigError, match="tp 4 but profile h100-mistral-7b-v0.3-kernels is for TP1"):
        score(rows)


def test_measurement_fields_are_the_data_file_fields():
    text = DEFAULT_RUNS.read_text(encoding="utf-8")
    for name in Measurement.__dataclass_fields__:
        if name != "licence":  # taken from the row's [source.*] table
            assert f"\n{name} = " in text, name


RECORDED = '''
[workload.sent]
source = "s"
description = "three 600-token prompts whose first 512 tokens are the same text, sent 0, 4 and 8 s in"
input_lens = [600, 600, 600]
output_lens = [20, 20, 20]
send_s = [0.0, 4.0, 8.0]
shared_prefix_tokens = {shared}
'''


def _recorded(tmp_path, *rows: str, shared: int = 512, extra: str = ""):
    path = tmp_path / "runs.toml"
    path.write_text(SOURCE + WORKLOADS + RECORDED.format(shared=shared) + extra + "".join(rows), encoding="utf-8")
    return path


def _sent_row(**over) -> str:
    row = _row(workload="sent", rate='"recorded"', metric="ttft_mean_ms", **over)
    return row.replace("prefix_caching = false", "prefix_caching = true")


def test_a_recorded_workload_is_sent_at_its_times_and_its_shared_prefix_is_cached(tmp_path):
    from driftsim.validation.published import _trace

    (m,), _ = load_runs(_recorded(tmp_path, _sent_row()))
    assert "recorded times" in m.setup
    assert _trace(m, 0)["arrival_s"].to_list() == [0.0, 4.0, 8.0]
    ttft = simulate_measurement(m)["ttft"]
    # alone on the engine each time: the first prefills 600 tokens, the next two find 512 of them cached
    assert ttft[1] == pytest.approx(ttft[2], rel=1e-9) and ttft[1] < 0.75 * ttft[0]
    (fresh,), _ = load_runs(_recorded(tmp_path, _sent_row(), shared=0))
    assert simulate_measurement(fresh)["ttft"] == pytest.approx([ttft[0]] * 3, rel=1e-9)


def test_a_row_s_reported_kv_blocks_replace_the_profile_s(tmp_path):
    """Three prompts sent at once: with the profile's KV they prefill together; with 48 blocks of 16 tokens
    (the row's num_gpu_blocks, one of them vLLM's null block) only two fit, and the third waits."""
    at_once = RECORDED.format(shared=0).replace("sent]", "burst]").replace("[0.0, 4.0, 8.0]", "[0.0, 0.0, 0.0]")
    rows = [_sent_row(id="own").replace('workload = "sent"', 'workload = "burst"'),
            _sent_row(id="small").replace('workload = "sent"', 'workload = "burst"') + "num_gpu_blocks = 48\n"]
    own, small = load_runs(_recorded(tmp_path, *rows, extra=at_once))[0]
    assert small.num_gpu_blocks == 48 and own.num_gpu_blocks == 0
    roomy, tight = simulate_measurement(own)["ttft"], simulate_measurement(small)["ttft"]
    assert max(tight) > max(roomy)


@pytest.mark.parametrize("change, words", [
    (lambda t: t.replace("send_s = [0.0, 4.0, 8.0]", "send_s = [0.0, 4.0]"), ["send_s", "one send time per request"]),
    (lambda t: t.replace("send_s = [0.0, 4.0, 8.0]", "send_s = [1.0, 4.0, 8.0]"), ["send_s", "starting at 0"]),
    (lambda t: t.replace("send_s = [0.0, 4.0, 8.0]", "send_s = [0.0, 8.0, 4.0]"), ["send_s", "never decreasing"]),
    (lambda t: t.replace("shared_prefix_tokens = 512", "shared_prefix_tokens = 700"),
     ["shared_prefix_tokens", "shortest prompt"]),
    (lambda t: t.replace('request_rate = "recorded"', 'request_rate = "inf"'), ["request_rate", "recorded"]),
    (lambda t: t.replace('workload = "sent"', 'workload = "recorded"'), ["request_rate", "recorded", "does not"]),
    (lambda t: t + "num_gpu_blocks = -3\n", ["num_gpu_blocks", ">= 1"]),
])
def test_a_bad_recorded_workload_or_row_is_named(tmp_path, change, words):
    path = _recorded(tmp_path, _sent_row())
    path.write_text(change(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_runs(path)
    assert str(path) in str(exc.value)
    assert all(w in str(exc.value) for w in words), str(exc.value)
