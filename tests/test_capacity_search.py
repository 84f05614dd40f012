"""The plan searches (fewest replicas, highest load, cheapest GPU mix) against stub pools with known
answers, independent of the simulator.

The stub's latency is a closed-form function of the probed parameters, so the right answer is
computed by hand and any search bug (an off-by-one bisection, a wrong direction, a cache mix-up)
shows. tests/test_capacity_plan.py covers the same searches end to end on real simulations.
"""

from __future__ import annotations

import math

import pytest

from driftsim.capacity.plan import Infeasible, Study, cheapest_mix, max_load, min_replicas
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


A100, H100 = "a100-llama-3.1-8b", "h100-llama-3.1-8b"  # bundled profiles of one model, one GPU a replica


class MixPool(Pool):
    """A GPU pool 'meets' the SLO exactly when its units reach ``need``: an A100 replica is 1 unit, an H100
    replica 2.5. Capacity runs report 100 output tokens/s per unit. Records every pool probed."""

    UNITS = {A100: 1.0, H100: 2.5}

    def __init__(self, need: float):
        self.need = need
        self.pools: list[tuple[int, int]] = []

    def _imap(self, specs):
        for pos, spec in enumerate(specs):
            if spec.options.get("measure_capacity"):
                extra = {"output_tokens_per_s": 100 * self.UNITS[spec.params["profile"]]}
                yield pos, RunOutcome(index=spec.index, label=spec.label, config=spec.config, params=spec.params,
                                      ok=True, extra=extra)
                continue
            pool = spec.params["pool"]
            if spec.params["seed"] == 0:
                self.pools.append((pool.get(A100, 0), pool.get(H100, 0)))
            units = sum(n * self.UNITS[p] for p, n in pool.items())
            value = self.need / units  # E2E p99 falls with capacity: <= 1 s exactly when units >= need
            check = {"tenant": "chat", "metric": "e2e_s", "quantile": 0.99, "threshold_s": 1.0,
                     "value_s": value, "attainment": 1.0 if value <= 1.0 else 0.5}
            yield pos, RunOutcome(index=spec.index, label=spec.label, config=spec.config, params=spec.params, ok=True,
                                  rows=[{"tenant": "overall", "offered_rps": 4.0}], checks=[check])


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


@pytest.mark.parametrize("need,prices,answer,usd", [
    # 6 units, A100 $1 and H100 $2: (1, 2) gives 6 units for $5; (3, 1) has 5.5, (0, 3) and (4, 1) cost $6
    (6.0, {A100: 1.0, H100: 2.0}, (1, 2), 5.0),
    # 5 units: two H100s (5 units, $4) beat every pool with an A100 ((1, 2) $5, (3, 1) $5)
    (5.0, {A100: 1.0, H100: 2.0}, (0, 2), 4.0),
    # 3 units, H100 at $3: three A100s ($3) beat (1, 1) ($4) and (0, 2) ($6)
    (3.0, {A100: 1.0, H100: 3.0}, (3, 0), 3.0),
])
def test_cheapest_mix_finds_the_known_cheapest_pool(need, prices, answer, usd):
    pool = MixPool(need)
    res = cheapest_mix(_study(), pool, prices, max_per_type=4, compare_homogeneous=False)
    assert res.answer["pool"] == {A100: answer[0], H100: answer[1]}
    assert res.answer["usd_per_hour"] == pytest.approx(usd)
    assert len(pool.pools) == len(set(pool.pools)), "each pool runs once (the winner's report run is cached)"
    for i, v in enumerate(pool.pools):  # one at a time (one worker): nothing is run that an earlier failure rules out
        failed = [f for f in pool.pools[:i] if f[0] + 2.5 * f[1] < need]
        assert not any(v[0] <= f[0] and v[1] <= f[1] for f in failed), (v, failed)
    cheaper = [v for v in pool.pools if sum(n * p for n, p in zip(v, prices.values())) < usd - 1e-9]
    assert all(v[0] + 2.5 * v[1] < need for v in cheaper), "every cheaper pool probed fails"


def test_cheapest_mix_infeasible_within_the_bound_names_it():
    with pytest.raises(Infeasible, match="no pool with at most 2 replicas per type meets every SLO"):
        cheapest_mix(_study(), MixPool(need=8.0), {A100: 1.0, H100: 2.0}, max_per_type=2)
