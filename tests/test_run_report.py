"""The single-run report: one offline page from a run folder, rendered in headless Chromium."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from driftsim.errors import ConfigError
from driftsim.experiments.run_report import load_run, write_run_report
from driftsim.sim.config import EngineConfig
from driftsim.sim.run import simulate
from driftsim.sim.sampling import EngineSampler
from driftsim.sim.scenario_folder import save_run
from driftsim.traces.bench_workload import BenchWorkload, generate_bench
from driftsim.traces.transform import set_slos
from tests.factories import linear_cost

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
STRICT = os.environ.get("DRIFTSIM_STRICT") == "1"


def make_run_folder(folder: Path, *, seed: int = 0, rate: float = 20.0) -> Path:
    trace = generate_bench(BenchWorkload(num_prompts=200, request_rate=rate, input_len=200, output_len=40,
                                         range_ratio=0.5, tenants={"chat": 1, "batch": 1}, seed=seed))
    trace = set_slos(trace, {"chat": (0.2, 2.0), "batch": (None, 5.0)})
    sampler = EngineSampler()
    res = simulate(trace, cost=linear_cost(), engine=EngineConfig(max_num_seqs=8), num_blocks=400,
                   observers=[sampler])
    save_run(folder, res, {"workload": "test"})
    sampler.write(folder)
    return folder


@pytest.fixture(scope="module")
def report_path(tmp_path_factory) -> Path:
    folder = make_run_folder(tmp_path_factory.mktemp("run") / "run")
    return write_run_report(folder, folder / "report.html")


def test_report_is_one_offline_page_with_the_table_and_every_figure(report_path):
    text = report_path.read_text()
    assert report_path.stat().st_size > 1_000_000  # plotly.js inlined
    assert not re.search(r"<script[^>]+src=", text)  # no external scripts: opens offline
    assert text.count('class="plotly-graph-div"') == 3  # CDFs, latency over time, engine state
    for needed in ("TTFT p95 (ms)", "E2E p99 (s)", "goodput/s", "chat", "batch", "overall", "%",
                   "batch size (requests running)", "KV cache used (fraction)"):
        assert needed in text, needed


def test_summary_only_folder_and_missing_folder(tmp_path):
    folder = make_run_folder(tmp_path / "run")
    (folder / "requests.parquet").unlink()
    (folder / "engine_samples.parquet").unlink()
    text = write_run_report(folder, tmp_path / "r.html").read_text()
    assert "kept only its summary" in text and "No engine samples" in text and "plotly-graph-div" not in text
    with pytest.raises(ConfigError, match="not a run folder"):
        load_run(tmp_path / "nothing")


def _chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={user_dir}", "--virtual-time-budget=1000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90)


def test_report_renders_in_headless_chromium(report_path, tmp_path):
    if CHROMIUM is None:
        if STRICT:
            pytest.fail("DRIFTSIM_STRICT=1 and chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); DRIFTSIM_STRICT=1 makes this fail")
    dom = _chromium("--dump-dom", report_path.resolve().as_uri(), user_dir=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="plot-container plotly"') == 3  # every figure drawn by plotly.js
    assert dom.stdout.count('class="main-svg"') >= 6 and "<path" in dom.stdout
