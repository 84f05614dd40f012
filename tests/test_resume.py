"""Nothing measured is lost: atomic writes, the per-request journal, a replay killed with
SIGKILL and then resumed (no request lost or duplicated), re-scoring without a server,
and a replay whose server dies (the rest recorded as failed, with the reason)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from driftsim.profiling.gateway import ReplayGateway, StreamingClient, run_replay
from driftsim.profiling.journal import JournalError, ReplayJournal, atomic_write_text, read_journal, trace_key
from driftsim.errors import ConfigError
from driftsim.profiling.server_facts import read_server_facts
from driftsim.profiling.trace_replay import replay_journaled
from driftsim.sim.config import GatewayConfig
from driftsim.validation.plan import ValidationPlan
from driftsim.validation.rescore import rescore
from driftsim.validation.run import run_validation
from driftsim.sim.policies import make_policy
from tests.factories import linear_cost, make_trace
from tests.test_validation import MockEngine, client_for, requests

REPO = Path(__file__).resolve().parent.parent
SAVED = REPO / "tests" / "data" / "saved-validation"
N = 30


def trace() -> pl.DataFrame:
    return make_trace([(0.05 * i, 20 + i, 4 + i % 3) for i in range(N)], tenants=["a", "b", "c"] * (N // 3))


def validate(engine, folder: Path, *, resume=False):
    client = client_for(engine)
    facts = read_server_facts(client, max_num_seqs=8, max_num_batched_tokens=256)
    plan = ValidationPlan(warmup=False, overhead_s=0.001, out=folder.parent, resume=resume)
    return run_validation(plan, client=client, facts=facts, cost=linear_cost(), traces=[(1.0, trace())],
                          capacity=10.0)


CHILD = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.test_resume import validate
from tests.test_validation import MockEngine
validate(MockEngine(ttft_s=0.01, tpot_s=0.01), Path({folder!r}))
"""


def test_a_replay_killed_mid_way_resumes_without_losing_or_repeating_a_request(tmp_path):
    folder = tmp_path / "replays"
    journal = folder / "level-0-rep-0.jsonl"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO), folder=str(folder))], cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count("\n") >= 10:  # header + 9 requests
            break
        assert child.poll() is None, "the replay ended before it could be killed"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    before, dropped = read_journal(journal, trace=trace_key(trace()["request_id"]))
    assert 9 <= len(before) < N and dropped == 0

    eng = MockEngine(ttft_s=0.01, tpot_s=0.01)
    res = validate(eng, folder, resume=True)
    assert not res.interrupted
    real = res.levels[0].real[0]
    assert real.height == N and real["request_id"].n_unique() == N
    assert (real["status"] == "ok").all()
    # only the requests the journal lacked went to the server again
    assert eng.requests == N - len(before)
    after, _ = read_journal(journal)
    assert sorted(after) == list(range(N))
    # kept requests are exactly what the killed run measured
    kept = real.filter(pl.col("request_id").is_in([before[i]["request_id"] for i in before]))
    assert sorted(kept["first_token_s"].to_list()) == sorted(before[i]["first_token_s"] for i in before)
    # ... and re-scoring from the saved files alone gives the same per-request frame
    again = rescore(tmp_path, cost=linear_cost())
    cols = ["request_id", "status", "released_s", "first_token_s", "finish_s", "token_times", "attempts"]
    assert again.levels[0].real[0].select(cols).equals(real.select(cols))
    assert again.levels[0].scores[0]["requests"] == res.levels[0].scores[0]["requests"]


def test_ctrl_c_then_rescore_then_resume(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt(engine):
        if engine.requests == 8:
            import asyncio

            asyncio.get_running_loop().call_later(0.02, signal.raise_signal, signal.SIGINT)

    folder = tmp_path / "replays"
    try:
        first = validate(MockEngine(ttft_s=0.01, tpot_s=0.01, on_request=interrupt), folder)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert first.interrupted
    done, _ = read_journal(folder / "level-0-rep-0.jsonl")
    assert 0 < len(done) < N
    # re-scored as it stands: what finished, and the rest kept as not_sent
    partial = rescore(tmp_path, cost=linear_cost()).levels[0].real[0]
    assert partial.height == N and (partial["status"] == "ok").sum() == len(done)
    eng = MockEngine(ttft_s=0.01, tpot_s=0.01)
    res = validate(eng, folder, resume=True)
    real = res.levels[0].real[0]
    assert real.height == N and real["request_id"].n_unique() == N and (real["status"] == "ok").all()
    assert eng.requests == N - len(done)


def test_rescore_keeps_requests_missing_from_a_journal_as_not_sent(tmp_path):
    folder = tmp_path / "replays"
    validate(MockEngine(ttft_s=0.005, tpot_s=0.002), folder)
    journal = folder / "level-0-rep-0.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:-5]) + "\n" + lines[-5][: len(lines[-5]) // 2])  # a line cut by a kill
    res = rescore(tmp_path, cost=linear_cost())
    real = res.levels[0].real[0]
    assert real.height == N
    lost = real.filter(pl.col("status") == "not_sent")
    assert lost.height == 5 and lost["error"].str.contains("not in the journal").all()
    assert res.interrupted and any("5 request(s) not in its journal" in n for n in res.notes)


def test_journal_refuses_another_trace_and_a_second_run_without_resume(tmp_path):
    folder = tmp_path / "replays"
    validate(MockEngine(ttft_s=0.005, tpot_s=0.002), folder)
    with pytest.raises(JournalError, match="written for another trace"):
        read_journal(folder / "level-0-rep-0.jsonl", trace="0123456789abcdef")
    with pytest.raises(ConfigError, match="already holds a validation: pass --resume"):
        validate(MockEngine(ttft_s=0.005, tpot_s=0.002), folder)
    with pytest.raises(JournalError, match="pass --resume"):  # the journal itself refuses too
        replay_journaled(trace(), folder / "level-0-rep-0.jsonl", resume=False, client=None, model="tiny",
                         gateway=GatewayConfig())
    with pytest.raises(JournalError, match="nothing to re-score|no saved validation"):
        rescore(tmp_path / "elsewhere")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "report.json"
    atomic_write_text(path, '{"ok": 1}')

    def broken(p: Path):
        p.write_text('{"half')
        raise OSError("disk full")

    from driftsim.profiling.journal import atomic_write

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_a_dead_server_stops_the_replay_and_every_unsent_request_is_recorded(tmp_path, monkeypatch):
    calls = {"n": 0}
    eng = MockEngine(ttft_s=0.002, tpot_s=0.001)

    async def dies_after_three(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/completions":
            calls["n"] += 1
            if calls["n"] > 3:
                raise httpx.ConnectError("[Errno 111] Connection refused")
        return await eng(request)

    from driftsim.profiling.http import OpenAIClient

    client = OpenAIClient("http://engine.test", transport=httpx.MockTransport(eng.plain),
                          async_transport=httpx.MockTransport(dies_after_three))
    reqs = requests([(0.02 * i if i < 5 else 0.1 * i, 10 + i, 3) for i in range(20)])  # the trace spans 1.9 s
    journal = ReplayJournal(tmp_path / "j.jsonl", trace="t", requests=20)
    gw = ReplayGateway(reqs, policy=make_policy("fifo"), client=StreamingClient(client, model="tiny", clock=lambda: 0),
                       on_record=journal.record)
    # the replay's waits for arrivals, as asked (a busy machine can only shorten the later ones)
    waits, sleep = [], asyncio.sleep

    async def recorded_sleep(delay, *a, **kw):
        if delay > 0.015:  # longer than the replay's 10 ms polls and the mock engine's token gaps
            waits.append(delay)
        return await sleep(delay, *a, **kw)

    monkeypatch.setattr(asyncio, "sleep", recorded_sleep)
    records, interrupted = run_replay(gw)
    journal.close()
    monkeypatch.undo()
    assert sum(waits) < 1.2, f"stopped, not waiting through the 1.9 s trace: {waits}"
    assert not interrupted and gw.stopped and "3 connections refused in a row" in gw.stopped
    statuses = [r.status for r in records]
    assert statuses[:3] == ["ok"] * 3 and set(statuses[3:]) == {"error"}
    unsent = [r for r in records if r.error and r.error.startswith("not sent: the server stopped answering")]
    assert len(unsent) >= 10
    # stopped, not waiting through the rest of the trace: the unsent requests were never released
    assert all(math.isnan(r.released_s) for r in unsent)
    rows, _ = read_journal(tmp_path / "j.jsonl")
    assert sorted(rows) == list(range(20))  # every request is on disk with its outcome


def test_cli_resume_and_rescore(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from driftsim.cli.validate_cmds import validate
    from tests.test_secrets import KEY, KeyServer, cli_app

    monkeypatch.setenv("DRIFTSIM_API_KEY", KEY)
    out = tmp_path / "v"
    args = ["--profile", "l4-qwen1.5-1.8b-chat-linear", "--requests", "6", "--loads", "0.5", "--no-calibrate",
            "--max-num-seqs", "8", "--max-num-batched-tokens", "256", "--out", str(out)]
    app = cli_app(validate)
    with KeyServer() as server:
        res = CliRunner().invoke(app, ["--endpoint", server.url, *args])
        assert res.exit_code == 0, res.output
        first = pl.read_parquet(out / "real_requests.parquet")
        sent = server.completions
        res = CliRunner().invoke(app, ["--endpoint", server.url, *args])
        assert res.exit_code == 2 and "already holds a validation" in " ".join(res.output.split())
        res = CliRunner().invoke(app, ["--endpoint", server.url, *args, "--resume"])
        assert res.exit_code == 0, res.output
        # nothing left to replay: only the warm-up reached the server again (no probe, no replay)
        assert server.completions - sent == 6
    (out / "report.html").unlink()
    res = CliRunner().invoke(app, ["--rescore", str(out)])  # no server, no profile needed
    assert res.exit_code == 0, res.output
    assert (out / "report.html").is_file()
    again = pl.read_parquet(out / "real_requests.parquet")
    cols = ["request_id", "status", "first_token_s", "token_times"]
    assert again.select(cols).equals(first.select(cols))
    res = CliRunner().invoke(app, ["--rescore", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "nothing to re-score" in " ".join(res.output.split())


def test_rescore_fits_the_calibration_again_to_the_saved_calibration_replay(tmp_path):
    """With ``calibration_requests.parquet`` beside the journals, re-scoring fits the calibration
    again (held out as before): a changed saved correction is replaced by the fit."""
    import json

    folder = tmp_path / "replays"
    client = client_for(MockEngine(ttft_s=0.01, tpot_s=0.004))
    facts = read_server_facts(client, max_num_seqs=8, max_num_batched_tokens=256)
    res = run_validation(ValidationPlan(warmup=False, overhead_s=0.001, out=tmp_path), client=client, facts=facts,
                         cost=linear_cost(), traces=[(1.0, trace())], capacity=10.0, calibration=trace())
    res.calibration_frame.write_parquet(tmp_path / "calibration_requests.parquet")
    state = json.loads((folder / "state.json").read_text())
    fitted = state["calibration"]["correction"]
    state["calibration"]["correction"] = {"knots": [0, 8], "values_s": [0.5, 0.5], "prefill_step_s": 0.5}
    (folder / "state.json").write_text(json.dumps(state))
    again = rescore(tmp_path, cost=linear_cost())
    got = again.calibration["correction"]
    assert got["knots"] == fitted["knots"] and got["values_s"] == pytest.approx(fitted["values_s"])
    assert got["prefill_step_s"] == pytest.approx(fitted["prefill_step_s"])
    assert any("calibration fitted again" in n for n in again.notes)
    (tmp_path / "calibration_requests.parquet").unlink()  # without the replay: the saved correction
    assert rescore(tmp_path, cost=linear_cost()).calibration["correction"]["values_s"] == [0.5, 0.5]


def test_a_session_saved_in_an_earlier_format_is_refused_naming_its_folder(tmp_path):
    """A session saved before the format version (no ``format_version``; it may carry a step offset,
    floor and per-sequence cost this version no longer models) is refused, by the library and by
    ``driftsim validate --rescore``, with a message naming its folder, never re-scored another way."""
    from typer.testing import CliRunner

    from driftsim.cli.validate_cmds import validate as validate_cmd
    from tests.test_secrets import cli_app

    old = tmp_path / "old"
    shutil.copytree(SAVED, old)
    assert rescore(old, cost=linear_cost()).levels  # the current format re-scores
    path = old / "replays" / "state.json"
    state = json.loads(path.read_text())
    del state["format_version"], state["driftsim_version"]
    path.write_text(json.dumps({**state, "step_offset_s": 0.002, "step_floor_s": 0.0, "step_per_seq_s": 0.0}))
    with pytest.raises(JournalError, match=r"old/replays: this saved validation predates the current format"):
        rescore(old, cost=linear_cost())
    path.write_text(json.dumps({**state, "driftsim_version": "0.1.0"}))  # versionless, no offsets: refused too
    with pytest.raises(JournalError, match=r"predates the current format \(version 1\) \(written by driftsim 0\.1\.0\)"):
        rescore(old, cost=linear_cost())
    res = CliRunner().invoke(cli_app(validate_cmd), ["--rescore", str(old)])
    assert res.exit_code == 2 and "predates the current format" in " ".join(res.output.split())
    with pytest.raises(JournalError, match="predates the current format"):  # nor is it resumed
        validate(MockEngine(ttft_s=0.005, tpot_s=0.002), old / "replays", resume=True)


def _sessions_trace(think_s: float) -> pl.DataFrame:
    """Three sessions of three turns; every turn's arrival is its session's start (a turn leaves when
    its previous one is answered, never by the clock alone)."""
    rows, sid, turn, think = [], [], [], []
    for s in range(3):
        for t in range(1, 4):
            rows.append((0.05 * s, 20 + 3 * s + t, 4))
            sid.append(s), turn.append(t), think.append(0.0 if t == 1 else think_s)
    return make_trace(rows, session_id=sid, turn=turn, think_s=think)


def test_a_resumed_replay_sends_session_turns_after_the_previous_answer_as_an_uninterrupted_one_does(tmp_path):
    """Killed with session 0 at turn 2, session 1 at turn 1 and session 2's first turn in flight: the
    resumed replay sends each remaining turn ``think_s`` after its previous turn's answer, read from
    the journal where that turn finished before the kill, else after it is sent again and answered;
    and the simulator's input for that replay (sim_trace) has each turn arrive then."""
    from driftsim.validation.replay_sim import sim_trace

    think = 0.3
    tr = _sessions_trace(think)
    journal = tmp_path / "j.jsonl"
    common = dict(model="tiny", gateway=GatewayConfig(), vocab_size=8192)
    replay_journaled(tr, journal, resume=False, client=client_for(MockEngine(ttft_s=0.01, tpot_s=0.005)), **common)
    header, *lines = journal.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert all(r["settled_s"] == r["delivered_s"] for r in rows)  # completed: settled on delivery
    # the kill: what the journal held then (rows 0, 1 = session 0 turns 1, 2; row 3 = session 1 turn 1)
    journal.write_text("\n".join([header] + [json.dumps(r) for r in rows if r["idx"] in (0, 1, 3)]) + "\n")

    engine = MockEngine(ttft_s=0.01, tpot_s=0.005)
    run = replay_journaled(tr, journal, resume=True, client=client_for(engine), **common)
    real = run.frame
    assert engine.requests == 6 and (real["status"] == "ok").all()
    released, delivered = real["released_s"].to_list(), real["delivered_s"].to_list()
    st = dict(sim_trace(tr, real, gateway_holds=False).select("request_id", "arrival_s").iter_rows())
    for i in range(tr.height):
        if tr["turn"][i] == 1:
            continue
        gap = released[i] - delivered[i - 1]  # the previous turn's answer, kept or new
        assert think - 1e-3 <= gap < think + 0.1, (i, gap)
        assert st[tr["request_id"][i]] >= delivered[i - 1] + think - 1e-3, (i, st)
    assert read_journal(journal)[0].keys() == set(range(tr.height))
