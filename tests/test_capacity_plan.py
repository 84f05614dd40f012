"""Plans answered by search: known minimal replica counts, load limits, GPU mixes, policies, infeasible messages."""

from __future__ import annotations

import math

import pytest

from driftsim.capacity.plan import Infeasible, PlanError, Study, best_policy, cheapest_mix, max_load, min_replicas
from driftsim.capacity.pool import SerialPool
from driftsim.capacity.slo import Target, targets_from_scenario
from driftsim.capacity.spec import resolve

# Two tenants on an A100 serving Llama-3.1-8B, 400 requests (~30 ms a run). At rate_scale 1.3 one replica
# misses chat's p99 E2E SLO by ~3x and two meet it with ~40 % headroom; at 3.0 the answer is 3.
SMALL = """
name = "small"
seed = 0
replicas = 1
profile = "a100-llama-3.1-8b"
[workload]
kind = "synthetic"
num_requests = 400
rate_scale = 1.3
[[workload.tenants]]
name = "chat"
rate_per_s = 8
input = { kind = "lognormal", mean = 600, cv = 1.0, max = 3000 }
output = { kind = "lognormal", mean = 150, cv = 1.0, max = 800 }
[[workload.tenants]]
name = "batch"
rate_per_s = 4
input = { kind = "lognormal", mean = 1000, cv = 1.0, max = 3000 }
output = { kind = "lognormal", mean = 300, cv = 1.0, max = 1000 }
[engine]
mode = "continuous"
max_num_seqs = 128
max_num_batched_tokens = 4096
max_model_len = 4096
[tenants.chat]
priority = 1
slo_ttft_s = 1.0
slo_e2e_s = 20.0
[tenants.batch]
priority = 2
slo_e2e_s = 60.0
"""


def small_scenario(tmp_path, rate_scale: float = 1.3, name: str = "small.toml") -> str:
    """Write the small scenario at ``rate_scale`` and return its path."""
    path = tmp_path / name
    path.write_text(SMALL.replace("rate_scale = 1.3", f"rate_scale = {rate_scale}"))
    return str(path)


def study(path: str, seeds=(0, 1), **kw) -> Study:
    return Study(scenario=path, seeds=list(seeds), targets=targets_from_scenario(resolve(path, {})), **kw)


def test_min_replicas_finds_two_when_one_clearly_fails(tmp_path):
    res = min_replicas(study(small_scenario(tmp_path)), SerialPool(), max_replicas=8)
    assert res.answer == {"replicas": 2}
    by_n = {p.params["replicas"]: p for p in res.probes}
    assert set(by_n) == {1, 2}  # galloping stops at the first success; nothing else needed
    assert not by_n[1].feasible and by_n[1].verdict.margin < -1  # one replica: more than 100 % over
    assert by_n[2].feasible and 0 < res.verdict.margin < 1
    assert res.verdict.binding.tenant == "chat" and res.verdict.binding.metric == "e2e_s"
    assert "with 1 replica" in res.notes[0] and "chat p99 E2E" in res.notes[0]
    table = res.table()
    assert table["replicas"].to_list() == [1, 2] and table["passes"].to_list() == [False, True]


def test_min_replicas_binary_search_between_gallop_steps(tmp_path):
    res = min_replicas(study(small_scenario(tmp_path, rate_scale=3.0)), SerialPool(), max_replicas=8)
    assert res.answer == {"replicas": 3}
    assert sorted(p.params["replicas"] for p in res.probes) == [1, 2, 3, 4]  # 1, 2, 4 galloping, then 3


def test_infeasible_plan_names_tenant_metric_and_gap(tmp_path):
    path = small_scenario(tmp_path)
    st = study(path)
    st.targets.append(Target("chat", "ttft_s", 0.01, 0.99))  # below any prefill time of a 600-token prompt
    with pytest.raises(Infeasible) as exc:
        min_replicas(st, SerialPool(), max_replicas=2)
    msg = str(exc.value)
    assert "no replica count up to 2" in msg
    assert "chat p99 TTFT" in msg and "> 0.01 s SLO" in msg and "% over" in msg
    assert exc.value.result.probes  # the runs that show it come along


def test_plan_without_any_slo_is_a_clear_error(tmp_path):
    path = small_scenario(tmp_path)
    with pytest.raises(PlanError, match="no SLO to plan for"):
        min_replicas(Study(scenario=path, seeds=[0], targets=[]), SerialPool())


def test_max_load_brackets_the_limit_within_tolerance(tmp_path):
    res = max_load(study(small_scenario(tmp_path)), SerialPool(), start=1.0, tolerance=0.05)
    scales = sorted(p.params["rate_scale"] for p in res.probes)
    passing = [p.params["rate_scale"] for p in res.probes if p.feasible]
    failing = [p.params["rate_scale"] for p in res.probes if not p.feasible]
    best = res.answer["rate_scale"]
    assert best == max(passing) and min(failing) > best
    assert min(failing) / best - 1 <= 0.05 + 1e-9
    assert res.answer["offered_rps"] > 0 and 0 <= res.verdict.margin
    assert scales[0] < 1.0  # 1.0 (i.e. 1 replica at 12 req/s) already fails, so it halved first


def test_cheapest_mix_prefers_the_cheaper_sufficient_pool(tmp_path):
    st = study(small_scenario(tmp_path), seeds=[0])
    res = cheapest_mix(st, SerialPool(), {"a100-llama-3.1-8b": 1.0, "h100-llama-3.1-8b": 1.5}, max_per_type=2)
    # one A100 fails at this load (see above); one H100 (about twice the A100's capacity) costs less than two A100s
    assert res.answer["pool"] == {"a100-llama-3.1-8b": 0, "h100-llama-3.1-8b": 1}
    assert res.answer["usd_per_hour"] == 1.5
    costs = [p.extra["usd_per_hour"] for p in res.probes]
    assert costs == sorted(costs) and costs[0] == 1.0  # cheapest first: the lone A100 was tried and failed
    assert any("capacity of one replica" in n for n in res.notes)


def test_mixed_pool_is_simulated_and_priced(tmp_path):
    st = study(small_scenario(tmp_path), seeds=[0])
    # an H100 alone is priced out, so the cheapest passing pool must mix (or stack A100s)
    res = cheapest_mix(st, SerialPool(), {"a100-llama-3.1-8b": 1.0, "h100-llama-3.1-8b": 5.0}, max_per_type=2,
                       compare_homogeneous=False)  # fmt: skip
    assert res.answer["pool"] == {"a100-llama-3.1-8b": 2, "h100-llama-3.1-8b": 0}
    mixed = [p for p in res.probes if len(p.params["pool"]) == 2]
    for p in mixed:
        overall = next(r for r in p.outcomes[0].rows if r["tenant"] == "overall")
        assert overall["replicas"] == sum(p.params["pool"].values())
        assert overall["completed"] == 400


def test_gpu_mix_rejects_profiles_of_different_models(tmp_path):
    st = study(small_scenario(tmp_path), seeds=[0])
    with pytest.raises(PlanError, match="serves one model"):
        cheapest_mix(st, SerialPool(), {"a100-llama-3.1-8b": 1.0, "l4-qwen1.5-1.8b-chat": 0.5})


def test_best_policy_maximises_the_lowest_tenant_attainment(tmp_path):
    path = small_scenario(tmp_path, rate_scale=1.6)
    st = study(path, seeds=[0])
    st.fixed = {"gateway": {"max_outstanding": 4}}  # a cap per replica, so the gateway policy decides the order
    res = best_policy(st, SerialPool(), policies=["fifo", "priority", "sjf"])
    mins = {p.params["policy"]: p.extra["min_attainment"] for p in res.probes}
    assert set(mins) == {"fifo", "priority", "sjf"}
    assert mins[res.answer["policy"]] == max(mins.values())
    assert res.probes[0].params["policy"] == res.answer["policy"]  # ranked best first
    assert all(0 <= v <= 1 and not math.isnan(v) for v in mins.values())
    assert len(set(mins.values())) > 1  # with a cap the policies differ


def test_best_policy_rejects_unknown_policy(tmp_path):
    with pytest.raises(PlanError, match="unknown policy 'lottery'; known: aging"):
        best_policy(study(small_scenario(tmp_path), seeds=[0]), SerialPool(), policies=["fifo", "lottery"])
