"""The real engine's spread across validation sessions of the same command (driftsim.validation.session_spread)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from driftsim.cli.main import app
from driftsim.sim.config import ConfigError
from driftsim.validation.session_spread import load_session, session_spread
from driftsim.validation.scoring import METRICS, OVERALL, STATS

CONFIG = {"profile": "p.toml", "policy": "fifo", "max_outstanding": None, "microbatch": None, "trace": "synthetic",
          "loads": [0.5], "seed": 0, "calibrate": True, "command": "driftsim validate ..."}
SERVER = {"max_model_len": 1024, "num_gpu_blocks": 512, "block_size": 128, "max_num_seqs": 32,
          "max_num_batched_tokens": 1024, "chunked_prefill": True}


def _run(real: float) -> dict:
    """One real run whose every statistic is ``real`` seconds."""
    return {"groups": {OVERALL: {m: {k: {"real": real, "sim": real, "err": 0.0} for k in STATS} for m in METRICS}}}


def _session(reals: list[float], abs_err: float, **config) -> dict:
    runs = [_run(x) for x in reals]
    agg = {"groups": {OVERALL: {m: {k: {"abs_err": abs_err} for k in STATS} for m in METRICS}}}
    level = {"load": 0.5, "requests": 40, "runs": runs, "aggregate": agg}
    return {"config": {**CONFIG, **config}, "server": dict(SERVER), "levels": [level],
            "all_levels": {"runs": runs, "aggregate": agg}}


def _write(tmp_path, name: str, doc: dict):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "validation.json").write_text(json.dumps(doc))
    return folder


def test_across_sessions_compares_runs_of_different_sessions_only(tmp_path):
    """Session a ran 1.0 and 1.0, b ran 1.2 and 1.2: within each session the runs agree (0 %), across they
    differ by 0.2 / 1.1; an error of 10 % is inside that, one of 30 % is not."""
    a = load_session(_write(tmp_path, "a", _session([1.0, 1.0], 0.10)))
    b = load_session(_write(tmp_path, "b", _session([1.2, 1.2], 0.30)))
    res = session_spread([a, b])
    for label in ("0.5", "all levels"):
        cell = res["levels"][label]["e2e_s:p50"]
        assert cell["within"] == 0.0
        assert cell["across"] == pytest.approx(0.2 / 1.1)
        assert cell["errors"] == [0.10, 0.30] and cell["bound"] == 0.05
    assert set(res["levels"]["all levels"]) == {"e2e_s:p50", "e2e_s:p99", "ttft_s:p50", "ttft_s:p99", "tpot_s:p50",
                                                "itl_s:p50"}


def test_sessions_of_different_commands_are_refused(tmp_path):
    a = load_session(_write(tmp_path, "a", _session([1.0, 1.1], 0.1)))
    b = load_session(_write(tmp_path, "b", _session([1.0, 1.1], 0.1, policy="priority")))
    with pytest.raises(ConfigError, match=r"b/validation.json: config.policy is 'priority'.*has 'fifo'"):
        session_spread([a, b])
    with pytest.raises(ConfigError, match="two or more"):
        session_spread([a])


def test_a_missing_or_foreign_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nowhere: no such file"):
        load_session(tmp_path / "nowhere")
    (tmp_path / "other.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(ConfigError, match=r"other.json: no 'server'"):
        load_session(tmp_path / "other.json")


def test_validate_across_prints_the_spread_and_the_errors_inside_it(tmp_path):
    a = _write(tmp_path, "mon", _session([1.0, 1.0], 0.10))
    b = _write(tmp_path, "tue", _session([1.2, 1.2], 0.30))
    out = tmp_path / "across.json"
    res = CliRunner().invoke(app, ["validate-across", str(a), str(b), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "mon" in res.output and "tue" in res.output and "18.2 %" in res.output
    assert "all levels: 6 of 12 held-out errors at or below the across-session spread" in res.output
    assert json.loads(out.read_text())["levels"]["all levels"]["ttft_s:p99"]["errors"] == [0.10, 0.30]
    bad = CliRunner().invoke(app, ["validate-across", str(a)])
    assert bad.exit_code == 2 and "two or more" in bad.output
