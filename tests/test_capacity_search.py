"""The plan searches against a stub pool with a known answer, independent of the simulator.

The stub's latency is a closed-form function of the probed parameters, so the right answer is
computed by hand and any search bug (an off-by-one bisection, a wrong direction, a cache mix-up)
shows. tests/test_capacity_plan.py covers the same searches end to end on real simulations.
"""

from __future__ import annotations

import math

import pytest

from driftsim.capacity.plan import Infeasible, Study, max_load, min_replicas
from driftsim.capacity.pool import Pool
from driftsim.capacity.runner import RunOutcome
from driftsim.capacity.slo import Target

TARGET = Target("chat", "e2e_s", threshold_s=1.0)


class StubPool(Pool):
    """Every run 'measures' chat's p99 E2E as ``latency(params)`` (seed-dependent if asked) and records the probes."""

    def __init__(self, latency):
        self.latency = latency
        self.params: list[dict] = []

    def _imap(self, specs):
        for pos, spec in enumerate(specs):
            self.params.append(dict(spec.params))
            value = self.latency(spec.params)
            check = {"tenant": "chat", "metric": "e2e_s", "quantile": 0.99, "threshold_s": 1.0,
                     "value_s": value, "attainment": 1.0 if value <= 1.0 else 0.5}
            rate = 4.0 * spec.params.get("rate_scale", 1.0)
            yield pos, RunOutcome(index=spec.index, label=spec.label, config=spec.config, params=spec.params, ok=True,
                                  rows=[{"tenant": "overall", "offered_rps": rate}], checks=[check])


def _study(seeds=(0,)) -> Study:
    return Study(scenario=None, seeds=list(seeds), targets=[TARGET])


@pytest.mark.parametrize("answer", [1, 2, 3, 7, 10, 16])
def test_min_replicas_finds_the_known_fewest(answer):
    """E2E = answer / replicas: feasible exactly from ``answer`` replicas on."""
    pool = StubPool(lambda p: answer / p["replicas"])
    res = min_replicas(_study(), pool, max_replicas=16)
    assert res.best.params == {"replicas": answer}
    assert res.answer == {"replicas": answer} and res.headline == f"{answer} replica{'s' if answer > 1 else ''}"
    probed = [p["replicas"] for p in pool.params]
    assert len(probed) == len(set(probed)), "each configuration runs once (cached), whatever the search revisits"
    assert answer in probed and (answer == 1 or answer - 1 in probed), "the boundary is probed on both sides"
    assert len(probed) <= 2 * math.ceil(math.log2(16)) + 1


def test_min_replicas_judges_the_worst_seed():
    """Seed 1 is slower: with the default criterion 'all' the answer follows the worst seed."""
    pool = StubPool(lambda p: (5 if p["seed"] == 0 else 9) / p["replicas"])
    assert min_replicas(_study(seeds=(0, 1)), pool, max_replicas=16).best.params == {"replicas": 9}
    pool = StubPool(lambda p: (5 if p["seed"] == 0 else 9) / p["replicas"])
    mean = Study(scenario=None, seeds=[0, 1], targets=[TARGET], criterion="mean")
    assert min_replicas(mean, pool, max_replicas=16).best.params == {"replicas": 7}  # mean(5, 9) / 7 = 1.0


def test_min_replicas_infeasible_names_the_bound():
    with pytest.raises(Infeasible, match="no replica count up to 4 meets every SLO"):
        min_replicas(_study(), StubPool(lambda p: 10 / p["replicas"]), max_replicas=4)


@pytest.mark.parametrize("limit", [0.37, 1.0, 3.3, 20.0])
def test_max_load_brackets_the_known_limit_within_tolerance(limit):
    """E2E = rate_scale / limit: feasible exactly up to ``limit``."""
    pool = StubPool(lambda p: p["rate_scale"] / limit)
    res = max_load(_study(), pool, tolerance=0.02)
    found = res.best.params["rate_scale"]
    assert found <= limit and found >= limit / 1.02, (found, limit)
    assert res.best.verdict.feasible
    assert res.answer["offered_rps"] == pytest.approx(4.0 * found)
