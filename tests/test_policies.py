"""Queue disciplines: pinned orders on hand-built queues, plus invariants over every registered policy."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftsim.sim.policies import DEFAULT_WEIGHTS, POLICIES, Aging, Edf, Policy, Vtc, Weighted, make_policy

TIER_PRIORITY = {"premium": 1, "standard": 2, "batch": 3}


@dataclass
class Req:
    """A waiting request with exactly the :class:`driftsim.sim.policies.Queued` fields."""

    request_id: int
    arrival_s: float
    tenant: str
    priority: int
    est_tokens: int
    input_tokens: int
    slo_e2e_s: float | None = None
    generated: int = 0


def make_req(
    request_id: int,
    arrival_s: float = 0.0,
    tenant: str = "standard",
    *,
    priority: int | None = None,
    est_tokens: int = 100,
    input_tokens: int = 10,
    slo_e2e_s: float | None = None,
) -> Req:
    prio = TIER_PRIORITY.get(tenant, 2) if priority is None else priority
    return Req(request_id, arrival_s, tenant, prio, est_tokens, input_tokens, slo_e2e_s)


def push_all(policy: Policy, reqs: list[Req], now: float = 0.0) -> Policy:
    for r in reqs:
        policy.push(r, now)
    return policy


def drain(policy: Policy, now: float = 0.0) -> list[int]:
    out = []
    while (r := policy.pop(now)) is not None:
        out.append(r.request_id)
    return out


def tenants_of(policy: Policy, n: int, now: float = 0.0) -> list[str]:
    return [policy.pop(now).tenant for _ in range(n)]


# ---------------------------------------------------------------- registry


def test_registry_holds_the_original_five_and_four_more():
    assert set(POLICIES) == {"fifo", "priority", "weighted", "sjf", "aging", "vtc", "edf", "las", "srpt"}
    for name in POLICIES:
        assert make_policy(name).name == name


def test_unknown_policy_lists_known_names():
    with pytest.raises(ValueError, match="known: aging"):
        make_policy("lottery")


# ---------------------------------------------------------------- invariants over every policy

request_lists = st.lists(
    st.tuples(
        st.floats(0, 100, allow_nan=False),
        st.sampled_from(["premium", "standard", "batch", "other"]),
        st.integers(1, 2000),
        st.one_of(st.none(), st.floats(0.1, 500)),
    ),
    max_size=40,
)


@pytest.mark.parametrize("name", sorted(POLICIES))
@settings(max_examples=25, deadline=None)
@given(rows=request_lists, pops_between=st.integers(0, 3))
def test_every_policy_conserves_requests_and_is_work_conserving(name, rows, pops_between):
    policy = make_policy(name)
    reqs = [make_req(i, a, t, est_tokens=e + 5, input_tokens=5, slo_e2e_s=s) for i, (a, t, e, s) in enumerate(rows)]
    popped = []
    for i, r in enumerate(reqs):
        policy.push(r, r.arrival_s)
        if pops_between and i % (pops_between + 1) == 0:
            got = policy.pop(r.arrival_s)
            assert got is not None  # something waits, so something is served
            popped.append(got.request_id)
            policy.on_finish(got, r.arrival_s, output_tokens=7)
    assert len(policy) == len(reqs) - len(popped)
    popped += drain(policy, 1000.0)
    assert sorted(popped) == list(range(len(reqs)))
    assert len(policy) == 0 and policy.pop(1000.0) is None


# ---------------------------------------------------------------- fifo / priority / sjf


def test_fifo_takes_the_oldest_across_tenants_then_lower_id():
    p = push_all(make_policy("fifo"), [make_req(3, 2.0, "premium"), make_req(1, 1.0, "batch"), make_req(0, 2.0, "batch")])
    assert drain(p) == [1, 0, 3]


def test_priority_is_strict_by_tier_and_fifo_inside_a_tier():
    reqs = [
        make_req(0, 0.0, "batch"),
        make_req(1, 1.0, "standard"),
        make_req(2, 2.0, "premium"),
        make_req(3, 3.0, "standard"),
        make_req(4, 0.5, "premium"),
    ]
    assert drain(push_all(make_policy("priority"), reqs)) == [4, 2, 1, 3, 0]


def test_sjf_orders_by_budget_then_arrival_then_id():
    reqs = [
        make_req(0, 0.0, est_tokens=500),
        make_req(1, 3.0, est_tokens=80),
        make_req(2, 1.0, est_tokens=80),  # same budget, earlier: before 1
        make_req(3, 1.0, est_tokens=80),  # same budget and arrival: after 2 by id
        make_req(4, 9.0, est_tokens=79),
    ]
    assert drain(push_all(make_policy("sjf"), reqs)) == [4, 2, 3, 1, 0]


# ---------------------------------------------------------------- weighted


def backlog(n_each: int, tenants=("premium", "standard", "batch")) -> list[Req]:
    return [make_req(k * 100 + i, float(i), t) for k, t in enumerate(tenants) for i in range(n_each)]


def test_weighted_cycle_is_ppppp_sss_bb_when_all_backlogged():
    p = push_all(Weighted(), backlog(20))
    assert tenants_of(p, 20) == (["premium"] * 5 + ["standard"] * 3 + ["batch"] * 2) * 2


def test_weighted_skips_an_empty_queue_and_the_pointer_follows_the_served_slot():
    p = push_all(Weighted(), backlog(10, ("standard", "batch")))
    # pointer 0, premium empty: standard served from slot 5, pointer -> 6
    assert tenants_of(p, 1) == ["standard"]
    assert p.pointer == 6
    # a premium request now arrives, but the pointer is past the premium slots:
    # it waits for the wrap (the original; not "pointer = start + 1")
    p.push(make_req(999, 50.0, "premium"), 50.0)
    assert tenants_of(p, 5) == ["standard", "standard", "batch", "batch", "premium"]
    assert p.pointer == 1


def test_weighted_shares_without_premium_are_3_to_2():
    p = push_all(Weighted(), backlog(30, ("standard", "batch")))
    assert tenants_of(p, 10) == ["standard"] * 3 + ["batch"] * 2 + ["standard"] * 3 + ["batch"] * 2


def test_weighted_empty_pop_keeps_the_pointer():
    p = Weighted()
    p.push(make_req(0, 0.0, "batch"), 0.0)
    assert tenants_of(p, 1) == ["batch"]
    assert p.pointer == 9
    assert p.pop(1.0) is None
    assert p.pointer == 9


def test_weighted_accepts_any_weights_and_keeps_fifo_per_tenant():
    p = Weighted(weights={"a": 1, "b": 2})
    assert p.cycle == ("a", "b", "b")
    push_all(p, [make_req(i, float(10 - i), "b") for i in range(4)] + [make_req(10 + i, float(i), "a") for i in range(2)])
    assert drain(p) == [10, 3, 2, 11, 1, 0]


def test_weighted_unknown_tenant_goes_to_the_last_queue_or_is_rejected_when_strict():
    p = push_all(Weighted(), [make_req(1, 0.0, "gold"), make_req(2, 0.0, "standard")])
    assert tenants_of(p, 2) == ["standard", "gold"]  # "gold" waits in the batch queue
    with pytest.raises(KeyError, match="gold"):
        Weighted(strict=True).push(make_req(1, 0.0, "gold"), 0.0)
    with pytest.raises(ValueError):
        Weighted(weights={"a": 0})


def test_weighted_default_weights_are_the_originals():
    assert DEFAULT_WEIGHTS == {"premium": 5, "standard": 3, "batch": 2}


# ---------------------------------------------------------------- aging


@pytest.mark.parametrize(("waited", "first"), [(200.5, "batch"), (199.5, "premium"), (200.0, "premium")])
def test_aging_batch_overtakes_a_fresh_premium_after_200_s(waited, first):
    now = 1000.0
    p = Aging()
    p.push(make_req(0, now - waited, "batch"), now - waited)
    p.push(make_req(1, now, "premium"), now)  # fresh
    assert p.pop(now).tenant == first  # at exactly 200 s the scores tie: lower priority wins, as in the original


def original_aging_pop(waiting: list[Req], now: float, rate: float) -> Req:
    """The original's scan: tiers premium, standard, batch; FIFO inside; first strict minimum wins."""
    best, best_score = None, math.inf
    for tier in ("premium", "standard", "batch"):
        for r in sorted((r for r in waiting if r.tenant == tier), key=lambda r: (r.arrival_s, r.request_id)):
            score = r.priority - rate * (now - r.arrival_s)
            if score < best_score:
                best, best_score = r, score
    return best


@pytest.mark.parametrize("seed", range(5))
def test_aging_heap_order_equals_the_original_time_dependent_scan(seed):
    rng = random.Random(seed)
    rate = 0.01
    p, waiting, now = Aging(rate=rate), [], 0.0
    for i in range(300):
        now += rng.expovariate(1.0)  # about 1 arrival/s; queue waits of hundreds of seconds occur
        r = make_req(i, now, rng.choice(["premium", "standard", "batch"]))
        p.push(r, now)
        waiting.append(r)
        if rng.random() < 0.4:  # serve slower than arrivals so old batch requests age
            expected = original_aging_pop(waiting, now, rate)
            assert p.pop(now) is expected
            waiting.remove(expected)
    while waiting:
        now += 1.0
        expected = original_aging_pop(waiting, now, rate)
        assert p.pop(now) is expected
        waiting.remove(expected)


def test_aging_score_is_the_originals():
    r = make_req(0, 10.0, "batch")
    assert Aging().score(r, 110.0) == pytest.approx(2.0)


# ---------------------------------------------------------------- vtc


def test_vtc_shares_tokens_between_a_heavy_and_a_light_tenant():
    # heavy: cost 100 + 2*100 = 300 per request; light: 10 + 2*20 = 50 per request
    heavy = [make_req(i, 0.0, "heavy", input_tokens=100, est_tokens=200) for i in range(100)]
    light = [make_req(1000 + i, 0.0, "light", input_tokens=10, est_tokens=30) for i in range(100)]
    p = push_all(Vtc(), heavy + light)
    served = {"heavy": 0, "light": 0}
    for _ in range(70):
        r = p.pop(0.0)
        served[r.tenant] += 1
        # VTC bound: backlogged counters never drift apart by more than one request's cost
        assert abs(p.counters["heavy"] - p.counters["light"]) <= 300
    assert served == {"heavy": 10, "light": 60}  # 3000 tokens of service each


def test_vtc_lifts_a_newly_backlogged_tenant_to_the_backlogged_minimum():
    p = push_all(Vtc(), [make_req(i, float(i), "heavy", input_tokens=100, est_tokens=200) for i in range(20)])
    for _ in range(10):
        p.pop(10.0)
    assert p.counters["heavy"] == 3000.0
    p.push(make_req(500, 11.0, "light", input_tokens=10, est_tokens=30), 11.0)
    assert p.counters["light"] == 3000.0  # no credit banked for the time it was idle
    # tie on counters: the older head (heavy, arrival 10) goes first
    assert p.pop(11.0).tenant == "heavy"
    assert p.pop(11.0).tenant == "light"


def test_vtc_lifts_from_the_last_tenant_to_leave_when_nobody_waits():
    p = Vtc()
    p.push(make_req(0, 0.0, "a", input_tokens=100, est_tokens=200), 0.0)
    p.pop(0.0)  # a leaves with counter 300
    p.push(make_req(1, 1.0, "b"), 1.0)
    assert p.counters["b"] == 300.0
    q = Vtc(lift_when_idle=False)  # the artifact code's behaviour
    q.push(make_req(0, 0.0, "a", input_tokens=100, est_tokens=200), 0.0)
    q.pop(0.0)
    q.push(make_req(1, 1.0, "b"), 1.0)
    assert q.counters["b"] == 0.0


def test_vtc_corrects_the_estimate_with_the_real_output_on_finish():
    p = Vtc(weights={"a": 2.0})
    r = make_req(0, 0.0, "a", input_tokens=10, est_tokens=110)  # est output 100
    p.push(r, 0.0)
    p.pop(0.0)
    assert p.counters["a"] == (10 + 2 * 100) / 2
    p.on_finish(r, 5.0, output_tokens=40)
    assert p.counters["a"] == (10 + 2 * 40) / 2
    p.on_finish(r, 6.0, output_tokens=40)  # a second finish is ignored
    assert p.counters["a"] == 45.0


def test_vtc_weights_give_proportional_service():
    reqs = [make_req(i, 0.0, "a") for i in range(60)] + [make_req(100 + i, 0.0, "b") for i in range(60)]
    p = push_all(Vtc(weights={"a": 2.0, "b": 1.0}), reqs)
    counts = {"a": 0, "b": 0}
    for _ in range(30):
        counts[p.pop(0.0).tenant] += 1
    assert counts == {"a": 20, "b": 10}


# ---------------------------------------------------------------- edf


def test_edf_orders_by_arrival_plus_slo_with_per_request_override():
    reqs = [
        make_req(0, 0.0, "batch"),  # 0 + 120
        make_req(1, 5.0, "premium"),  # 5 + 10 = 15
        make_req(2, 1.0, "standard"),  # 1 + 30 = 31
        make_req(3, 20.0, "batch", slo_e2e_s=2.0),  # 22, its own SLO wins
        make_req(4, 0.0, "gold"),  # unknown tenant: infinite deadline, last
        make_req(5, 10.0, "premium", slo_e2e_s=5.0),  # 15: ties with 1, later arrival
    ]
    assert drain(push_all(Edf(), reqs)) == [1, 5, 3, 2, 0, 4]


def test_edf_takes_custom_defaults_and_fallback():
    p = Edf(default_slo_s={"x": 1.0}, fallback_slo_s=3.0)
    assert p.deadline(make_req(0, 2.0, "x")) == 3.0
    assert p.deadline(make_req(1, 2.0, "y")) == 5.0
