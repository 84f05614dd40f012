"""The DriftSched two-phase workload generator."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from driftsim.admission.estimation import classify_category
from driftsim.traces.driftsched import (
    LEARNING_MIX,
    PROMPTS,
    STRESS_MIX,
    TOKEN_LIMITS,
    TOPICS,
    OutputLengthDist,
    driftsched_workload,
)
from driftsim.traces.schema import REQUEST_SCHEMA

HEADER = re.compile(r"^Request ID (\d+)\. Tenant tenant-(\w+)\. Job type (\w+)\. ")


@pytest.fixture(scope="module")
def trace() -> pl.DataFrame:
    return driftsched_workload(seed=0)


def test_counts_and_schema(trace):
    assert trace.height == 3000
    assert trace.schema == pl.Schema(REQUEST_SCHEMA)
    assert trace["request_id"].to_list() == list(range(3000))


def test_phase_gaps_are_in_range(trace):
    arrival = trace["arrival_s"].to_numpy()
    gaps = np.diff(np.concatenate([[0.0], arrival]))
    learn, pause, stress = gaps[:1000], gaps[1000], gaps[1001:]
    assert learn.min() >= 0.05 and learn.max() <= 0.15  # includes the first: the original sleeps first
    assert 15.005 <= pause <= 15.03  # phase_gap_s plus one stress gap
    assert stress.min() >= 0.005 and stress.max() <= 0.03
    assert np.all(np.diff(arrival) > 0)


def test_stress_start_override_moves_only_phase_two():
    base = driftsched_workload(seed=5, n_learning=50, n_stress=50)
    moved = driftsched_workload(seed=5, n_learning=50, n_stress=50, stress_start_s=500.0)
    assert moved.drop("arrival_s").equals(base.drop("arrival_s"))
    assert moved["arrival_s"][:50].equals(base["arrival_s"][:50])
    shift = moved["arrival_s"][50:].to_numpy() - base["arrival_s"][50:].to_numpy()
    assert np.allclose(shift, 500.0 - (base["arrival_s"][49] + 15.0))
    # never before the last learning arrival
    early = driftsched_workload(seed=5, n_learning=50, n_stress=50, stress_start_s=0.0)
    assert early["arrival_s"][50] > early["arrival_s"][49]


def mix_of(trace: pl.DataFrame) -> dict[str, float]:
    cats = [classify_category(p) for p in trace["prompt"]]
    return {c: cats.count(c) / len(cats) for c in TOKEN_LIMITS}


def test_mix_proportions_per_phase(trace):
    learning = mix_of(trace.filter(pl.col("request_id") < 1000))
    stress = mix_of(trace.filter(pl.col("request_id") >= 1000))
    for c in TOKEN_LIMITS:
        assert learning[c] == pytest.approx(LEARNING_MIX[c], abs=0.05)
        assert stress[c] == pytest.approx(STRESS_MIX[c], abs=0.04)


def test_tenants_uniform_with_their_priorities(trace):
    counts = dict(trace.group_by("tenant").len().iter_rows())
    assert set(counts) == {"premium", "standard", "batch"}
    assert all(abs(n / 3000 - 1 / 3) < 0.03 for n in counts.values())
    prio = dict(trace.select("tenant", "priority").unique().iter_rows())
    assert prio == {"premium": 1, "standard": 2, "batch": 3}


def test_header_present_and_consistent(trace):
    for rid, tenant, prompt, max_tokens, out in trace.select(
        "request_id", "tenant", "prompt", "max_tokens", "output_tokens"
    ).iter_rows():
        m = HEADER.match(prompt)
        assert m, prompt
        assert int(m.group(1)) == rid and m.group(2) == tenant
        job = m.group(3)
        assert prompt[m.end() :] in PROMPTS[job]
        assert classify_category(prompt) == job
        assert max_tokens == TOKEN_LIMITS[job]
        assert 1 <= out <= max_tokens


def test_prompt_lists_are_topics_times_five_templates():
    assert len(TOPICS) == 59
    assert all(len(v) == 59 * 5 for v in PROMPTS.values())
    assert PROMPTS["report"][0].startswith("Write a detailed report on DNS, including architecture")


def test_input_tokens_use_the_counter(trace):
    assert trace["input_tokens"].to_list() == [len(p.split()) for p in trace["prompt"]]

    class Chars:
        def count(self, text: str) -> int:
            return len(text)

    small = driftsched_workload(seed=1, n_learning=5, n_stress=5, counter=Chars())
    assert small["input_tokens"].to_list() == [len(p) for p in small["prompt"]]


def test_output_lengths_follow_the_configured_distribution():
    all_cap = {j: OutputLengthDist(p_cap=1.0) for j in TOKEN_LIMITS}
    t = driftsched_workload(seed=2, n_learning=100, n_stress=100, output_dists=all_cap)
    assert t["output_tokens"].to_list() == t["max_tokens"].to_list()
    default = driftsched_workload(seed=2, n_learning=1000, n_stress=0)
    frac = (default["output_tokens"] / default["max_tokens"]).mean()
    assert 0.85 < frac < 1.0  # mostly truncated at max_tokens by default


def test_slos_are_null_unless_given(trace):
    assert trace["slo_e2e_s"].null_count() == 3000
    t = driftsched_workload(seed=0, n_learning=10, n_stress=0, slo_e2e_s={"premium": 5.0})
    expected = [5.0 if ten == "premium" else None for ten in t["tenant"]]
    assert t["slo_e2e_s"].to_list() == expected


def test_deterministic_for_a_seed(trace):
    assert driftsched_workload(seed=0).equals(trace)
    assert not driftsched_workload(seed=1).equals(trace)


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="unknown job types"):
        driftsched_workload(learning_mix={"poetry": 1.0})
    with pytest.raises(ValueError, match="stress_gap_s"):
        driftsched_workload(stress_gap_s=(0.1, 0.01))
