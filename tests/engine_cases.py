"""A hypothesis strategy of whole simulation runs, built to reach the engine's hard paths.

One :class:`SimCase` is a trace plus everything ``simulate`` takes: batching
mode (continuous or micro-batch), every registered scheduling policy, where
the policy acts (gateway, engine queue, or left to
:func:`driftsim.sim.scenario.place_policy`), vLLM's ``reserve_full_prompt``
on and off, async scheduling, chunked prefill, client timeouts with retries,
and a KV cache sized from the largest request so that preemption is common.
Some traces carry prompts longer than ``max_model_len`` (rejected at arrival).

:func:`run_case` runs one case step by step with an observer checking the KV
accounting the engine publishes; ``tests/test_sim_properties.py`` asserts
the properties and that the strategy covers what it claims.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import polars as pl
from hypothesis import strategies as st
from hypothesis.internal.conjecture.data import ConjectureData
from hypothesis.internal.conjecture.providers import HypothesisProvider

from driftsim.errors import ConfigError
from driftsim.sim.client import ClientConfig
from driftsim.sim.config import EngineConfig, GatewayConfig
from driftsim.sim.events import EngineSampled, Event, StepCommitted
from driftsim.sim.kv import NULL_BLOCKS, cdiv
from driftsim.sim.policies import POLICIES, make_policy
from driftsim.sim.run import SimResult, simulate
from driftsim.sim.scenario import place_policy
from tests.factories import RecordingCost, linear_cost, random_trace

MAX_MODEL_LEN = 1024
MAX_IN, MAX_OUT = 400, 200  # token draws of the random trace (exclusive bounds)

#: parameters some policies take; the others are built with their defaults
POLICY_PARAMS = {
    "weighted": {"weights": {"a": 3, "b": 2, "c": 1}},
    "vtc": {"weights": {"a": 2.0, "b": 1.0, "c": 1.0}},
    "aging": {"rate": 0.5},
    "edf": {"default_slo_s": {"a": 2.0, "b": 5.0}},
}

#: the policies that can order an engine's waiting queue (a static key per request)
KEYED_POLICIES = sorted(p for p in POLICIES if make_policy(p, **POLICY_PARAMS.get(p, {})).keyed)


@dataclass(frozen=True)
class SimCase:
    """One simulation run's inputs."""

    trace: pl.DataFrame
    engine: EngineConfig
    gateway: GatewayConfig
    client: ClientConfig | None
    replicas: int
    num_blocks: int  # per replica, including vLLM's null block

    def kwargs(self) -> dict:
        return dict(engine=self.engine, gateway=self.gateway, client=self.client, replicas=self.replicas,
                    num_blocks=self.num_blocks)


@st.composite
def sim_cases(draw) -> SimCase:
    """A run that is valid as a whole: combinations ``simulate`` refuses are never drawn."""
    mode = draw(st.sampled_from(["continuous", "continuous", "microbatch"]))
    # None: the scenario loader's rule decides (place_policy); an explicit engine placement needs a
    # continuous engine and a keyed policy
    placement = draw(st.sampled_from([None, "gateway", "engine", "engine"]))
    if placement == "engine" and mode != "continuous":
        placement = "gateway"
    policy = draw(st.sampled_from(KEYED_POLICIES if placement == "engine" else sorted(POLICIES)))
    params = POLICY_PARAMS.get(policy, {})
    cap = draw(st.sampled_from([None, 1, 3]))
    chunked = draw(st.booleans())
    seqs = draw(st.sampled_from([1, 2, 4, 8, 16]))
    budget = draw(st.integers(seqs, seqs + 512)) if chunked else MAX_MODEL_LEN
    block_size = draw(st.sampled_from([1, 4, 16]))
    engine = EngineConfig(
        mode=mode,
        max_num_seqs=seqs,
        max_num_batched_tokens=max(budget, seqs),
        block_size=block_size,
        chunked_prefill=chunked,
        max_model_len=MAX_MODEL_LEN,
        async_scheduling=draw(st.booleans()),
        reserve_full_prompt=draw(st.booleans()),
        batch_size=draw(st.integers(1, 8)),
        batch_wait_s=draw(st.sampled_from([0.0, 0.01, 0.05])),
    )
    gateway = GatewayConfig(policy=policy, policy_params=params, max_outstanding=cap,
                            placement=placement or "gateway",
                            router=draw(st.sampled_from(["round_robin", "least_outstanding"])))
    try:
        gateway, _ = place_policy(gateway, engine, placement is not None)
    except ConfigError:  # a per-tenant policy cannot order the engine's queue: give it a cap
        gateway = replace(gateway, max_outstanding=cap or 2)

    # KV: room for the largest request plus a few blocks (tight: preemption) or plenty
    largest = cdiv(MAX_IN + MAX_OUT, block_size)
    tight = st.integers(0, 4)
    slack = draw(st.one_of(tight, tight, tight, st.integers(0, 4 * largest)))
    num_blocks = largest + NULL_BLOCKS + slack

    n = draw(st.integers(2, 40))
    trace = random_trace(n, rate=draw(st.floats(5.0, 100.0)), seed=draw(st.integers(0, 2**31)),
                         max_in=MAX_IN, max_out=MAX_OUT)
    trace = trace.with_columns(
        priority=pl.Series(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=pl.Int64))
    if draw(st.booleans()):  # some prompts longer than the engine takes: rejected at arrival
        too_long = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3, unique=True))
        trace = trace.with_columns(
            input_tokens=pl.when(pl.int_range(n).is_in(too_long)).then(MAX_MODEL_LEN + 10)
            .otherwise(pl.col("input_tokens")).cast(trace.schema["input_tokens"]))

    client = None
    if mode == "continuous" and draw(st.sampled_from([False, True, True])):
        client = ClientConfig(timeout_s=draw(st.floats(0.05, 1.5)), retries=draw(st.integers(0, 2)),
                              backoff_s=draw(st.sampled_from([0.0, 0.1, 0.5])))
    return SimCase(trace=trace, engine=engine, gateway=gateway, client=client,
                   replicas=draw(st.integers(1, 2)), num_blocks=num_blocks)


class _RngOnlyProvider(HypothesisProvider):
    """Hypothesis's provider without its pools of "interesting" constants.

    NOTE: hypothesis mixes in constants collected from every local module imported so far (the code
    under test and the test files), so with them the same seed drew other cases after any edit to
    the code or in another test order.
    """

    def _maybe_draw_constant(self, *args, **kwargs):
        return None


def draw_seeded(strategy: st.SearchStrategy, n: int, *, seed: int) -> list:
    """``n`` independent draws of ``strategy`` from ``random.Random(seed)``: the same list on every run.

    NOTE: hypothesis has no public seeded ``example()``, and a derandomized ``@given`` mutates its
    earlier examples, so 200 of them are a few dozen near-copies; coverage shares need independent
    draws. ``ConjectureData`` is hypothesis's own drawing engine (internal, but stable across 6.x).
    """
    rng = random.Random(seed)
    return [ConjectureData(random=rng, provider=_RngOnlyProvider).draw(strategy) for _ in range(n)]


class KvAudit:
    """An observer of :class:`EngineSampled`: checks KV use against capacity at every sample and keeps
    each replica's last sample (the state the engine was left in)."""

    def __init__(self, num_blocks: int) -> None:
        self.capacity = num_blocks - NULL_BLOCKS
        self.steps = 0  # StepCommitted events
        self.commit_samples = 0  # samples closing a commit (the others follow an abort)
        self.samples = 0
        self.last: dict[int, EngineSampled] = {}
        self.peak = 0
        self._committed: set[int] = set()  # replicas with steps committed since their last sample

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepCommitted):
            self.steps += 1
            self._committed.add(event.replica)
        if not isinstance(event, EngineSampled):
            return
        assert event.kv_total_blocks == self.capacity, event
        assert 0 <= event.kv_used_blocks <= event.kv_total_blocks, f"KV over capacity: {event}"
        if event.replica in self._committed:
            self._committed.discard(event.replica)
            self.commit_samples += 1
        self.samples += 1
        self.peak = max(self.peak, event.kv_used_blocks)
        self.last[event.replica] = event


@dataclass
class CaseRun:
    """A case run step by step (fast-forward off, so the engine samples its state after every step)."""

    result: SimResult
    kv: KvAudit
    cost: RecordingCost

    @property
    def preemptions(self) -> int:
        return sum(r["preemptions"] for r in self.result.replicas)

    def count(self, status: str) -> int:
        return int((self.result.requests["status"] == status).sum())


def run_case(case: SimCase, *, fast_forward: bool = False) -> CaseRun:
    audit = KvAudit(case.num_blocks)
    cost = RecordingCost(linear_cost())
    engine = replace(case.engine, fast_forward=fast_forward)
    res = simulate(case.trace, cost=cost, **{**case.kwargs(), "engine": engine}, observers=[audit])
    return CaseRun(result=res, kv=audit, cost=cost)
