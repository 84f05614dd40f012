"""`driftsim simulate` with vllm bench serve's workload flags, the closed-loop client and the run report, end to end
through the command line."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from driftsim.cli.main import app
from driftsim.sim.sampling import EngineSampler
from driftsim.sim.scenario import Scenario, run_scenario
from driftsim.traces.loaders import load_trace

runner = CliRunner()
CONV = str(Path(__file__).resolve().parent.parent / "traces" / "data" / "azure2023_conv.csv")
SMALL = ["--input-len", "64", "--output-len", "8"]  # short requests: the runs take a fraction of a second


def _simulate(args: list[str], out: Path) -> tuple[str, dict, pl.DataFrame]:
    res = runner.invoke(app, ["simulate", *args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    return res.output, summary, pl.read_parquet(out / "requests.parquet")


def _gaps(requests: pl.DataFrame) -> np.ndarray:
    return np.diff(np.sort(requests["arrival_s"].to_numpy()))


def test_request_rate_and_num_prompts_generate_that_many_requests_at_that_rate(tmp_path):
    out, summary, req = _simulate(["--request-rate", "4", "--num-prompts", "100"], tmp_path / "o")
    assert req.height == 100 and summary["summary"]["overall"]["requests"] == 100
    assert summary["context"]["engine"]["mode"] == "continuous" and "ran: continuous engine" in out
    assert summary["context"]["scenario"]["workload"]["kind"] == "bench"
    gaps = _gaps(req)
    # the mean of n exponential gaps of mean 1/4 s lies within 4 standard errors (0.25 / sqrt(n)) of 0.25 s
    assert abs(gaps.mean() - 0.25) < 4 * 0.25 / math.sqrt(len(gaps))
    assert (req["input_tokens"] == 1024).all() and (req["output_tokens"] == 128).all()  # vllm bench serve's defaults


def test_burstiness_sets_the_gap_cv_as_a_gamma_process_must(tmp_path):
    cv = {}
    for b in ("0.25", "1", "4"):
        _, _, req = _simulate(["--request-rate", "50", "--num-prompts", "1500", "--burstiness", b, *SMALL], tmp_path / b)
        gaps = _gaps(req)
        cv[float(b)] = gaps.std() / gaps.mean()
    for b, value in cv.items():  # gamma shape k: CV 1 / sqrt(k)
        assert value == pytest.approx(1 / math.sqrt(b), rel=0.2), (b, value)
    assert cv[0.25] > cv[1] > cv[4]


def test_request_rate_retimes_a_trace_and_num_prompts_takes_its_first_n(tmp_path):
    _, summary, req = _simulate(["--trace", CONV, "--num-prompts", "300", "--request-rate", "10",
                                 "--burstiness", "inf"], tmp_path / "o")  # fmt: skip
    assert req.height == 300
    gaps = _gaps(req)
    assert np.allclose(gaps, 0.1)  # burstiness inf: evenly spaced at 1 / rate
    trace = load_trace(CONV)
    assert trace.height > 300 and summary["context"]["scenario"]["workload"]["kind"] == "trace"
    kept = req.sort("request_id")["input_tokens"].to_list()
    assert kept == trace.sort("arrival_s", maintain_order=True).head(300).sort("request_id")["input_tokens"].to_list()


def test_the_same_flags_and_seed_give_the_same_rows(tmp_path):
    args = ["--request-rate", "8", "--num-prompts", "60", "--range-ratio", "0.5", "--tenants", "a=1,b=3", *SMALL]
    _, _, one = _simulate([*args, "--seed", "5"], tmp_path / "1")
    _, _, two = _simulate([*args, "--seed", "5"], tmp_path / "2")
    _, _, other = _simulate([*args, "--seed", "6"], tmp_path / "3")
    assert one.equals(two) and not one.equals(other)
    assert set(one["tenant"].unique()) == {"a", "b"}
    assert one["input_tokens"].min() >= 32 and one["input_tokens"].max() <= 96


def _in_flight_max(req: pl.DataFrame) -> int:
    send, finish = req["arrival_s"].to_numpy(), req["finish_s"].to_numpy()
    return max(int(((send <= t) & (finish > t)).sum()) for t in send)


def test_max_concurrency_never_has_more_requests_in_flight(tmp_path):
    out, summary, req = _simulate(["--num-prompts", "40", "--max-concurrency", "2", *SMALL], tmp_path / "o")
    assert req.height == 40 and (req["status"] == "ok").all()
    assert _in_flight_max(req) == 2  # open loop, all 40 would be in flight at t = 0 (request rate inf)
    assert "closed-loop client: at most 2 requests in flight" in out
    assert summary["summary"]["closed_loop"]["max_concurrency"] == 2


def test_think_time_delays_each_send_after_a_completion(tmp_path):
    _, _, req = _simulate(["--num-prompts", "10", "--max-concurrency", "1", "--think-s", "0.5", *SMALL], tmp_path / "o")
    req = req.sort("request_id")
    assert np.allclose(req["arrival_s"].to_numpy()[1:], req["finish_s"].to_numpy()[:-1] + 0.5)


def _plotted(html: str, name: str) -> list[float]:
    """The y values of the first trace of the figure whose subplot is titled ``name``, from the page's plotly calls."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*", html):
        data, end = decoder.raw_decode(html, m.end())
        layout, _ = decoder.raw_decode(html, html.index("{", end))
        if any(a.get("text") == name for a in layout.get("annotations", [])):
            y = data[0]["y"]
            if isinstance(y, dict):  # plotly's typed-array encoding
                return np.frombuffer(base64.b64decode(y["bdata"]), dtype=np.dtype(y["dtype"])).tolist()
            return list(y)
    raise AssertionError(f"no figure with a panel {name!r}")


def test_report_writes_engine_samples_and_a_page_plotting_the_engines_batch_sizes(tmp_path):
    folder = tmp_path / "o"
    out, summary, req = _simulate(["--request-rate", "20", "--num-prompts", "80", *SMALL, "--report"], folder)
    samples = pl.read_parquet(folder / "engine_samples.parquet")
    # the engine's own batch sizes: the same scenario run again in the library with a sampler attached
    engine = EngineSampler()
    run_scenario(Scenario(name="vllm", raw=summary["context"]["scenario"]), observers=[engine])
    assert samples["running"].to_list() == engine.frame()["running"].to_list()
    assert samples["running"].max() > 1 and samples["running"].max() <= summary["context"]["engine"]["max_num_seqs"]
    html = (folder / "report.html").read_text()
    assert _plotted(html, "batch size (requests running)") == samples["running"].to_list()
    assert "report written to" in out


def test_report_with_a_closed_loop_samples_the_settled_run_only(tmp_path):
    folder = tmp_path / "o"
    _simulate(["--num-prompts", "30", "--max-concurrency", "3", *SMALL, "--report"], folder)
    samples = pl.read_parquet(folder / "engine_samples.parquet")
    assert samples["running"].max() <= 3
    assert samples["t_s"].n_unique() == samples.height  # one run's commits, not every pass's


def test_report_command_on_a_simulate_folder(tmp_path):
    folder = tmp_path / "o"
    _simulate(["--request-rate", "20", "--num-prompts", "50", *SMALL], folder)
    res = runner.invoke(app, ["report", str(folder)])
    assert res.exit_code == 0, res.output
    html = (folder / "report.html").read_text()
    assert html.count('class="plotly-graph-div"') == 2  # CDFs and latency over time; no engine samples kept
    assert "No engine samples" in html and "driftsim simulate --report" in html
    res = runner.invoke(app, ["report", str(folder), "--price", "x=1"])
    assert res.exit_code == 2 and "--price" in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing" in res.output


@pytest.mark.parametrize("args, flags", [
    (["--trace", CONV, "--input-len", "100"], ("--trace", "--input-len")),
    (["--trace", CONV, "--range-ratio", "0.5"], ("--trace", "--range-ratio")),
    (["--num-prompts", "10", "--max-requests", "10"], ("--max-requests", "--num-prompts")),
    (["--trace", CONV, "--request-rate", "3", "--rate-scale", "2"], ("--rate-scale", "--request-rate")),
    (["--trace", CONV, "--burstiness", "2"], ("--burstiness", "--request-rate")),
    (["--think-s", "1"], ("--think-s", "--max-concurrency")),
    (["--max-concurrency", "2", "--summary-only"], ("--max-concurrency", "--summary-only")),
    (["--range-ratio", "1"], ("--range-ratio",)),
    (["--request-rate", "0"], ("--request-rate",)),
])  # fmt: skip
def test_flags_that_conflict_are_refused_naming_both(tmp_path, args, flags):
    res = runner.invoke(app, ["simulate", *args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    for flag in flags:
        assert flag in res.output, (flag, res.output)
    assert not (tmp_path / "o").exists()  # nothing written


def test_request_rate_inf_sends_everything_at_once(tmp_path):
    _, summary, req = _simulate(["--request-rate", "inf", "--num-prompts", "20", *SMALL], tmp_path / "o")
    assert (req["arrival_s"] == 0).all() and summary["context"]["scenario"]["workload"]["request_rate"] == "inf"


def _scenario(tmp_path: Path, workload: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(f'name = "bench"\nprofile = "l4-qwen1.5-1.8b-chat"\n[engine]\nmode = "continuous"\n[workload]\n{workload}\n')
    return path


def test_a_scenario_file_describes_a_bench_workload_and_a_closed_loop(tmp_path):
    from driftsim.sim.scenario import build_trace, load_scenario

    path = _scenario(tmp_path, 'kind = "bench"\nnum_prompts = 12\nrequest_rate = "inf"\ninput_len = 32\n'
                               'output_len = 4\nmax_concurrency = 3\nthink_s = 0.25')  # fmt: skip
    sc = load_scenario(path)
    trace, _ = build_trace(sc)
    assert trace.height == 12 and (trace["arrival_s"] == 0).all() and (trace["input_tokens"] == 32).all()
    result, context = run_scenario(sc)
    assert context["closed_loop"] == {"max_concurrency": 3, "think_s": 0.25}
    assert _in_flight_max(result.requests) == 3


@pytest.mark.parametrize("workload, message", [
    ('kind = "driftsched"\ninput_len = 10', "input_len: shapes a generated workload"),
    ('kind = "bench"\nrequest_rate = 2.0\nrate_scale = 2.0', "drop rate_scale"),
    ('kind = "bench"\nthink_s = 1.0', "think_s: the pause before a freed slot is used needs max_concurrency"),
    ('kind = "bench"\nrequest_rate = "fast"', 'request_rate: expected a number > 0 or "inf"'),
    ('kind = "bench"\nrange_ratio = 1.5', "range_ratio: expected a number in [0, 1)"),
])  # fmt: skip
def test_a_scenario_with_bad_bench_keys_is_refused_naming_the_key(tmp_path, workload, message):
    from driftsim.errors import ConfigError
    from driftsim.sim.scenario import load_scenario

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_scenario(_scenario(tmp_path, workload))


def test_summary_only_and_stream_keep_their_meaning_with_bench_flags(tmp_path):
    args = ["--request-rate", "10", "--num-prompts", "30", *SMALL]
    res = runner.invoke(app, ["simulate", *args, "--summary-only", "--report", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "s" / "requests.parquet").exists() and (tmp_path / "s" / "engine_samples.parquet").exists()
    assert "kept only its summary" in (tmp_path / "s" / "report.html").read_text()
    res = runner.invoke(app, ["simulate", *args, "--stream", "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    _, _, memory = _simulate(args, tmp_path / "m")
    assert pl.read_parquet(tmp_path / "t" / "requests.parquet").sort("request_id").equals(memory.sort("request_id"))
