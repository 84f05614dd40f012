"""`driftsim compare`: saved runs side by side, in the terminal and on one page."""

import re

from typer.testing import CliRunner

from driftsim.cli.main import app
from driftsim.experiments.compare import compare_rows, load_runs
from tests.test_run_report import make_run_folder


def test_compare_prints_every_run_per_tenant_and_writes_overlaid_cdfs(tmp_path):
    slow = make_run_folder(tmp_path / "slow", rate=40.0)
    fast = make_run_folder(tmp_path / "fast", rate=5.0)
    html = tmp_path / "cmp.html"
    res = CliRunner().invoke(app, ["compare", str(slow), str(fast), "--html", str(html)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for needed in ("chat", "batch", "overall", "slow", "fast", "TTFT p95 ms", "E2E p99 s", "goodput/s", "%"):
        assert needed in res.output, needed
    text = html.read_text()
    assert text.count('class="plotly-graph-div"') == 1 and not re.search(r"<script[^>]+src=", text)
    assert "overall · slow" in text and "overall · fast" in text
    # the heavier load shows in the numbers, not only in the labels
    runs = {name: g for grp, name, g in compare_rows(load_runs([slow, fast])) if grp == "overall"}
    assert runs["slow"]["ttft_p95_ms"] > runs["fast"]["ttft_p95_ms"]


def test_compare_needs_two_run_folders(tmp_path):
    one = make_run_folder(tmp_path / "a")
    res = CliRunner().invoke(app, ["compare", str(one)])
    assert res.exit_code == 2 and "two or more run folders" in res.output
    res = CliRunner().invoke(app, ["compare", str(one), str(tmp_path / "missing")])
    assert res.exit_code == 2 and "not a run folder" in res.output and "missing" in res.output


def test_same_folder_names_are_told_apart(tmp_path):
    a = make_run_folder(tmp_path / "x" / "run")
    b = make_run_folder(tmp_path / "y" / "run", seed=1)
    assert [r.name for r in load_runs([a, b])] == ["run", "run#2"]
